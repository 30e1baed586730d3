"""python -m bench.failover [--quick] [--trials N] [--out FILE]

What asynchronous replication loses when a Redis Cluster master is SIGKILLed mid-run,
with REDIS_WAIT_REPLICAS=0 and =1. Each trial: a fresh local cluster (3 masters, one
replica each, node timeout 1000 ms, PARTITIONS=12), 1 transcriber and 2 conversation
workers (simulated/echo engines), the simulator at a steady load; one master is
SIGKILLed a few seconds in and its replica promoted; the run finishes. Then it counts
what the client saw (its summary) and what the surviving streams hold: utterances the
client wrote that Redis no longer has, and response.done entries twice for one utterance.
It also samples the replication lag (master_repl_offset against each replica's
slave_repl_offset) until the kill.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as syncredis
from redis.cluster import RedisCluster as SyncCluster

from bench.cluster import git_commit, wait_for_heartbeats
from bench.failover_count import Utterance, count_streams, render, row, run_ids, sent_utterances
from shared.devstack import Stack, deterministic_env
from shared.keys import Keys
from shared.models import EntryError, ResponseDone, UtteranceText, decode_fields
from shared.redis_cluster import LocalCluster, Node

PARTITIONS = 12
#: The replication lag sampling period until the kill.
LAG_SAMPLE_S = 0.01


@dataclass(frozen=True)
class Load:
    conversations: int
    utterances: int
    rate: float
    kill_after_s: float
    trials: int


FULL = Load(conversations=60, utterances=30, rate=2.0, kill_after_s=5.0, trials=5)
QUICK = Load(conversations=20, utterances=16, rate=2.0, kill_after_s=3.0, trials=2)


class LagSampler:
    """Every LAG_SAMPLE_S until stopped: each master's ``master_repl_offset``, then its
    replica's ``slave_repl_offset``; the lag is their difference. Read in that order the
    figure is a lower bound (the replica may catch up between the two reads), so a 0
    means: caught up within one INFO round trip."""

    def __init__(self, pairs: list[tuple[Node, Node]]) -> None:
        self.pairs = [(m.client(), r.client()) for m, r in pairs]
        self.max_bytes = 0
        self.samples = 0
        self.nonzero = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def lag(master: syncredis.Redis, replica: syncredis.Redis) -> int:
        m = int(master.info("replication")["master_repl_offset"])
        r = int(replica.info("replication").get("slave_repl_offset", m))
        return max(0, m - r)

    def _run(self) -> None:
        while not self._stop.is_set():
            for master, replica in self.pairs:
                try:
                    lag = self.lag(master, replica)
                except (OSError, syncredis.RedisError):
                    continue
                self.samples += 1
                self.nonzero += lag > 0
                self.max_bytes = max(self.max_bytes, lag)
            self._stop.wait(LAG_SAMPLE_S)

    def start(self) -> LagSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _close(client: Any) -> None:
    """Close a sync cluster client and its nodes' connections (its close() leaves them open)."""
    for node in client.get_nodes():
        if node.redis_connection is not None:
            node.redis_connection.connection_pool.disconnect()
    client.close()


def _entries(client: Any, key: str) -> list[Any]:
    """A whole stream's decodable entries (the runs are small: one XRANGE)."""
    found = []
    for _id, fields in client.xrange(key):
        try:
            found.append(decode_fields(fields))
        except EntryError:
            continue
    return found


def read_streams(url: str, prefix: str, load: Load) -> tuple[set[Utterance], set[Utterance], list[Utterance]]:
    """(sent, kept, dones) from the surviving masters: the run's utterance ids (from its
    run id, as any surviving key name shows it), the utterance.text entries of the input
    streams, one item per response.done entry of the responses streams."""
    # Any: redis-py's sync cluster client is not fully typed (get_nodes, xrange).
    client: Any = SyncCluster.from_url(url)
    try:
        names = [k.decode() for k in client.scan_iter(match=f"{prefix}:conv:*", count=1000)]
        found = run_ids(names)
        if len(found) != 1:
            raise SystemExit(f"expected one simulator run in the streams, found {sorted(found)}")
        sent = sent_utterances(found.pop(), load.conversations, load.utterances)
        keys = Keys(prefix, PARTITIONS)
        kept: set[Utterance] = set()
        dones: list[Utterance] = []
        for cid in sorted({cid for cid, _ in sent}):
            for entry in _entries(client, keys.input(cid)):
                if isinstance(entry, UtteranceText):
                    kept.add((cid, entry.utterance_id))
            for entry in _entries(client, keys.responses(cid)):
                if isinstance(entry, ResponseDone):
                    dones.append((cid, entry.utterance_id))
        return sent, kept, dones
    finally:
        _close(client)


def run_trial(wait_replicas: int, trial: int, load: Load, log_dir: Path, say: Any) -> dict[str, Any]:
    prefix = f"fo{os.getpid()}w{wait_replicas}t{trial}"
    with LocalCluster(masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        master_clients = [m.client() for m in cluster.masters()]
        env = deterministic_env(cluster.url, prefix, METRICS_ENABLED="false", PARTITIONS=str(PARTITIONS),
                                REDIS_WAIT_REPLICAS=str(wait_replicas))
        stack = Stack(env, log_dir / f"wait{wait_replicas}-trial{trial}")
        try:
            for module in ("transcriber_svc", "conversation_svc", "conversation_svc"):
                stack.start(module)
            wait_for_heartbeats(master_clients, prefix, 3, stack)
            masters = cluster.masters()
            sampler = LagSampler([(m, cluster.replicas_of(m)[0]) for m in masters]).start()
            victim = masters[trial % len(masters)]
            victim_pair = (victim.client(), cluster.replicas_of(victim)[0].client())
            args = [sys.executable, "-m", "simulator_svc", "--json", "--no-greeting",
                    "--conversations", str(load.conversations), "--utterances", str(load.utterances),
                    "--rate", str(load.rate), "--timeout", "240"]
            sim = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(load.kill_after_s)
            before_kill = LagSampler.lag(*victim_pair)
            sampler.stop()
            killed_at = time.monotonic()
            promoted = cluster.kill_master(victim)
            failover_s = time.monotonic() - killed_at
            say(f"[bench.failover] WAIT={wait_replicas} trial {trial + 1}: killed master :{victim.port}, "
                f":{promoted.port} serves its slots after {failover_s:.2f} s")
            out, err = sim.communicate(timeout=300)
        finally:
            stack.stop_all()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise SystemExit(f"simulator printed nothing (exit {sim.returncode}):\n{err[-3000:]}")
        summary = json.loads(lines[-1])
        sent, kept, dones = read_streams(cluster.url, prefix, load)
    streams = count_streams(sent, kept, dones)
    return {"trial": trial, "victim_port": victim.port, "promoted_port": promoted.port,
            "failover_s": round(failover_s, 3), "simulator": summary, "simulator_exit": sim.returncode,
            "streams": streams.as_dict(),
            "lag": {"max_bytes": sampler.max_bytes, "samples": sampler.samples, "nonzero_samples": sampler.nonzero,
                    "before_kill_bytes": before_kill}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.trials} trials of {QUICK.conversations} conversations x {QUICK.utterances} "
                             f"utterances instead of {FULL.trials} of {FULL.conversations} x {FULL.utterances}")
    parser.add_argument("--trials", type=int, help="trials per REDIS_WAIT_REPLICAS setting")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the figures as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    load = QUICK if args.quick else FULL
    trials = args.trials or load.trials
    log_dir = Path(tempfile.mkdtemp(prefix="vab-bench-failover-"))
    commit = git_commit()  # before the run: the checkout may move while it runs

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    runs = {w: [run_trial(w, t, load, log_dir, say) for t in range(trials)] for w in (0, 1)}
    figures = {"command": "python -m bench.failover " + " ".join(sys.argv[1:] if argv is None else argv),
               "commit": commit, "cpus": os.cpu_count(),
               "load": {"conversations": load.conversations, "utterances": load.utterances, "rate": load.rate,
                        "kill_after_s": load.kill_after_s, "partitions": PARTITIONS, "node_timeout_ms": 1000},
               "rows": [row(w, runs[w]) for w in (0, 1)],
               "trials": {str(w): runs[w] for w in (0, 1)}}
    print(render(figures))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"(logs in {log_dir}/)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
