"""python -m bench.tail: where the latency tail at a steady load comes from.

Runs our pipeline (one worker per tier, ``simulated`` + ``echo``) at a fixed
offered rate for several windows and prints, per window, the end-to-end
p50 / p99 / max next to what stalled each process meanwhile: its longest
garbage-collector pause and its longest event-loop lag (the workers' own
``vab_gc_pause_seconds`` / ``vab_event_loop_lag_seconds``, read off their
/metrics; the driver measures itself the same way). A tail that follows one
process's stalls names its cause; one that follows none is the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis

from bench.driver import Driver
from bench.pipeline import PipelineTarget, Services, delete_prefix
from shared import metrics
from shared.keys import Keys
from shared.process import install_fast_loop
from shared.redis_server import start_embedded
from shared.stalls import StallMonitor

_BUCKET = re.compile(r'^(vab_gc_pause_seconds|vab_event_loop_lag_seconds)_bucket\{(.*)\} (\S+)$', re.M)


Buckets = dict[str, dict[float, float]]


def stall_buckets(body: str) -> Buckets:
    """The stall histograms' cumulative bucket counts (summed over GC generations)."""
    out: Buckets = {}
    for name, labels, value in _BUCKET.findall(body):
        le = re.search(r'le="([^"]+)"', labels)
        if le is None:
            continue
        bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
        by_bound = out.setdefault(name, {})
        by_bound[bound] = by_bound.get(bound, 0.0) + float(value)
    return out


def worst_between(before: Buckets, after: Buckets) -> dict[str, float]:
    """Per histogram, the upper bound (ms) of the highest bucket that gained
    observations between two scrapes: the bucket the window's worst stall fell into
    (a histogram keeps no maximum)."""
    worst: dict[str, float] = {}
    for name, rows in after.items():
        old = before.get(name, {})
        previous, top = 0.0, 0.0
        for bound in sorted(rows):
            gained = rows[bound] - old.get(bound, 0.0)  # cumulative: non-decreasing in bound
            if gained > previous:
                top = bound
            previous = gained
        worst[name] = top * 1000
    return worst


def _local_exposition() -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.REGISTRY).decode()


async def _worker_ports(client: aioredis.Redis, keys: Keys) -> dict[str, int]:
    ports: dict[str, int] = {}
    async for key in client.scan_iter(match=keys.worker_pattern()):
        fields = cast(dict[bytes, bytes], await client.hgetall(key))
        ports[fields[b"service"].decode()] = int(fields[b"metrics_port"])
    return ports


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def run(
    rate: float, window_s: float, windows: int, conversations: int, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    server = start_embedded(appendonly=False)
    client = aioredis.Redis.from_url(server.url)
    prefix = f"tail{uuid.uuid4().hex[:6]}"
    keys = Keys(prefix)
    service_env = {"ECHO_WORDS_PER_DELTA": "1000", "METRICS_ENABLED": "true", "METRICS_PORT": "0", **(env or {})}
    services = Services(server.url, prefix, Path(tempfile.mkdtemp(prefix="bench-tail-")), **service_env)
    stalls = StallMonitor(log_over_s=10.0)
    rows: list[dict[str, Any]] = []
    try:
        await services.start(client, 1, 1)
        ports = await _worker_ports(client, keys)
        target = PipelineTarget(client, keys)
        cids = [f"tail-{i:04d}" for i in range(conversations)]
        async with Driver(target, cids, health=services.check_alive) as driver:
            await target.start_conversations(cids)
            target.follow(cids)
            if not await driver.one_each(timeout_s=60.0):
                raise RuntimeError("warm-up utterances were not all answered")
            stalls.start()
            def scrape_all() -> dict[str, Buckets]:
                scraped = {service: stall_buckets(_scrape(port)) for service, port in ports.items()}
                scraped["driver"] = stall_buckets(_local_exposition())
                return scraped

            before = await asyncio.to_thread(scrape_all)
            for n in range(windows):
                res = await driver.open_loop(rate, window_s, drain_s=10.0)
                after = await asyncio.to_thread(scrape_all)
                row: dict[str, Any] = {"window": n + 1, "sustained": res["sustained"],
                                       "e2e_ms": res["latency_ms"]["e2e"]}
                for who in after:
                    row[who] = worst_between(before[who], after[who])
                before = after
                rows.append(row)
                print(_format(row), flush=True)
    finally:
        stalls.stop()
        services.stop()
        await delete_prefix(client, prefix)
        await client.aclose()
        server.cleanup()
    return rows


def _format(row: dict[str, Any]) -> str:
    e2e = row["e2e_ms"]
    parts = [f"window {row['window']}: e2e p50 {e2e['p50']} p99 {e2e['p99']} max {e2e['max']} ms"
             f"{'' if row['sustained'] else ' (NOT sustained)'}"]
    for who in ("transcriber", "conversation", "driver"):
        worst = row.get(who, {})
        parts.append(f"{who}: gc <= {worst.get('vab_gc_pause_seconds', 0):g} ms, "
                     f"loop lag <= {worst.get('vab_event_loop_lag_seconds', 0):g} ms")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tail", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="utterances per second, offered")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the services (e.g. SWEEP_MS=5000); repeatable")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    install_fast_loop()
    asyncio.run(run(args.rate, args.window, args.windows, args.conversations, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
