"""Read scheduling: which streams a worker reads, and when.

A listener task stays parked on the doorbells of the kinds this worker reads
(its data kind and ``control``) and marks the owned streams that rang. The
read loop then reads just those with one non-blocking XREADGROUP ``>``, and
the control stream only while a session slot is free (COUNT capped by the
free slots and ``claim_batch``: that is the load balancing). A ring is only a
hint: every entry handled is one the group delivered, so a forged or stale
ring costs a read that finds nothing. Every ``sweep_ms`` the loop also reads
every owned stream (in SWEEP_SLICES slices), for writers that do not ring and
for rings lost while Redis was away. Reading pauses while the writer's
backlog is over its high-water mark (backpressure), and while the worker's
claims are not confirmed (no refresh reached Redis for two thirds of a lease:
paused or cut off, it may have lost conversations to peers, and a read now
would take entries of conversations it no longer owns).

Per conversation, backpressure is the queue's bound (``QueueLimits``): a
conversation whose queue is over the low-water mark, or that is still claiming
a previous owner's pending entries, is in no read (rung, swept or full); its
entries wait in Redis, undelivered. The drain marks it to be read again once
its queue is back at the mark. A data read's COUNT is the room above the mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from redis.exceptions import ResponseError

from shared.backoff import backoff
from shared.bus.doorbell import BellSet, Ring
from shared.bus.groups import GroupReader, PartialRead, ensure_group
from shared.bus.resp import StreamEntries, StreamReply, server_run_id
from shared.bus.retry import failure_reason, is_transient, log_failure, retry_forever
from shared.keys import CONTROL_KIND
from shared.metrics import stream_kind
from shared.runtime.context import WorkerContext
from shared.runtime.drain import Drainer

log = logging.getLogger(__name__)

#: A sweep of every owned stream is spread over this many reads per SWEEP_MS.
SWEEP_SLICES = 10
#: Longest doorbell wait of the listener: how soon it notices a stop.
LISTEN_BLOCK_S = 0.25
#: How often a worker whose claims are not confirmed looks again.
UNCONFIRMED_POLL_S = 0.05

OnControl = Callable[[str, str, dict[bytes, bytes]], Awaitable[None]]
#: Called when Redis came back with a new run id (it restarted), before anything is read.
OnRestart = Callable[[], Awaitable[None]]
#: Called with an owned data stream that cannot be read, and why.
OnUnreadable = Callable[[str, str], Awaitable[None]]


@dataclass
class ReadPlan:
    """One read: the control streams with their COUNT (small: it caps claims) and the
    owned data streams with theirs, sent as two XREADGROUPs in one round trip."""

    control: list[str] = field(default_factory=list)
    control_count: int = 0
    data: list[str] = field(default_factory=list)
    data_count: int = 1

    @property
    def empty(self) -> bool:
        return not self.control and not self.data

    def parts(self) -> list[tuple[list[str], int]]:
        return [(self.control, self.control_count), (self.data, self.data_count)]


class ReadScheduler:
    def __init__(
        self, w: WorkerContext, drainer: Drainer, on_control: OnControl, on_unreadable: OnUnreadable,
        on_restart: OnRestart,
    ) -> None:
        self._w = w
        self._drainer = drainer
        self._on_control = on_control
        self._on_unreadable = on_unreadable
        self._on_restart = on_restart
        self._data_kind = stream_kind(w.service.data_key(w.keys, "x"))
        self._control_keys = w.keys.controls()
        self._control_bkeys = {k.encode() for k in self._control_keys}
        #: Owned data streams that rang (or may hold more) since the last read.
        self._dirty: set[str] = set()
        self._control_rung = False
        #: Set when there is something to read; _resync: rings may have been lost.
        self._rang = asyncio.Event()
        self._resync = False
        self._sweep_cursor = 0
        #: Writer backlog at which reading pauses.
        self._high_water = max(4 * w.settings.read_count, 1000)
        #: COUNT of a data read: never more than a readable conversation's queue has room for.
        self._data_count = w.owned.limits.read_count(w.settings.read_count)

    def read_soon(self, data_key: str) -> None:
        """Read this owned stream at the next step (e.g. just adopted: it may hold entries)."""
        self._dirty.add(data_key)
        self._rang.set()

    async def run(self) -> None:
        """Read until the worker is stopping."""
        w = self._w
        reader = GroupReader(w.redis, w.group, w.worker_id)
        bell = BellSet(w.redis, w.keys.bells([self._data_kind, CONTROL_KIND]))
        listener: asyncio.Task[None] | None = None
        try:
            await retry_forever("doorbell", bell.start)
            listener = asyncio.create_task(self._listen(bell), name="doorbell")
            await self._read_with(reader)
        finally:
            if listener is not None:
                # It stops by itself within one short block. Cancelling it inside its
                # blocking read left the task hanging in redis-py's disconnect (seen at
                # SIGTERM), so cancel only one that overran, and never wait on it forever.
                await asyncio.wait([listener], timeout=2 * LISTEN_BLOCK_S)
                if not listener.done():
                    listener.cancel()
                    await asyncio.wait([listener], timeout=1.0)
            await reader.aclose()
            await bell.aclose()
            s = w.writer.stats
            log.info(
                "reads: %d returning %d entries; writes: %d flushes of %d ops (%d coalesced, %d suppressed, "
                "%d fenced)", reader.reads, reader.entries, s.flushes, s.ops, s.coalesced, s.suppressed, s.fenced,
            )

    async def _listen(self, bell: BellSet) -> None:
        """Stay parked on the doorbells (a connection of their own), so a ring is
        noted as soon as Redis sends it, also while the read loop is busy: under
        load the loop finds the next streams already rung."""
        delays = backoff()
        block_ms = int(min(self._w.settings.read_block_ms / 1000, LISTEN_BLOCK_S) * 1000)
        while not self._w.stopping.is_set():
            try:
                rings = await bell.wait(block_ms)
                delays = backoff()
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("doorbell listener failed; the sweep still reads every owned stream")
                self._resync = True  # rings may have been lost meanwhile
                self._rang.set()
                await asyncio.sleep(next(delays))
                continue
            if rings and self._mark_rung(rings):
                self._rang.set()

    def _mark_rung(self, rings: list[Ring]) -> bool:
        """Mark the owned streams that rang; True when the read loop has work."""
        owned = self._w.owned
        read = False
        for ring in rings:
            if ring.kind == self._data_kind:
                for cid in ring.conversation_ids:
                    live = owned.get(cid)
                    if live is not None:
                        self._dirty.add(live.ctx.data_key)
                        read = True
            elif ring.kind == CONTROL_KIND:
                self._control_rung = True
                read = True
        return read

    async def _read_with(self, reader: GroupReader) -> None:
        w = self._w
        delays = backoff()
        sweep_s = w.settings.sweep_ms / 1000
        next_sweep = 0.0
        full_sweep = True
        paused = False
        while not w.stopping.is_set():
            await w.writer.wait_below(self._high_water)
            if not w.claims_confirmed():
                if not paused:
                    log.warning("claims not confirmed for %.1fs (paused or cut off?): not reading until a "
                                "refresh says which conversations are still ours", w.unconfirmed_s())
                    paused = True
                await asyncio.sleep(UNCONFIRMED_POLL_S)
                continue
            if paused:
                paused = False
                next_sweep, full_sweep = 0.0, True  # rings may have been missed meanwhile
            if self._resync:
                self._resync = False
                next_sweep, full_sweep = 0.0, True
            plan = ReadPlan()
            try:
                if not w.redis_ok:
                    # Before planning: a restart puts conversations back to replaying, out of every read.
                    await self._check_restart()
                now = time.monotonic()
                plan_key: object = None
                if now >= next_sweep:
                    next_sweep = now + sweep_s / SWEEP_SLICES
                    if full_sweep:
                        plan_key, plan = self._full_plan()
                        full_sweep = False
                    else:
                        plan = self._sweep_plan()
                else:
                    plan = self._rung_plan()
                    if plan.empty:
                        # Nothing rang since the last read: wait for the listener (or the next sweep).
                        self._rang.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(next_sweep - now):
                                await self._rang.wait()
                        continue
                self._dirty.clear()
                self._control_rung = False
                reply = await reader.read(plan_key, plan.parts()) if not plan.empty else []
                if not w.redis_ok:
                    log.info("redis is back: reading again")
                w.redis_ok = True
                delays = backoff()
            except Exception as exc:
                if isinstance(exc, PartialRead):
                    # Some partitions' masters answered: what they delivered is ours to handle.
                    await self._handle(exc.reply, plan)
                    exc = exc.cause
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    await self._recreate_groups(plan.control + plan.data)
                    continue
                if isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc):
                    if not await self._reject_unreadable(plan.data):
                        # A control stream's name holds another type: an operator's fix is needed.
                        log.error("a control stream is not a stream (%s); retrying with backoff", exc)
                        w.redis_ok = False
                        w.failing_with = "a control stream is not a stream"
                        await asyncio.sleep(next(delays))
                    continue
                if not is_transient(exc):
                    raise
                if w.redis_ok:
                    log_failure(log, "read", exc)
                w.redis_ok = False
                w.failing_with = failure_reason(exc)
                w.meters.redis_errors_read.inc()
                next_sweep, full_sweep = 0.0, True  # rings may have been lost meanwhile
                await asyncio.sleep(next(delays))
                continue
            await self._handle(reply, plan)

    async def _handle(self, reply: StreamReply, plan: ReadPlan) -> None:
        for key, entries in reply:
            if key in self._control_bkeys:
                for entry_id, fields in entries:
                    await self._on_control(key.decode(), entry_id.decode(), fields)
                if len(entries) >= plan.control_count:
                    self._control_rung = True  # more may be waiting
            else:
                self._on_data(key, entries)
                if len(entries) >= plan.data_count:
                    self._dirty.add(key.decode())

    async def _check_restart(self) -> None:
        """Redis was away. If it restarted (a new run id), resume every owned conversation
        from what it kept before reading anything new (``Leases.resume_all``)."""
        w = self._w
        run_id = await server_run_id(w.redis)
        if run_id != w.run_id:
            log.warning("redis restarted (run id %s, was %s): it may have lost its last second", run_id, w.run_id)
            await self._on_restart()
            w.run_id = run_id

    def _control_part(self, wanted: bool) -> tuple[list[str], int]:
        """The control streams and their COUNT, when ``wanted``, a slot is free and
        rebalancing does not hold new conversations off (``taking_new``). The COUNT
        caps the claims of one read: never more conversations than free slots, nor
        a whole burst (``claim_batch``), so a burst spreads over the workers."""
        table = self._w.owned.table
        if not (wanted and table.accepting and self._w.taking_new):
            return [], 0
        return self._control_keys, min(self._w.settings.read_count, table.free_slots, self._w.settings.claim_batch)

    def _full_plan(self) -> tuple[object, ReadPlan]:
        """A read of everything owned that has room (and the control streams when a
        slot is free); its packed commands are reused until the set of owned
        conversations changes, unless some are left out (packed for this read only)."""
        owned = self._w.owned
        control, control_count = self._control_part(True)
        keys = owned.data_keys()
        data = [k for k in keys if owned.readable(k)]
        plan = ReadPlan(control, control_count, data, self._data_count)
        return ((owned.version, control_count) if len(data) == len(keys) else None), plan

    def _sweep_plan(self) -> ReadPlan:
        """A slice of the sweep: the next 1/SWEEP_SLICES of the owned streams, the
        control streams when a slot is free, and whatever rang. Sweeping in slices
        keeps each read small, so no one read stalls the loop."""
        plan = self._rung_plan(control=True)
        owned = self._w.owned.data_keys()
        if owned:
            size = -(-len(owned) // SWEEP_SLICES)
            start = self._sweep_cursor % len(owned)
            chunk = owned[start : start + size]
            self._sweep_cursor = start + size
            seen = set(plan.data)
            plan.data += [k for k in chunk if k not in seen and self._w.owned.readable(k)]
        return plan

    def _rung_plan(self, control: bool = False) -> ReadPlan:
        """The owned streams that rang since the last read and have room (and the
        control streams when they rang, or when ``control``). A ring for a stream
        without room is dropped: the drain marks it again when there is room."""
        owned = self._w.owned
        data = [k for k in self._dirty if owned.readable(k)]
        control_keys, control_count = self._control_part(control or self._control_rung)
        return ReadPlan(control_keys, control_count, data, self._data_count)

    async def _reject_unreadable(self, streams: list[str]) -> bool:
        """A read failed with WRONGTYPE: give up the owned conversations whose stream's
        name now holds another type (the others are read again at the next step).
        False when none of ``streams`` is the culprit."""
        w = self._w
        pipe = w.redis.pipeline(transaction=False)
        for key in streams:
            pipe.type(key)
        kinds = await pipe.execute() if streams else []
        found = False
        for key, kind in zip(streams, kinds, strict=True):
            name = kind.decode() if isinstance(kind, bytes) else str(kind)
            if name not in ("stream", "none"):
                found = True
                await self._on_unreadable(key, f"{key} holds a {name}, not a stream")
            else:
                self._dirty.add(key)
        return found

    async def _recreate_groups(self, streams: list[str]) -> None:
        """A stream lost its group (expired key, Redis restarted empty): recreate them."""
        w = self._w
        for key in streams:
            if await ensure_group(w.redis, key, w.group):
                log.warning("recreated consumer group %s on %s", w.group, key)

    def _on_data(self, key: bytes, entries: StreamEntries) -> None:
        live = self._w.owned.by_data_key(key)
        if live is None:
            # Read just before we lost or closed it; the entries stay pending for the owner.
            return
        for entry_id, fields in entries:
            self._drainer.queue(live, entry_id.decode(), fields)
            self._w.meters.data_read.inc()
        live.last_seen_s = time.monotonic()
        self._drainer.kick(live)  # one drain for the whole read, not one per entry
