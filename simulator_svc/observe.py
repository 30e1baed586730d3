"""Read-only views of a running system, straight from Redis: workers,
ownership, consumer-group load, dead letters, recent answers. The monitor and
the admin commands render these; nothing here writes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from shared import keys as keynames
from shared.bus.resp import xrange_entries
from shared.keys import Keys
from shared.models import DeadLetter, EntryError, decode_fields
from simulator_svc.tracker import summarise

GROUPS = (keynames.TRANSCRIBER_GROUP, keynames.CONVERSATION_GROUP)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class WorkerInfo:
    service: str
    worker_id: str
    sessions: int
    capacity: int
    handled: int
    draining: bool
    seen_ago_s: float
    host: str
    metrics_port: str


@dataclass
class Owner:
    conversation_id: str
    group: str
    worker_id: str
    idle_ms: int
    deliveries: int


@dataclass
class GroupLoad:
    group: str
    stream: str
    lag: int
    pending: int
    streams: int = 1


@dataclass
class Snapshot:
    taken_at: float
    workers: list[WorkerInfo] = field(default_factory=list)
    owners: list[Owner] = field(default_factory=list)
    groups: list[GroupLoad] = field(default_factory=list)
    dead_letters: int = 0
    answered_last_min: int = 0
    latency_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def conversations(self) -> dict[str, dict[str, str]]:
        """conversation id -> {group: worker}."""
        table: dict[str, dict[str, str]] = {}
        for o in self.owners:
            table.setdefault(o.conversation_id, {})[o.group] = o.worker_id
        return table


async def workers(redis: aioredis.Redis, keys: Keys) -> list[WorkerInfo]:
    names = sorted([k async for k in redis.scan_iter(match=keys.worker_pattern(), count=1000)])
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    now_ms = time.time() * 1000
    out = []
    for raw in await pipe.execute():
        h = {_s(k): _s(v) for k, v in raw.items()}
        if not h:
            continue
        out.append(WorkerInfo(
            service=h.get("service", "?"), worker_id=h.get("worker_id", "?"),
            sessions=int(h.get("sessions", 0)), capacity=int(h.get("capacity", 0)),
            handled=int(h.get("handled", 0)), draining=h.get("draining") == "1",
            seen_ago_s=max(0.0, (now_ms - int(h.get("seen_ms", now_ms))) / 1000),
            host=h.get("host", ""), metrics_port=h.get("metrics_port", ""),
        ))
    return sorted(out, key=lambda w: (w.service, w.worker_id))


async def owners(redis: aioredis.Redis, keys: Keys, limit: int = 5000) -> list[Owner]:
    """Who owns what: the pending control entries of each group."""
    out: list[Owner] = []
    for control in keys.controls():
        for group in GROUPS:
            try:
                rows = await redis.xpending_range(control, group, min="-", max="+", count=limit)
            except aioredis.ResponseError:
                continue  # the group does not exist yet
            if not rows:
                continue
            pipe = redis.pipeline(transaction=False)
            for r in rows:
                pipe.xrange(control, r["message_id"], r["message_id"])
            entries = await pipe.execute()
            for r, found in zip(rows, entries, strict=True):
                if not found:
                    continue
                try:
                    entry = decode_fields(found[0][1])
                except EntryError:
                    continue
                out.append(Owner(entry.conversation_id, group, _s(r["consumer"]),
                                 int(r["time_since_delivered"]), int(r["times_delivered"])))
    return out


async def group_loads(redis: aioredis.Redis, keys: Keys, conversation_ids: list[str]) -> list[GroupLoad]:
    targets: list[tuple[str, str]] = [(k, "control") for k in keys.controls()]
    for cid in conversation_ids:
        targets.append((keys.input(cid), "input"))
        targets.append((keys.transcripts(cid), "transcripts"))
    pipe = redis.pipeline(transaction=False)
    for key, _ in targets:
        pipe.xinfo_groups(key)
    replies = await pipe.execute(raise_on_error=False)
    totals: dict[tuple[str, str], GroupLoad] = {}
    for (_, kind), groups in zip(targets, replies, strict=True):
        if isinstance(groups, Exception):
            continue
        for g in groups:
            name = _s(g["name"])
            load = totals.get((name, kind))
            if load is None:
                totals[(name, kind)] = GroupLoad(name, kind, int(g.get("lag") or 0), int(g.get("pending") or 0))
            else:
                load.lag += int(g.get("lag") or 0)
                load.pending += int(g.get("pending") or 0)
                load.streams += 1
    return sorted(totals.values(), key=lambda g: (g.group, g.stream))


async def recent_answers(redis: aioredis.Redis, keys: Keys, window_s: float = 60.0) -> list[dict[str, Any]]:
    since = int((time.time() - window_s) * 1000)
    out: list[dict[str, Any]] = []
    for key in keys.stats_keys():
        for _, fields in await xrange_entries(redis, key, min=f"{since}-0", count=100_000):
            try:
                doc = json.loads(fields[b"d"])
            except (KeyError, ValueError):
                continue
            # One entry holds a worker's answers of up to a second (a list).
            out.extend(doc if isinstance(doc, list) else [doc])
    return out


async def dead_letters(redis: aioredis.Redis, keys: Keys, limit: int = 100) -> list[tuple[str, str, DeadLetter]]:
    """(dead stream, dead entry id, letter), newest first."""
    out = []
    for key in keys.deads():
        for entry_id, fields in await xrange_entries(redis, key, count=limit, reverse=True):
            try:
                out.append((key, _s(entry_id), DeadLetter.model_validate_json(fields[b"d"])))
            except (KeyError, ValueError):
                continue
    return out[:limit]


async def snapshot(redis: aioredis.Redis, keys: Keys) -> Snapshot:
    snap = Snapshot(taken_at=time.time())
    snap.workers = await workers(redis, keys)
    snap.owners = await owners(redis, keys)
    snap.groups = await group_loads(redis, keys, sorted(snap.conversations())[:2000])
    pipe = redis.pipeline(transaction=False)
    for key in keys.deads():
        pipe.xlen(key)
    snap.dead_letters = sum(await pipe.execute())
    answers = await recent_answers(redis, keys)
    snap.answered_last_min = len(answers)
    snap.latency_ms = {
        "transcript_final": summarise([a["tf"] - a["sent"] for a in answers if "tf" in a]),
        "first_delta": summarise([a["fd"] - a["sent"] for a in answers if a.get("fd")]),
        "response_done": summarise([a["done"] - a["sent"] for a in answers if "done" in a]),
    }
    return snap
