"""Baseline 1: a minimal hand-written two-hop pipeline on redis-py consumer groups.

Stage A reads stream ``in`` with ``XREADGROUP COUNT 1000``; per entry it
parses the JSON, builds a ``transcript.final``-shaped JSON and, for the whole
read, pipelines one ``XADD mid MAXLEN ~`` per entry and one ``XACK`` of all
the read ids. Stage B does the same from ``mid`` to ``out`` with a
``response.done``-shaped JSON (the echo answer). Each stage is its own
process (synchronous redis-py with hiredis), like our services.

What it does not do (and ours does): no ownership or leases, no per-
conversation order (any consumer takes any entry), no exactly-once gate (the
XADD and the XACK are not atomic), no ``response.started`` / deltas, no
dead-letter handling, no schema validation beyond ``json.loads``.

    python -m bench.baseline_redis stage a|b --redis-url URL --prefix P [--consumer NAME]

The client (the bench's driver) writes ``utterance.text`` JSON to ``in`` and
reads ``mid`` and ``out`` with plain XREAD, the same logic as for our pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, cast

import redis
import redis.asyncio as aioredis

from bench.driver import SharedStreamsTarget
from bench.latency import DONE, MID, Observation, Utt, id_ms, stamp_batch

GROUP = "baseline"
MAXLEN = 1_000_000

StreamReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


def stream_names(prefix: str) -> tuple[str, str, str]:
    return f"{prefix}:in", f"{prefix}:mid", f"{prefix}:out"


def transform_a(raw: bytes) -> bytes:
    """Stage A's work on one entry: the simulated transcription."""
    u = json.loads(raw)
    return json.dumps(
        {
            "v": 1, "conversation_id": u["conversation_id"], "type": "transcript.final",
            "utterance_id": u["utterance_id"], "text": u["text"], "sent_ms": u["sent_ms"],
            "final_ms": int(time.time() * 1000),
        },
        separators=(",", ":"),
    ).encode()


def transform_b(raw: bytes) -> bytes:
    """Stage B's work on one entry: the echo answer, whole, as one ``response.done``."""
    t = json.loads(raw)
    return json.dumps(
        {
            "v": 1, "conversation_id": t["conversation_id"], "type": "response.done",
            "utterance_id": t["utterance_id"], "response_id": "r" + t["utterance_id"],
            "text": f'I\'ve received your transcription: "{t["text"]}"',
            "timings": {"sent_ms": t["sent_ms"], "transcript_final_ms": t["final_ms"],
                        "done_ms": int(time.time() * 1000)},
        },
        separators=(",", ":"),
    ).encode()


def ensure_groups(client: redis.Redis, prefix: str) -> None:
    src_in, src_mid, _ = stream_names(prefix)
    for key in (src_in, src_mid):
        try:
            client.xgroup_create(key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def run_stage(stage: str, redis_url: str, prefix: str, consumer: str) -> int:
    """The stage loop: read up to 1000, transform, pipeline XADDs + one XACK; until SIGTERM."""
    src_in, src_mid, dst_out = stream_names(prefix)
    src, dst = (src_in, src_mid) if stage == "a" else (src_mid, dst_out)
    transform = transform_a if stage == "a" else transform_b
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    ensure_groups(client, prefix)
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    client.set(f"{prefix}:up:{stage}:{consumer}", os.getpid(), ex=3600)
    while not stopping:
        reply = cast(StreamReply, client.xreadgroup(GROUP, consumer, {src: ">"}, count=1000, block=100) or [])
        for _key, entries in reply:
            if not entries:
                continue
            pipe = client.pipeline(transaction=False)
            for _entry_id, fields in entries:
                pipe.xadd(dst, {"d": transform(fields[b"d"])}, maxlen=MAXLEN, approximate=True)
            pipe.xack(src, GROUP, *[entry_id for entry_id, _ in entries])
            pipe.execute()
    client.close()
    return 0


class StageProcesses:
    """The baseline's stage processes (``per_stage`` consumers of each stage)."""

    def __init__(self, redis_url: str, prefix: str, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, per_stage: int) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": root + (os.pathsep + os.environ["PYTHONPATH"]
                                                   if os.environ.get("PYTHONPATH") else "")}
        for stage in ("a", "b"):
            for i in range(per_stage):
                name = f"stage-{stage}-{i}"
                log = open(self.log_dir / f"baseline-{name}.log", "ab")  # noqa: SIM115 - closed in stop
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.baseline_redis", "stage", stage, "--redis-url", self.redis_url,
                     "--prefix", self.prefix, "--consumer", f"c{i}"],
                    env=env, stdout=log, stderr=subprocess.STDOUT,
                )
                self.procs.append((name, proc, log))

    async def wait_up(self, client: aioredis.Redis, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            up = [k async for k in client.scan_iter(match=f"{self.prefix}:up:*", count=1000)]
            if len(up) >= len(self.procs):
                return
            dead = [name for name, p, _ in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"baseline stages exited at start: {dead}")
            await asyncio.sleep(0.05)
        raise RuntimeError("baseline stages did not come up")

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p, _ in self.procs}

    def dead(self) -> list[str]:
        """Stages that exited (a crash is a finding, not a hang)."""
        return [f"{name} (exit {p.returncode})" for name, p, _ in self.procs if p.poll() is not None]

    def stop(self) -> None:
        for _, p, _ in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p, log in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            log.close()
        self.procs.clear()


class BaselineRedisTarget(SharedStreamsTarget):
    """The client side of the baseline: XADD to ``in``, XREAD ``mid`` + ``out``."""

    name = "baseline_redis"

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.src_in, self.mid, self.out = stream_names(prefix)
        self._streams: dict[str, str] = {self.mid: "0-0", self.out: "0-0"}

    async def send(self, batch: Sequence[Utt]) -> None:
        pipe = self.client.pipeline(transaction=False)
        payloads = stamp_batch(batch)
        for payload in payloads:
            pipe.xadd(self.src_in, {"d": payload})
        ids = await pipe.execute()
        for u, entry_id in zip(batch, ids, strict=True):
            u.in_id_ms = id_ms(entry_id)

    async def read(self, block_ms: int) -> tuple[list[Observation], int]:
        reply = cast(StreamReply, await self.client.xread(
            dict(self._streams), count=1000, block=block_ms  # type: ignore[arg-type]
        ) or [])
        out: list[Observation] = []
        n = 0
        for key_b, entries in reply:
            key = key_b.decode()
            kind = MID if key == self.mid else DONE
            for entry_id, fields in entries:
                n += 1
                d: dict[str, Any] = json.loads(fields[b"d"])
                out.append((kind, d["conversation_id"], d["utterance_id"], id_ms(entry_id), None))
            self._streams[key] = entries[-1][0].decode()
        return out, n

    async def aclose(self) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_redis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="run one stage process until SIGTERM")
    stage.add_argument("which", choices=["a", "b"])
    stage.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    stage.add_argument("--prefix", default="baseline")
    stage.add_argument("--consumer", default=f"c{os.getpid()}")
    args = parser.parse_args(argv)
    return run_stage(args.which, args.redis_url, args.prefix, args.consumer)


if __name__ == "__main__":
    sys.exit(main())
