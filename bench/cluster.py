"""python -m bench.cluster [--quick] [--rate R] [--out FILE]

One Redis against a local 3-master Redis Cluster (one replica each, PARTITIONS=12),
and that cluster with REDIS_WAIT_REPLICAS=1: for each, 1 transcriber and 2
conversation workers (simulated/echo engines, metrics off) answer the simulator's
fixed offered load; prints a markdown table of throughput, response.done latency,
missing/duplicates and the costs a capacity model needs (Redis memory per
conversation, Redis commands and CPU per utterance, worker CPU per utterance).

On the 2-core machine this runs on no speed-up is expected: it measures overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as syncredis

from bench.cluster_report import render
from bench.procstat import read_process
from shared.devstack import Stack, deterministic_env
from shared.redis_cluster import LocalCluster
from shared.redis_server import RedisServer, find_server_binary

#: The sampling period of Redis memory and worker RSS during the run.
SAMPLE_S = 0.25


@dataclass(frozen=True)
class Load:
    conversations: int
    utterances: int
    rate: float


FULL = Load(conversations=200, utterances=20, rate=1.0)
QUICK = Load(conversations=30, utterances=5, rate=1.0)


@dataclass(frozen=True)
class Backend:
    name: str
    cluster: bool
    env: dict[str, str]


BACKENDS = (
    Backend("one Redis", False, {}),
    Backend("cluster 3 masters, PARTITIONS=12", True, {"PARTITIONS": "12"}),
    Backend("cluster + REDIS_WAIT_REPLICAS=1", True, {"PARTITIONS": "12", "REDIS_WAIT_REPLICAS": "1"}),
)


@contextmanager
def redis_backend(cluster: bool) -> Iterator[tuple[str, list[str]]]:
    """A fresh backend: (the URL the services get, the URLs of its masters). No
    append-only file on either, so the single Redis does not pay for a disk the cluster skips."""
    if cluster:
        with LocalCluster(masters=3, replicas=1) as c:
            yield c.url, [n.url for n in c.masters()]
    else:
        binary, origin = find_server_binary()
        server = RedisServer(binary, origin, appendonly=False).start()
        try:
            yield server.url, [server.url]
        finally:
            server.cleanup()


def _info_totals(client: syncredis.Redis) -> dict[str, float]:
    info = client.info("all")
    commands = sum(v["calls"] for k, v in info.items() if k.startswith("cmdstat_"))
    return {"used_memory": float(info["used_memory"]), "commands": float(commands),
            "cpu_s": float(info["used_cpu_sys"]) + float(info["used_cpu_user"])}


def redis_totals(clients: list[syncredis.Redis]) -> dict[str, float]:
    """used_memory, commands processed and CPU seconds, summed over the masters."""
    total = {"used_memory": 0.0, "commands": 0.0, "cpu_s": 0.0}
    for client in clients:
        for key, value in _info_totals(client).items():
            total[key] += value
    return total


def used_memory(clients: list[syncredis.Redis]) -> int:
    return sum(int(c.info("memory")["used_memory"]) for c in clients)


def workers_totals(pids: list[int]) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) summed over the worker processes."""
    samples = [read_process(pid) for pid in pids]
    return sum(s.cpu_s for s in samples), sum(s.rss_bytes for s in samples)


class PeakSampler:
    """Samples Redis used_memory and the workers' RSS every SAMPLE_S in a thread; keeps the peaks."""

    def __init__(self, clients: list[syncredis.Redis], pids: list[int]) -> None:
        self.clients, self.pids = clients, pids
        self.peak_memory = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_memory = max(self.peak_memory, used_memory(self.clients))
                self.peak_rss = max(self.peak_rss, workers_totals(self.pids)[1])
            except (OSError, syncredis.RedisError):
                pass  # a sample missed; the next one counts
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_for_heartbeats(clients: list[syncredis.Redis], prefix: str, count: int, stack: Stack,
                        timeout_s: float = 120.0) -> None:
    """Every worker's heartbeat key, on whichever master holds it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [p for p in stack.procs if not p.alive()]
        if dead:
            raise SystemExit(f"{dead[0].module} exited at start:\n{dead[0].log_text()[-3000:]}")
        found = sum(len(list(c.scan_iter(match=f"{prefix}:worker:*"))) for c in clients)
        if found >= count:
            return
        time.sleep(0.1)
    raise SystemExit(f"workers not up after {timeout_s:.0f}s; logs in {stack.log_dir}/")


def run_backend(backend: Backend, load: Load, log_dir: Path, say: Any) -> dict[str, Any]:
    prefix = f"bc{os.getpid()}"
    with redis_backend(backend.cluster) as (url, master_urls):
        clients = [syncredis.Redis.from_url(u, decode_responses=True) for u in master_urls]
        env = deterministic_env(url, prefix, METRICS_ENABLED="false", **backend.env)
        stack = Stack(env, log_dir / backend.name.replace(" ", "_").replace("=", ""))
        try:
            workers = [stack.start("transcriber_svc"), stack.start("conversation_svc"),
                       stack.start("conversation_svc")]
            wait_for_heartbeats(clients, prefix, len(workers), stack)
            pids = [w.pid for w in workers]
            before_redis, (before_cpu, before_rss) = redis_totals(clients), workers_totals(pids)
            before_each = [read_process(pid).cpu_s for pid in pids]
            say(f"[bench.cluster] {backend.name}: {len(master_urls)} master(s), simulator running")
            args = [sys.executable, "-m", "simulator_svc", "--json", "--no-greeting",
                    "--conversations", str(load.conversations), "--utterances", str(load.utterances),
                    "--rate", str(load.rate), "--timeout", "600"]
            with PeakSampler(clients, pids) as sampler:
                sim = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
            after_redis, (after_cpu, after_rss) = redis_totals(clients), workers_totals(pids)
            by_tier: dict[str, float] = {}
            for worker, before_s in zip(workers, before_each, strict=True):
                by_tier[worker.module] = by_tier.get(worker.module, 0.0) + read_process(worker.pid).cpu_s - before_s
            if not sim.stdout.strip():
                raise SystemExit(f"simulator printed nothing (exit {sim.returncode}):\n{sim.stderr[-3000:]}")
            summary = json.loads(sim.stdout.strip().splitlines()[-1])
        finally:
            stack.stop_all()
            for c in clients:
                c.close()
    return {
        "backend": backend.name,
        "masters": len(master_urls),
        "env": backend.env,
        "simulator": summary,
        "simulator_exit": sim.returncode,
        "redis": {
            "used_memory_before_bytes": before_redis["used_memory"],
            "used_memory_after_bytes": after_redis["used_memory"],
            "peak_used_memory_delta_bytes": max(0.0, sampler.peak_memory - before_redis["used_memory"]),
            "commands": after_redis["commands"] - before_redis["commands"],
            "cpu_s": after_redis["cpu_s"] - before_redis["cpu_s"],
        },
        "workers": {
            "cpu_s": after_cpu - before_cpu,
            "cpu_s_by_service": by_tier,
            "rss_before_bytes": before_rss,
            "rss_after_bytes": after_rss,
            "peak_rss_delta_bytes": max(0, sampler.peak_rss - before_rss),
        },
    }


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.conversations} conversations x {QUICK.utterances} utterances instead of "
                             f"{FULL.conversations} x {FULL.utterances}")
    parser.add_argument("--rate", type=float, metavar="R",
                        help="utterances per second per conversation (default 1): raise it to saturate the machine")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the figures as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    load = QUICK if args.quick else FULL
    if args.rate:
        load = Load(conversations=load.conversations, utterances=load.utterances, rate=args.rate)
    log_dir = Path(tempfile.mkdtemp(prefix="vab-bench-cluster-"))

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rows = [run_backend(backend, load, log_dir, say) for backend in BACKENDS]
    figures = {"command": "python -m bench.cluster " + " ".join(sys.argv[1:] if argv is None else argv),
               "commit": git_commit(), "cpus": os.cpu_count(),
               "load": {"conversations": load.conversations, "utterances": load.utterances, "rate": load.rate},
               "rows": rows}
    print(render(figures))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    failed = [r["backend"] for r in rows if r["simulator_exit"] != 0]
    if failed:
        print(f"simulator failed on: {', '.join(failed)} (logs in {log_dir}/)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
