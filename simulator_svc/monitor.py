"""A live terminal view of a running system, read from Redis only:

    python -m simulator_svc monitor [--interval 1] [--once] [--svg FILE]

Workers and their load, who owns each conversation, lag and pending per
consumer group, dead letters, answers and latency over the last minute.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis.asyncio as aioredis
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shared.keys import Keys
from simulator_svc.observe import Snapshot, snapshot

MAX_CONVERSATION_ROWS = 20


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def render(snap: Snapshot, keys: Keys, source: str) -> Group:
    convs = snap.conversations()
    lat = snap.latency_ms
    head = Text.assemble(
        ("voice-assistant backend", "bold"), f"   prefix={keys.prefix}  redis={source}  ",
        time.strftime("%H:%M:%S", time.localtime(snap.taken_at)), "\n",
        f"live conversations: {len(convs)}   workers: {len(snap.workers)}   ",
        "dead letters: ", (str(snap.dead_letters), "bold red" if snap.dead_letters else "green"),
        f"   answered (last 60 s): {snap.answered_last_min} ({snap.answered_last_min / 60:.1f}/s)",
    )
    latency = Table(title="latency over the last minute (ms, end of speech ->)", expand=False)
    for col in ("hop", "p50", "p95", "p99", "max", "n"):
        latency.add_column(col, justify="right" if col != "hop" else "left")
    for name in ("transcript_final", "first_delta", "response_done"):
        row = lat.get(name, {})
        latency.add_row(name, _ms(row.get("p50")), _ms(row.get("p95")), _ms(row.get("p99")),
                        _ms(row.get("max")), str(int(row.get("n") or 0)))

    workers = Table(title="workers", expand=False)
    for col in ("service", "worker", "sessions", "handled", "metrics", "seen", "state"):
        workers.add_column(col)
    for w in snap.workers:
        workers.add_row(w.service, w.worker_id, f"{w.sessions}/{w.capacity}", str(w.handled),
                        f"{w.host}:{w.metrics_port}" if w.metrics_port else "-", f"{w.seen_ago_s:.1f}s ago",
                        "draining" if w.draining else "up")

    groups = Table(title="consumer groups", expand=False)
    for col in ("group", "stream", "streams", "lag", "pending"):
        groups.add_column(col, justify="right" if col in ("streams", "lag", "pending") else "left")
    for g in snap.groups:
        groups.add_row(g.group, g.stream, str(g.streams), str(g.lag), str(g.pending))

    conversations = Table(title=f"conversations (first {MAX_CONVERSATION_ROWS} of {len(convs)})", expand=False)
    for col in ("conversation", "transcriber owner", "conversation owner"):
        conversations.add_column(col)
    for cid in sorted(convs)[:MAX_CONVERSATION_ROWS]:
        conversations.add_row(cid, convs[cid].get("transcriber", "-"), convs[cid].get("conversation", "-"))
    return Group(Panel(head), latency, workers, groups, conversations)


async def run_monitor(redis: aioredis.Redis, keys: Keys, source: str, interval_s: float, once: bool,
                      svg_path: str | None = None, console: Console | None = None) -> None:
    console = console or Console(record=svg_path is not None)
    if once:
        console.print(render(await snapshot(redis, keys), keys, source))
    else:
        with Live(console=console, refresh_per_second=4, screen=False) as live:
            while True:
                live.update(render(await snapshot(redis, keys), keys, source))
                await asyncio.sleep(interval_s)
    if svg_path:
        console.save_svg(svg_path, title="python -m simulator_svc monitor")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0, help="refresh period in seconds")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--svg", help="with --once: also save the frame as an SVG file")
