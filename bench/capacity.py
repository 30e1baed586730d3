"""Capacity: live conversations held by ONE conversation worker (+1 transcriber).

The worker runs with ``MAX_SESSIONS`` above the largest step. A fixed set of
*probe* conversations carries a light open-loop load (``rate`` utterances/s
spread evenly over them); the other conversations are idle but live: each was
started and answered once (so its engine session and history exist), then
left open. At each step (live conversations = probes + idle) the bench
measures:

- ``rss_bytes``: the conversation worker's resident set (psutil);
- ``rss_per_session_bytes`` = (RSS at the step - RSS with no conversation) /
  live conversations; ``marginal_rss_per_session_bytes`` = the slope between
  the first loaded step and this one (what one more conversation costs);
- the light load's end-to-end latency (client clock) and whether it was
  sustained;
- during the light load: CPU % of the worker, the transcriber, Redis (and
  the driver), and Redis' own time per XREADGROUP call (each worker reads
  all its owned streams in one XREADGROUP, so its cost grows with them).

``p99_doubled_at`` is the first step whose e2e p99 is at least twice the p99
of the smallest loaded step (None: it never doubled up to the largest step).
The client follows only the probes' response streams: following thousands
of streams per XREAD would measure the client, not the worker, while the
worker still reads every owned conversation's stream in each XREADGROUP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.cpu import CpuMeter, redis_pid, rss_bytes
from bench.driver import Driver
from bench.pipeline import PipelineTarget, Services, worker_sessions
from shared.keys import Keys


async def run_capacity(
    client: aioredis.Redis,
    redis_url: str,
    prefix: str,
    log_dir: Path,
    steps: Sequence[int],
    probes: int,
    rate_per_s: float,
    window_s: float,
    drain_s: float,
    chunk: int = 500,
) -> dict[str, Any]:
    """Grow the live conversations step by step; see the module doc for the figures."""
    max_sessions = max(steps) + probes + 100
    services = Services(redis_url, prefix, log_dir, MAX_SESSIONS=str(max_sessions))
    rows: list[dict[str, Any]] = []
    try:
        await services.start(client, 1, 1)
        conv_pid = services.conversations[0].pid
        tr_pid = services.transcribers[0].pid
        pids = {"conversation-0": conv_pid, "transcriber-0": tr_pid}
        server_pid = await redis_pid(client)
        if server_pid is not None:
            pids["redis-server"] = server_pid
        await asyncio.sleep(1.0)
        rss0 = rss_bytes(conv_pid)
        rows.append({"sessions": 0, "rss_bytes": rss0, "transcriber_rss_bytes": rss_bytes(tr_pid)})
        target = PipelineTarget(client, Keys(prefix), read_mid=False)
        probe_ids = [f"cap-p{i:05d}" for i in range(probes)]
        async with Driver(target, probe_ids, health=services.check_alive) as driver:
            await target.start_conversations(probe_ids)
            target.follow(probe_ids)
            if not await driver.one_each(probe_ids):
                raise RuntimeError("capacity: the probe conversations were not all answered")
            live = probes
            for step in sorted(s for s in steps if s > 0):
                while live < step:
                    n = min(chunk, step - live)
                    ids = [f"cap-i{live + j:05d}" for j in range(n)]
                    await target.start_conversations(ids)
                    target.follow(ids)
                    ok = await driver.one_each(ids, timeout_s=120.0)
                    target.unfollow(ids)
                    if not ok:
                        raise RuntimeError(f"capacity: conversations {live}..{live + n} not all answered")
                    live += n
                await asyncio.sleep(0.5)
                rss = rss_bytes(conv_pid)
                meter = CpuMeter(client, pids)
                await meter.start()
                load = await driver.open_loop(rate_per_s, window_s, drain_s, conversations=probe_ids)
                used = await meter.stop()
                rows.append({
                    "sessions": live,
                    "rss_bytes": rss,
                    "rss_after_load_bytes": rss_bytes(conv_pid),
                    "transcriber_rss_bytes": rss_bytes(tr_pid),
                    "rss_per_session_bytes": round((rss - rss0) / live),
                    "e2e_ms": load["latency_ms"]["e2e"],
                    "sustained": load["sustained"],
                    "missing": load["missing"],
                    "duplicates": load["duplicates"],
                    "cpu_percent": used["cpu_percent"],
                    "xreadgroup_usec_per_call": used["redis_usec_per_call"].get("xreadgroup"),
                    "xreadgroup_calls_per_s": round(used["redis_calls"].get("xreadgroup", 0) / used["elapsed_s"], 1),
                })
        owned = await worker_sessions(client, Keys(prefix))
        crashed = services.check_alive()
    finally:
        services.stop()
    loaded = [r for r in rows if r["sessions"] > 0]
    first = loaded[0] if loaded else None
    for r in loaded[1:]:
        if first is not None:
            r["marginal_rss_per_session_bytes"] = round(
                (r["rss_bytes"] - first["rss_bytes"]) / (r["sessions"] - first["sessions"])
            )
    ref_p99 = first["e2e_ms"]["p99"] if first else None
    doubled_at = None
    if ref_p99:
        for r in loaded[1:]:
            p99 = r["e2e_ms"]["p99"]
            if p99 is not None and p99 >= 2 * ref_p99:
                doubled_at = r["sessions"]
                break
    return {
        "max_sessions_setting": max_sessions,
        "probes": probes,
        "light_load_per_s": rate_per_s,
        "window_s": window_s,
        "steps": rows,
        "reference_p99_ms": ref_p99,
        "p99_doubled_at": doubled_at,
        "sessions_seen_in_heartbeats": owned,
        "crashed": crashed,
    }
