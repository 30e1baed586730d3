"""python -m bench [--quick] [--out DIR]: run the whole benchmark, write the report.

The report goes into the run folder (default ``bench-results/<UTC time>``, not
committed); a full run (no ``--quick``, no ``--only``) also writes
``docs/performance.md``, stamped with the commit it measured (see ``bench.performance_doc``).

Phases, in order, all in one run against one Redis (its own, unless
``REDIS_URL`` is set):

1. baseline_queues: throughput, then latency at each offered load;
2. baseline_redis (1 process per stage): throughput, latency; then 2 per stage: throughput;
3. ours, one worker per tier, echo answer in ONE delta: throughput, latency;
4. ours, one worker per tier, default echo deltas (3 words each): throughput;
5. ours, two workers per tier (one delta): throughput;
6. paired: ours and baseline_redis up together, throughput runs alternating
   (the ratios of adjacent runs are the fair ones on a machine whose speed drifts);
7. capacity: live conversations on one conversation worker.

Every process it starts (services, stages, Redis) is stopped before it exits,
also on errors. Exit status 0 when every phase produced its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis

from bench import report
from bench.performance_doc import git_stamp, is_full, write_performance
from bench.phases import Bench
from bench.procstat import cpu_model
from bench.sizes import FULL, QUICK, Sizes
from shared.redis_server import RedisServer, start_embedded

ROOT = Path(__file__).resolve().parents[1]


def _install_fast_loop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _meta(
    sizes: Sizes, quick: bool, server: RedisServer | None, info: dict[str, Any], only: tuple[str, ...] = ()
) -> dict[str, Any]:
    return {
        "mode": "quick" if quick else "full",
        "only": list(only),
        "git": git_stamp(ROOT),
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench" + (" --quick" if quick else "") + (f" --only {','.join(only)!r}" if only else ""),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_bytes": psutil.virtual_memory().total,
        "redis": {
            "origin": server.origin if server else "REDIS_URL",
            "version": info.get("redis_version"),
            "server_binary": server.binary if server else None,
        },
        "sizes": asdict(sizes),
        "id_resolution_ms": 1.0,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _dump_tasks() -> None:
    """SIGUSR1: print every task's stack (to see where a run waits)."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


async def _amain(quick: bool, out: Path, only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every phase against one Redis (started here unless REDIS_URL is set); return the results."""
    sizes = QUICK if quick else FULL
    server: RedisServer | None = None
    url = os.environ.get("REDIS_URL")
    if not url:
        server = start_embedded(appendonly=False)
        url = server.url
        sys.stderr.write(f"[bench] started {server.origin} on port {server.port} (no persistence)\n")
    else:
        sys.stderr.write("[bench] using REDIS_URL\n")
    client = aioredis.Redis.from_url(url, decode_responses=False)
    t0 = time.monotonic()
    try:
        info = await client.info("server")
        bench = Bench(sizes, out, url, client)
        bench.only = only
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump_tasks)
        bench.results["meta"] = _meta(sizes, quick, server, info, only)
        await bench.run()
        results = bench.results
    finally:
        await client.aclose()
        if server is not None:
            server.cleanup()
    results["meta"]["duration_s"] = round(time.monotonic() - t0, 1)
    results["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the seconds-long CI size")
    parser.add_argument("--out", type=Path, help="results folder (default bench-results/<UTC time>)")
    parser.add_argument("--only", default="", help="comma-separated section name prefixes (for development)")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "bench-results" / dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    _install_fast_loop()
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    results = asyncio.run(_amain(args.quick, out, only))
    run_errors = list(results["errors"])
    report.write(out, results)
    sys.stderr.write(f"[bench] results in {out}/ ({results['meta']['duration_s']}s)\n")
    if is_full(results):
        if run_errors:
            sys.stderr.write("[bench] the run had errors: docs/performance.md left as it is\n")
        else:
            sys.stderr.write(f"[bench] wrote {write_performance(out, results)}\n")
    if results["errors"]:
        sys.stderr.write(json.dumps(results["errors"], indent=1)[:6000] + "\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
