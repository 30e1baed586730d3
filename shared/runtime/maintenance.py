"""A worker's periodic chores, and the one helper that runs them.

``periodic`` runs a step every interval: a transient Redis error is logged
once per outage and the step runs again at its next tick; any other error is
logged with its traceback and the loop goes on (a chore never kills a worker).
A step given a timeout that overruns it is cancelled (redis-py then drops the
connection it waited on) and runs again at once, on a fresh connection, instead
of waiting out a socket timeout (a silently dead connection).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

from shared import keys as keynames
from shared.bus.resp import id_order
from shared.bus.retry import is_transient, log_failure
from shared.metrics import stream_kind
from shared.models import ConversationEnded, now_ms
from shared.runtime.context import WorkerContext
from shared.runtime.drain import Drainer
from shared.runtime.saturation import PROBE_INTERVAL_S
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Owned streams whose group lag/pending one sampling tick refreshes.
SAMPLE_STREAMS = 250
#: XINFO GROUPS calls per pipeline of a sampling tick.
SAMPLE_PIPELINE = 25
#: The worker registry outlives the last heartbeat written to it this many heartbeat lifetimes.
REGISTRY_TTL_HEARTBEATS = 10


async def periodic(
    what: str, interval_s: float, step: Callable[[], Awaitable[None]], when: Callable[[], bool] = lambda: True,
    timeout_s: float | None = None,
) -> None:
    """Run ``step`` every ``interval_s`` (while ``when()``), forever; see the module doc."""
    failing = False
    delay_s = interval_s
    while True:
        await asyncio.sleep(delay_s)
        delay_s = interval_s
        if not when():
            continue
        try:
            await _within(step, timeout_s)
            if failing:
                log.info("%s: redis is back", what)
            failing = False
        except Exception as exc:
            if isinstance(exc, Overran):
                delay_s = 0.0  # it took its interval already: again now, on a fresh connection
            if not is_transient(exc):
                log.exception("%s failed", what)
            elif not failing:
                log_failure(log, what, exc)
                failing = True


class Overran(TimeoutError):
    """A periodic step did not finish within its timeout (a TimeoutError: transient)."""


async def _within(step: Callable[[], Awaitable[None]], timeout_s: float | None) -> None:
    """Run ``step``; one that overruns ``timeout_s`` is cancelled and raises Overran.
    The step runs as a task of its own, stopped with ``cancel_and_wait``, which repeats a
    cancellation Python 3.11 may lose inside redis-py (asyncio.timeout would cancel only
    once: a lost one lets the step run on past its timeout), and which never touches
    the caller's own cancellation."""
    if timeout_s is None:
        await step()
        return
    task = asyncio.ensure_future(step())
    try:
        done, _ = await asyncio.wait([task], timeout=timeout_s)
    finally:
        if not task.done():
            await cancel_and_wait(task)
    if not done:
        raise Overran(f"no answer within {timeout_s:.2f}s")
    task.result()


class Chores:
    """Heartbeat, idle conversations, control-stream trimming, lag sampling."""

    def __init__(self, w: WorkerContext, drainer: Drainer, metrics_port: int | None) -> None:
        self._w = w
        self._drainer = drainer
        self._metrics_port = metrics_port
        self._sample_cursor = 0
        #: Last sampled (lag, pending) of each stream this worker reads.
        self._group_load: dict[str, tuple[int, int]] = {}

    # --- heartbeat ----------------------------------------------------------------

    async def heartbeat(self) -> None:
        """The heartbeat hash (for the monitor, and for peers deciding how to rebalance),
        and this worker's entry in its service's registry, where peers find it."""
        w = self._w
        key = w.keys.worker(w.service.name, w.worker_id)
        registry = w.keys.workers(w.service.name)
        fields = self.heartbeat_fields()
        ttl_s = max(3, int(w.settings.lease_s * 3))
        pipe = w.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, ttl_s)
        pipe.zadd(registry, {w.worker_id: int(fields["seen_ms"])})
        pipe.expire(registry, REGISTRY_TTL_HEARTBEATS * ttl_s)
        await pipe.execute()

    def heartbeat_fields(self) -> dict[str, str]:
        """What the monitor shows about this worker (all strings: a Redis hash)."""
        w = self._w
        table = w.owned.table
        now_s = time.monotonic()
        delay_s = w.queue_delay.median_s(now_s)
        overloaded = w.queue_delay.overloaded(now_s)
        saturated = w.queue_delay.saturated(now_s)
        w.meters.saturated.set(int(saturated))
        fields = {
            "service": w.service.name,
            "worker_id": w.worker_id,
            "sessions": len(table.claims),
            "capacity": table.capacity,
            "draining": int(table.draining),
            "saturated": int(saturated),
            "overloaded": int(overloaded),
            "handed_back": w.handed_back,
            "queue_delay_ms": "" if delay_s is None else round(delay_s * 1000, 1),
            "handled": self._drainer.handled,
            "seen_ms": now_ms(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "metrics_port": self._metrics_port if self._metrics_port is not None else "",
        }
        return {k: str(v) for k, v in fields.items()}

    # --- queue delay ----------------------------------------------------------------

    async def probe_queue_delay(self) -> None:
        """Forever: how late a short timer fires is how long ready work waits for this
        worker (its saturation: shared/runtime/saturation.py)."""
        meter = self._w.queue_delay
        while True:
            due = time.monotonic() + PROBE_INTERVAL_S
            await asyncio.sleep(PROBE_INTERVAL_S)
            now = time.monotonic()
            meter.observe(now - due, now)

    # --- idle conversations ---------------------------------------------------------

    def expire_idle(self) -> None:
        """Close conversations with no entry for ``idle_timeout_s``, as if they had ended."""
        now = time.monotonic()
        for live in list(self._w.owned.live.values()):
            if live.closed or live.task is not None or live.queue or live.replay is not None:
                continue
            if now - live.last_seen_s > self._w.settings.idle_timeout_s:
                cid = live.conversation_id
                log.info("conversation %s idle for %.0fs: closing it", cid, now - live.last_seen_s,
                         extra={"conversation_id": cid})
                live.push((None, ConversationEnded(conversation_id=cid, reason="idle"), None))
                self._drainer.kick(live)

    # --- control-stream trimming ---------------------------------------------------------

    async def trim_controls(self) -> None:
        for key in self._w.keys.controls():
            await self._trim_control(key)

    async def _trim_control(self, key: str) -> None:
        """Trim what both groups consumed off a control stream: below the oldest entry
        still pending (a live claim) or not yet delivered, in either group. Never by
        length: a length cap would cut live claims under a flood of starts. A stream
        over ``control_maxlen`` is reported instead (starts outrun the workers)."""
        redis = self._w.redis
        groups = await redis.xinfo_groups(key)
        names = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"] for g in groups}
        if not {keynames.TRANSCRIBER_GROUP, keynames.CONVERSATION_GROUP} <= names:
            return  # a tier has not read it yet: everything may still be delivered to it
        floor: str | None = None
        for g in groups:
            candidates = [g["last-delivered-id"]]
            if g["pending"]:
                summary = await redis.xpending(key, g["name"])
                candidates.append(summary["min"])
            for c in candidates:
                cid = c.decode() if isinstance(c, bytes) else str(c)
                if floor is None or id_order(cid) < id_order(floor):
                    floor = cid
        if floor and floor != "0-0":
            await redis.xtrim(key, minid=floor)
        length = await redis.xlen(key)
        if length > self._w.settings.control_maxlen:
            log.warning("control stream %s holds %d entries (CONTROL_MAXLEN %d): conversations start faster "
                        "than the workers take them", key, length, self._w.settings.control_maxlen)

    # --- lag sampling -------------------------------------------------------------------

    async def sample_lag(self) -> None:
        """Refresh the lag/pending of the control streams and of the next
        SAMPLE_STREAMS owned streams (rotating), then publish the sums. A worker
        with thousands of conversations thus spends a bounded time per tick."""
        w = self._w
        control_keys = w.keys.controls()
        owned = w.owned.data_keys()
        start = self._sample_cursor % len(owned) if owned else 0
        chunk = owned[start : start + SAMPLE_STREAMS]
        self._sample_cursor = start + len(chunk)
        keys = control_keys + chunk
        # Small pipelines with a yield between them: parsing hundreds of XINFO
        # replies at once would stall the read loop for milliseconds (a p99 spike).
        for start_at in range(0, len(keys), SAMPLE_PIPELINE):
            part = keys[start_at : start_at + SAMPLE_PIPELINE]
            pipe = w.redis.pipeline(transaction=False)
            for key in part:
                pipe.xinfo_groups(key)
            replies = await pipe.execute(raise_on_error=False)
            for key, groups in zip(part, replies, strict=True):
                if isinstance(groups, Exception):
                    continue
                for g in groups:
                    name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                    if name == w.group:
                        self._group_load[key] = (int(g.get("lag") or 0), int(g.get("pending") or 0))
            await asyncio.sleep(0)
        live_keys = set(owned) | set(control_keys)
        totals: dict[str, list[int]] = {}
        for key in list(self._group_load):
            if key not in live_keys:
                del self._group_load[key]
                continue
            lag, pending = self._group_load[key]
            t = totals.setdefault(stream_kind(key), [0, 0])
            t[0] += lag
            t[1] += pending
        for kind in ("control", stream_kind(w.service.data_key(w.keys, "x"))):
            lag, pending = totals.get(kind, [0, 0])
            w.meters.lag(kind).set(lag)
            w.meters.pending(kind).set(pending)
