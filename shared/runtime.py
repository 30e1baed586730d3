"""The ownership runtime: the one loop of a worker that reads and acks streams.

Both session services (transcriber, conversation) run this loop with their
own :class:`Service`. The protocol (see ``shared/design/architecture.md``):

1. One blocking XREADGROUP reads the control stream(s) (only while a session
   slot is free, COUNT capped by the free slots) together with the data
   stream of every owned conversation. Control and data streams share the
   service's group name, so one call serves both.
2. A ``conversation.started`` delivered to this worker makes it the owner:
   the entry stays pending while the worker owns the conversation.
3. A refresher re-claims (XCLAIM JUSTID, through a script that skips entries
   a peer took) every owned control entry each ``lease_s / 3``.
4. A reaper takes control entries idle for longer than ``lease_s`` with
   XAUTOCLAIM (a dead worker's conversations), then claims that
   conversation's pending data entries and replays them before new ones.
5. Each conversation's entries run one at a time, in stream order, in a task
   that exists only while the conversation has work.
6. SIGTERM: stop reading, finish queued work up to ``drain_timeout_s``, then
   hand every owned conversation back at once (its control entry's idle time
   is set past the lease so a peer's reaper takes it on its next pass).

Acks: a session writes its effect and the ack of its source entry together
through ``BatchWriter.gate``; entries that cannot be processed go to the
dead-letter stream with the same gate, so nothing is acked without a trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared import keys as keynames
from shared.backoff import backoff
from shared.bus import (
    BatchWriter,
    Doorbell,
    GroupReader,
    Ring,
    Scripts,
    cancel_and_wait,
    ensure_group,
    id_order,
    is_transient,
    retry_forever,
)
from shared.eager import start_eagerly
from shared.engines.base import EngineError
from shared.keys import CONTROL_KIND
from shared.metrics import stream_kind
from shared.models import (
    ENTRY_FIELD,
    ConversationEnded,
    ConversationStarted,
    Entry,
    EntryError,
    decode_fields,
    now_ms,
)
from shared.ownership import Claim, OwnershipTable
from shared.runtime_meters import RuntimeMeters
from shared.service import Service, ServiceSession, SessionContext, dead_letter
from shared.settings import CommonSettings

log = logging.getLogger(__name__)


#: A sweep of every owned stream is spread over this many reads per SWEEP_MS.
SWEEP_SLICES = 10
#: Owned streams whose group lag/pending one sampling tick (every 5 s) refreshes.
SAMPLE_STREAMS = 250
#: Longest doorbell wait of the listener: how soon it notices a stop.
LISTEN_BLOCK_S = 0.25
#: XINFO GROUPS calls per pipeline of a sampling tick.
SAMPLE_PIPELINE = 25
#: Control entries re-claimed per refresh script call: each call holds Redis for
#: its whole length (an XPENDING and an XCLAIM per entry), so keep calls short.
REFRESH_CHUNK = 100


@dataclass
class _Live:
    ctx: SessionContext
    claim: Claim
    session: ServiceSession | None = None
    queue: deque[tuple[str | None, Entry | EntryError, bytes | None]] = field(default_factory=deque)
    #: The drain is under way (eagerly, or as ``task`` once it had to wait).
    running: bool = False
    task: asyncio.Task[None] | None = None
    failures: dict[str, int] = field(default_factory=dict)
    last_seen_s: float = field(default_factory=time.monotonic)
    closed: bool = False
    #: Id (as ``id_order``) of the newest data-stream entry queued, from a read or its
    #: doorbell; None until known (after a takeover, until the first read returns entries).
    newest: tuple[int, int] | None = None


class OwnershipRuntime:
    """Runs one service's worker: reads, ownership, per-conversation ordering."""

    def __init__(
        self, settings: CommonSettings, service: Service, redis: aioredis.Redis, metrics_port: int | None = None
    ) -> None:
        self.settings = settings
        self.service = service
        self.redis = redis
        self.keys = settings.keys
        self.worker_id = settings.worker_id
        self.scripts = Scripts()
        self.writer = BatchWriter(redis, self.scripts, bell_key=self.keys.bell_for_key)
        self.table = OwnershipTable(capacity=settings.max_sessions)
        self.live: dict[str, _Live] = {}
        self._key_to_conv: dict[bytes, str] = {}
        self._control_keys = self.keys.controls()
        self._control_bkeys = {k.encode() for k in self._control_keys}
        #: Entries handled since start (published in the heartbeat; Prometheus has the rest).
        self.handled = 0
        #: Data entries taken from their doorbell entry (no read).
        self._from_doorbell = 0
        self.redis_ok = False
        self.started = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.metrics_port = metrics_port
        self._streams_version = 0
        self._data_keys: list[str] | None = None
        self._sweep_cursor = 0
        self._sample_cursor = 0
        #: Last sampled (lag, pending) of each stream this worker reads.
        self._group_load: dict[str, tuple[int, int]] = {}
        #: Owned data streams that rang (or may hold more) since the last read.
        self._dirty: set[str] = set()
        self._control_rung = False
        #: Set by the doorbell listener when something rang; _resync: rings may have been lost.
        self._rang = asyncio.Event()
        self._resync = False
        #: Writer backlog at which reading pauses (and doorbell entries are not taken).
        self._high_water = max(4 * settings.read_count, 1000)
        self._data_kind = stream_kind(service.data_key(self.keys, "x"))
        self._m = RuntimeMeters(service.name, self._data_kind)
        self.writer.on_suppressed = self._m.suppressed.inc
        self._m.capacity.set(settings.max_sessions)

    # --- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop` is called; then drain and hand back."""
        await retry_forever("start-up", self._prepare)
        await retry_forever("heartbeat", self._heartbeat)
        self.redis_ok = True
        self._tasks = [
            asyncio.create_task(self.writer.run(), name="writer"),
            asyncio.create_task(self._refresh_loop(), name="refresher"),
            asyncio.create_task(self._reaper_loop(), name="reaper"),
            asyncio.create_task(self._trim_loop(), name="control-trimmer"),
            asyncio.create_task(self._sample_loop(), name="lag-sampler"),
        ]
        self.started.set()
        log.info(
            "worker %s of %s up: %d session slots, lease %.1fs",
            self.worker_id, self.service.name, self.table.capacity, self.settings.lease_s,
        )
        try:
            await self._read_loop()
        finally:
            await self._shutdown()

    def not_ready_reason(self) -> str | None:
        """Why /readyz should say 503, or None when ready."""
        if not self.started.is_set():
            return "connecting to redis"
        if self.table.draining:
            return "draining"
        if not (self.redis_ok and self.writer.redis_ok):
            return "redis unreachable"
        return None

    def stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stopping: no new conversations; draining in-flight work")
        self.table.draining = True
        self._stopping.set()

    async def _prepare(self) -> None:
        await self.scripts.load(self.redis)
        for key in self._control_keys:
            await ensure_group(self.redis, key, self.service.group)

    # --- reading -------------------------------------------------------------

    def _read_plan(self) -> tuple[object, list[str], int]:
        """(cache key, streams, COUNT) of the next read; the list is rebuilt only
        when the set of owned conversations changed."""
        count = self.settings.read_count
        accepting = self.table.accepting
        if accepting:
            # A read must not hand this worker more conversations than it has slots,
            # nor a whole burst: COUNT is per stream, so this caps the claims of one read.
            count = min(count, self.table.free_slots, self.settings.claim_batch)
        if self._data_keys is None:
            self._data_keys = [live.ctx.data_key for live in self.live.values() if not live.closed]
        streams = (self._control_keys + self._data_keys) if accepting else self._data_keys
        return (self._streams_version, accepting, count), streams, count

    def _streams_changed(self) -> None:
        self._streams_version += 1
        self._data_keys = None

    async def _read_loop(self) -> None:
        reader = GroupReader(self.redis, self.service.group, self.worker_id)
        bell = Doorbell(self.redis, self.keys.bells([self._data_kind, CONTROL_KIND]))
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
            w = self.writer.stats
            log.info(
                "reads: %d returning %d entries; %d entries taken from doorbells; "
                "writes: %d flushes of %d ops (%d coalesced, %d suppressed)",
                reader.reads, reader.entries, self._from_doorbell, w.flushes, w.ops, w.coalesced, w.suppressed,
            )

    async def _listen(self, bell: Doorbell) -> None:
        """Stay parked on the doorbells (a connection of their own), so a ring is
        taken as soon as Redis sends it, also while the read loop is reading or
        handling: under load the loop finds the next streams already rung instead
        of paying a doorbell round trip per cycle."""
        delays = backoff()
        block_ms = int(min(self.settings.read_block_ms / 1000, LISTEN_BLOCK_S) * 1000)
        while not self._stopping.is_set():
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
            if rings and self._on_rings(rings):
                self._rang.set()

    async def _read_with(self, reader: GroupReader) -> None:
        """Read only the owned streams that rang (and the control stream when it
        rang and a slot is free), waiting for the listener when none did; every
        ``sweep_ms`` read everything owned, for writers that do not ring."""
        delays = backoff()
        high_water = self._high_water
        sweep_s = self.settings.sweep_ms / 1000
        next_sweep = 0.0
        full_sweep = True
        while not self._stopping.is_set():
            await self.writer.wait_below(high_water)
            if self._resync:
                self._resync = False
                next_sweep, full_sweep = 0.0, True
            streams: list[str] = []
            try:
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + sweep_s / SWEEP_SLICES
                    if full_sweep:
                        plan_key, streams, count = self._read_plan()
                        full_sweep = False
                    else:
                        plan_key, (streams, count) = None, self._sweep_plan()
                    self._dirty.clear()
                    self._control_rung = False
                    reply = await reader.read(plan_key, streams, count) if streams else []
                else:
                    streams, count = self._rung_plan()
                    if not streams:
                        # Nothing rang since the last read: wait for the listener (or the next sweep).
                        self._rang.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(next_sweep - now):
                                await self._rang.wait()
                        continue
                    self._dirty.clear()
                    self._control_rung = False
                    reply = await reader.read(None, streams, count)
                if not self.redis_ok:
                    log.info("redis is back: reading again")
                self.redis_ok = True
                delays = backoff()
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._recreate_groups(streams)
                    continue
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if self.redis_ok:
                    log.warning("redis unavailable (%s): retrying with backoff", type(exc).__name__)
                self.redis_ok = False
                self._m.redis_errors_read.inc()
                next_sweep, full_sweep = 0.0, True  # rings may have been lost meanwhile
                await asyncio.sleep(next(delays))
                continue
            for key, entries in reply:
                if key in self._control_bkeys:
                    for entry_id, fields in entries:
                        await self._on_control(key.decode(), entry_id.decode(), fields)
                    if len(entries) >= count:
                        self._control_rung = True  # more may be waiting
                else:
                    self._on_data(key, entries)
                    if len(entries) >= count:
                        self._dirty.add(key.decode())

    def _sweep_plan(self) -> tuple[list[str], int]:
        """A slice of the sweep: the next 1/SWEEP_SLICES of the owned streams, the
        control stream when a slot is free, and whatever rang. Sweeping in slices
        keeps each read small, so no one read stalls the loop."""
        streams, count = self._rung_plan(control=True)
        if self._data_keys is None:
            self._data_keys = [live.ctx.data_key for live in self.live.values() if not live.closed]
        owned = self._data_keys
        if owned:
            size = -(-len(owned) // SWEEP_SLICES)
            start = self._sweep_cursor % len(owned)
            chunk = owned[start : start + size]
            self._sweep_cursor = start + size
            seen = set(streams)
            streams += [k for k in chunk if k not in seen]
        return streams, count

    def _rung_plan(self, control: bool = False) -> tuple[list[str], int]:
        """The streams that rang since the last read, and the COUNT to read them with."""
        count = self.settings.read_count
        streams = [k for k in self._dirty if self._key_to_conv.get(k.encode()) is not None]
        if (control or self._control_rung) and self.table.accepting:
            count = min(count, self.table.free_slots, self.settings.claim_batch)
            streams = self._control_keys + streams
        return streams, count

    def _on_rings(self, rings: list[Ring]) -> bool:
        """Queue the owned entries that came with their doorbell; mark the other
        owned streams that rang for a read. True when the read loop has work."""
        may_take = not self._stopping.is_set() and self.writer.backlog < self._high_water
        read = False
        for ring in rings:
            kind = ring.kind
            if kind == self._data_kind:
                taken = self._take_carried(ring) if ring.carried and may_take else ()
                for cid in ring.conversation_ids:
                    live = self.live.get(cid)
                    if live is not None and not live.closed and cid not in taken:
                        self._dirty.add(live.ctx.data_key)
                        read = True
            elif kind == CONTROL_KIND:
                self._control_rung = True
                read = True
        return read

    def _take_carried(self, ring: Ring) -> set[str]:
        """Queue the ring's entries of owned conversations that follow on from the
        newest entry queued (no read needed: the gate consumes them, see
        ``BATCH_SCRIPT``); the conversations fully served that way."""
        gaps: set[str] = set()
        kicks: dict[str, _Live] = {}  # the conversations that took entries
        for item in ring.carried:
            cid = item.conversation_id
            if cid in gaps:
                continue
            live = self.live.get(cid)
            if live is None or live.closed:
                continue
            if live.newest != id_order(item.prev_id):
                gaps.add(cid)  # something came between: read the stream instead
                continue
            live.newest = id_order(item.entry_id)
            self._queue(live, item.entry_id.decode(), item.fields)
            self._m.data_read.inc()
            self._m.data_from_doorbell.inc()
            self._from_doorbell += 1
            kicks[cid] = live
        now = time.monotonic()
        for live in kicks.values():
            live.last_seen_s = now
            self._kick(live)
        return set(kicks) - gaps

    async def _recreate_groups(self, streams: list[str]) -> None:
        """A stream lost its group (expired key, Redis restarted empty): recreate them."""
        for key in streams:
            if await ensure_group(self.redis, key, self.service.group):
                log.warning("recreated consumer group %s on %s", self.service.group, key)

    def _on_data(self, key: bytes, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        conversation_id = self._key_to_conv.get(key)
        live = self.live.get(conversation_id) if conversation_id else None
        if live is None or live.closed:
            # Read just before we lost or closed it; the entries stay pending for the owner.
            return
        for entry_id, fields in entries:
            order = id_order(entry_id)
            if live.newest is not None and order <= live.newest:
                continue  # queued already, from its doorbell
            live.newest = order
            self._queue(live, entry_id.decode(), fields)
            self._m.data_read.inc()
        live.last_seen_s = time.monotonic()
        self._kick(live)  # one drain for the whole read, not one per entry

    @staticmethod
    def _queue(live: _Live, entry_id: str, fields: dict[bytes, bytes]) -> None:
        item: Entry | EntryError
        try:
            item = decode_fields(fields)
        except EntryError as exc:
            item = exc
        live.queue.append((entry_id, item, fields.get(ENTRY_FIELD)))

    def _kick(self, live: _Live) -> None:
        """Run the conversation's queue now; a Task carries on only if a handler
        has to wait (an engine's network or thread), so the loop keeps reading."""
        if live.running or live.closed:
            return
        live.running = True
        try:
            task = start_eagerly(self._drain_session(live), name=f"session:{live.ctx.conversation_id}")
        except Exception:
            # _drain_session handles every failure of an entry; this is a bug in it.
            log.exception("draining %s failed", live.ctx.conversation_id,
                          extra={"conversation_id": live.ctx.conversation_id})
            live.running = False
            return
        if task is not None:  # it had to wait: the Task runs the rest (and clears running)
            live.task = task

    # --- control stream ---------------------------------------------------------

    async def _on_control(
        self, key: str, entry_id: str, fields: dict[bytes, bytes], took_over: bool = False
    ) -> None:
        raw = fields.get(ENTRY_FIELD)
        try:
            entry = decode_fields(fields)
        except EntryError as exc:
            self._dead(key, entry_id, raw, exc.reason)
            return
        if isinstance(entry, ConversationStarted):
            await self._adopt(key, entry_id, entry, took_over=took_over)
        elif isinstance(entry, ConversationEnded):
            await self._relay_ended(key, entry_id, entry, raw)
        else:
            self._dead(key, entry_id, raw, f"type {entry.type!r} does not belong on the control stream")

    async def _adopt(self, control_key: str, entry_id: str, started: ConversationStarted, took_over: bool) -> None:
        conversation_id = started.conversation_id
        data_key = self.service.data_key(self.keys, conversation_id)
        if self.table.owns(conversation_id):
            if self.table.claims[conversation_id].control_entry_id != entry_id:
                self._dead(control_key, entry_id, started.model_dump_json().encode(), "conversation already started")
            return
        created = await retry_forever("create group", lambda: ensure_group(self.redis, data_key, self.service.group))
        if not created and not took_over:
            self._dead(control_key, entry_id, started.model_dump_json().encode(), "conversation already started")
            return
        claim = Claim(conversation_id, control_key, entry_id, took_over=took_over)
        ctx = SessionContext(
            conversation_id=conversation_id,
            started=started,
            took_over=took_over,
            data_key=data_key,
            group=self.service.group,
            worker_id=self.worker_id,
            keys=self.keys,
            settings=self.settings,
            writer=self.writer,
            redis=self.redis,
        )
        live = _Live(ctx=ctx, claim=claim)
        if created:
            # A group this worker just created has consumed nothing: an entry whose
            # doorbell says it is the stream's first can be taken from there.
            live.newest = (0, 0)
        self.table.add(claim)
        self.live[conversation_id] = live
        self._key_to_conv[data_key.encode()] = conversation_id
        self._streams_changed()
        self._m.owned.set(len(self.table.claims))
        if took_over:
            self._m.takeovers.inc()
            log.info("took over conversation %s", conversation_id, extra={"conversation_id": conversation_id})
            await self._claim_pending_data(live)
        # Its stream may already hold entries (their rings came before we owned it).
        self._dirty.add(data_key)
        # Open the session inside its task so a slow upstream never stalls the read loop.
        self._kick(live)

    async def _claim_pending_data(self, live: _Live) -> None:
        """Take a dead owner's unacked data entries and queue them first, in order."""
        key = live.ctx.data_key
        group = self.service.group

        async def pending() -> list[dict[str, Any]]:
            rows = await self.redis.xpending_range(key, group, min="-", max="+", count=100_000)
            return cast(list[dict[str, Any]], rows)

        rows = await retry_forever("list pending", pending)
        if not rows:
            return
        ids = [r["message_id"] for r in rows]
        deliveries = {r["message_id"]: int(r["times_delivered"]) for r in rows}
        claimed = await retry_forever(
            "claim pending", lambda: self.redis.xclaim(key, group, self.worker_id, 0, ids)
        )
        for entry_id_b, fields in claimed:
            if fields is None:  # deleted by trimming while pending
                continue
            entry_id = entry_id_b.decode()
            if deliveries.get(entry_id_b, 0) >= self.settings.max_deliveries:
                live.queue.append((entry_id, EntryError(
                    f"delivered {deliveries[entry_id_b]} times without being handled (poison entry?)"
                ), fields.get(ENTRY_FIELD)))
                continue
            self._queue(live, entry_id, fields)
        if claimed:
            live.newest = id_order(claimed[-1][0])
        log.info("replaying %d pending entries of %s", len(claimed), live.ctx.conversation_id,
                 extra={"conversation_id": live.ctx.conversation_id})

    async def _relay_ended(self, control_key: str, entry_id: str, ended: ConversationEnded, raw: bytes | None) -> None:
        """A control-stream ``ended`` may overtake utterances still in flight, so it
        travels in-band: relayed into the conversation's first data stream."""
        relay = self.service.ended_relay_key(self.keys, ended.conversation_id)
        if relay is None:
            self.writer.ack(control_key, self.service.group, [entry_id])
            return

        async def known() -> bool:
            try:
                groups = await self.redis.xinfo_groups(relay)
            except ResponseError:
                return False
            return any(g["name"] in (self.service.group, self.service.group.encode()) for g in groups)

        if not await retry_forever("check conversation", known):
            self._dead(control_key, entry_id, raw, "conversation.ended for an unknown conversation")
            return
        self.writer.gate(
            control_key, self.service.group, entry_id, relay, ended.model_dump_json().encode(),
            maxlen=self.settings.input_maxlen,
        )

    def _dead(self, stream: str, entry_id: str, raw: bytes | None, reason: str, deliveries: int = 1) -> None:
        self._m.dead(stream).inc()
        dead_letter(
            self.writer, self.settings, stream, self.service.group, self.worker_id, entry_id, raw, reason, deliveries
        )

    # --- per-conversation work ------------------------------------------------------

    async def _drain_session(self, live: _Live) -> None:
        """Handle the queued entries in order (started by :meth:`_kick`, eagerly)."""
        try:
            while live.queue and not live.closed:
                entry_id, item, raw = live.queue[0]
                try:
                    finished = await self._process(live, entry_id, item, raw)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if await self._failed(live, entry_id, item, raw, exc):
                        continue  # retry the same entry
                    finished = False
                live.queue.popleft()
                self.handled += 1
                if entry_id is not None:
                    self._m.handled(item, entry_id)
                if finished:
                    await self._finish(live)
                    return
        finally:
            live.task = None
            live.running = False
            if live.queue and not live.closed and not self._stopping.is_set():
                self._kick(live)

    async def _process(self, live: _Live, entry_id: str | None, item: Entry | EntryError, raw: bytes | None) -> bool:
        ctx = live.ctx
        if isinstance(item, EntryError):
            if entry_id is not None:
                self._dead_data(live, entry_id, None, raw, item.reason)
            return False
        if item.conversation_id != ctx.conversation_id:
            if entry_id is not None:
                self._dead_data(live, entry_id, item, raw, "conversation_id does not match its stream")
            return False
        if not isinstance(item, self.service.data_types):
            if entry_id is not None:
                self._dead_data(live, entry_id, item, raw, f"type {item.type!r} does not belong on {ctx.data_key}")
            return False
        if live.session is None:
            live.session = await self.service.open_session(ctx)
        return await live.session.handle(entry_id, item)

    async def _failed(
        self, live: _Live, entry_id: str | None, item: Entry | EntryError, raw: bytes | None, exc: Exception
    ) -> bool:
        """Count a processing failure; True to retry the entry, False once it is dead-lettered."""
        key = entry_id or "synthetic"
        n = live.failures.get(key, 0) + 1
        if isinstance(exc, EngineError) and not exc.retryable:
            n = max(n, self.settings.max_deliveries)  # e.g. a bad API key: retrying cannot help
        live.failures[key] = n
        cid = live.ctx.conversation_id
        if n < self.settings.max_deliveries:
            log.warning(
                "processing %s failed (%s: %s); attempt %d of %d",
                key, type(exc).__name__, exc, n, self.settings.max_deliveries,
                extra={"conversation_id": cid},
            )
            await asyncio.sleep(min(0.05 * 2**n, 2.0))
            return True
        live.failures.pop(key, None)
        log.error("giving up on %s after %d attempts: %s", key, n, exc, extra={"conversation_id": cid})
        if entry_id is not None:
            entry = None if isinstance(item, EntryError) else item
            self._dead_data(live, entry_id, entry, raw, f"processing failed {n} times: {type(exc).__name__}: {exc}", n)
        return False

    def _dead_data(
        self, live: _Live, entry_id: str, entry: Entry | None, raw: bytes | None, reason: str, deliveries: int = 1
    ) -> None:
        self._dead(live.ctx.data_key, entry_id, raw, reason, deliveries)
        try:
            self.service.on_dead_letter(live.ctx, entry, reason)
        except Exception:
            log.exception("dead-letter hook failed")

    async def _finish(self, live: _Live) -> None:
        """The conversation ended: close, ack our control entry, let its keys expire."""
        cid = live.ctx.conversation_id
        live.closed = True
        await self._close_session(live)
        claim = self.table.remove(cid)
        self.live.pop(cid, None)
        self._key_to_conv.pop(live.ctx.data_key.encode(), None)
        self._streams_changed()
        if claim is not None:
            self.writer.ack(claim.control_key, self.service.group, [claim.control_entry_id])
        for key in self.service.keys_to_expire(self.keys, cid):
            self.writer.expire(key, self.settings.conversation_ttl_s)
        self._m.owned.set(len(self.table.claims))
        log.info("conversation %s finished", cid, extra={"conversation_id": cid})

    async def _close_session(self, live: _Live) -> None:
        if live.session is not None:
            try:
                await live.session.close()
            except Exception:
                log.exception("closing session %s failed", live.ctx.conversation_id,
                              extra={"conversation_id": live.ctx.conversation_id})
            live.session = None

    async def _drop(self, conversation_ids: Iterable[str], why: str) -> None:
        """Forget conversations without acking anything (lost to a peer, or handed back)."""
        for cid in conversation_ids:
            live = self.live.pop(cid, None)
            self.table.remove(cid)
            if live is None:
                continue
            live.closed = True
            self._key_to_conv.pop(live.ctx.data_key.encode(), None)
            self._streams_changed()
            await cancel_and_wait(live.task)
            await self._close_session(live)
            log.warning("released conversation %s: %s", cid, why, extra={"conversation_id": cid})
        self._m.owned.set(len(self.table.claims))

    # --- timers -------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        interval = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._refresh_once()
                await self._heartbeat()
                self._expire_idle()
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("refresh failed")

    async def _refresh_once(self) -> None:
        for control_key, ids in self.table.by_control_key().items():
            for start in range(0, len(ids), REFRESH_CHUNK):
                chunk = ids[start : start + REFRESH_CHUNK]
                lost_raw = await self.scripts.call(
                    self.redis, "refresh", [control_key], [self.service.group, self.worker_id, *chunk]
                )
                lost = [x.decode() if isinstance(x, bytes) else str(x) for x in lost_raw or ()]
                if lost:
                    gone = self.table.lose(control_key, lost)
                    self._m.lost.inc(len(gone))
                    # Put them back so _drop finds them; it removes them from both maps.
                    await self._drop(gone, "a peer took it over (this worker missed its lease)")

    async def _heartbeat(self) -> None:
        key = self.keys.worker(self.service.name, self.worker_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=self.heartbeat_fields())  # type: ignore[arg-type]
        pipe.expire(key, max(3, int(self.settings.lease_s * 3)))
        await pipe.execute()

    def heartbeat_fields(self) -> dict[str, str]:
        """What the monitor shows about this worker (all strings: a Redis hash)."""
        fields = {
            "service": self.service.name,
            "worker_id": self.worker_id,
            "sessions": len(self.table.claims),
            "capacity": self.table.capacity,
            "draining": int(self.table.draining),
            "handled": self.handled,
            "seen_ms": now_ms(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "metrics_port": self.metrics_port if self.metrics_port is not None else "",
        }
        return {k: str(v) for k, v in fields.items()}

    def _expire_idle(self) -> None:
        now = time.monotonic()
        for live in list(self.live.values()):
            if live.closed or live.task is not None or live.queue:
                continue
            if now - live.last_seen_s > self.settings.idle_timeout_s:
                cid = live.ctx.conversation_id
                log.info("conversation %s idle for %.0fs: closing it", cid, now - live.last_seen_s,
                         extra={"conversation_id": cid})
                live.queue.append((None, ConversationEnded(conversation_id=cid, reason="idle"), None))
                self._kick(live)

    async def _reaper_loop(self) -> None:
        interval = min(self.settings.lease_s / 4, 1.0)
        while True:
            await asyncio.sleep(interval)
            if not self.table.accepting:
                continue
            try:
                await self._reap_once()
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("reaper failed")

    async def _reap_once(self) -> None:
        for control_key in self._control_keys:
            cursor = "0-0"
            while self.table.accepting:
                reply = await self.redis.xautoclaim(
                    control_key, self.service.group, self.worker_id,
                    min_idle_time=self.settings.lease_ms, start_id=cursor, count=self.table.free_slots,
                )
                cursor_b, claimed = reply[0], reply[1]
                for entry_id, fields in claimed:
                    if fields is None:
                        continue
                    await self._on_control(control_key, entry_id.decode(), fields, took_over=True)
                cursor = cursor_b.decode() if isinstance(cursor_b, bytes) else str(cursor_b)
                if cursor == "0-0" or not claimed:
                    break

    async def _trim_loop(self) -> None:
        """Trim consumed entries off the control streams (never a live claim)."""
        while True:
            await asyncio.sleep(max(5.0, self.settings.lease_s))
            try:
                for key in self._control_keys:
                    await self._trim_control(key)
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("control trim failed")

    async def _trim_control(self, key: str) -> None:
        groups = await self.redis.xinfo_groups(key)
        names = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"] for g in groups}
        if not {keynames.TRANSCRIBER_GROUP, keynames.CONVERSATION_GROUP} <= names:
            await self.redis.xtrim(key, maxlen=self.settings.control_maxlen, approximate=True)
            return
        floor: str | None = None
        for g in groups:
            name = g["name"]
            candidates = [g["last-delivered-id"]]
            if g["pending"]:
                summary = await self.redis.xpending(key, name)
                candidates.append(summary["min"])
            for c in candidates:
                cid = c.decode() if isinstance(c, bytes) else str(c)
                if floor is None or id_order(cid) < id_order(floor):
                    floor = cid
        if floor and floor != "0-0":
            await self.redis.xtrim(key, minid=floor)
        await self.redis.xtrim(key, maxlen=self.settings.control_maxlen, approximate=True)

    async def _sample_loop(self) -> None:
        """Consumer-group lag and pending of the streams this worker reads (sampled)."""
        while True:
            await asyncio.sleep(5.0)
            try:
                await self._sample_once()
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("lag sampling failed")

    async def _sample_once(self) -> None:
        """Refresh the lag/pending of the control streams and of the next
        SAMPLE_STREAMS owned streams (rotating), then publish the sums. A worker
        with thousands of conversations thus spends a bounded time per tick."""
        group = self.service.group
        owned = [live.ctx.data_key for live in self.live.values() if not live.closed]
        start = self._sample_cursor % len(owned) if owned else 0
        chunk = owned[start : start + SAMPLE_STREAMS]
        self._sample_cursor = start + len(chunk)
        keys = list(self._control_keys) + chunk
        # Small pipelines with a yield between them: parsing hundreds of XINFO
        # replies at once would stall the read loop for milliseconds (a p99 spike).
        for start_at in range(0, len(keys), SAMPLE_PIPELINE):
            part = keys[start_at : start_at + SAMPLE_PIPELINE]
            pipe = self.redis.pipeline(transaction=False)
            for key in part:
                pipe.xinfo_groups(key)
            replies = await pipe.execute(raise_on_error=False)
            for key, groups in zip(part, replies, strict=True):
                if isinstance(groups, Exception):
                    continue
                for g in groups:
                    name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                    if name == group:
                        self._group_load[key] = (int(g.get("lag") or 0), int(g.get("pending") or 0))
            await asyncio.sleep(0)
        live_keys = set(owned) | set(self._control_keys)
        totals: dict[str, list[int]] = {}
        for key in list(self._group_load):
            if key not in live_keys:
                del self._group_load[key]
                continue
            lag, pending = self._group_load[key]
            t = totals.setdefault(stream_kind(key), [0, 0])
            t[0] += lag
            t[1] += pending
        for kind in ("control", self._data_kind):
            lag, pending = totals.get(kind, [0, 0])
            self._m.lag(kind).set(lag)
            self._m.pending(kind).set(pending)

    # --- shutdown -----------------------------------------------------------------

    async def _shutdown(self) -> None:
        self.table.draining = True
        deadline = time.monotonic() + self.settings.drain_timeout_s
        busy = [live.task for live in self.live.values() if live.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=max(0.0, deadline - time.monotonic()))
        for live in list(self.live.values()):
            await cancel_and_wait(live.task)
        try:
            await asyncio.wait_for(self.writer.flushed(), timeout=max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            log.error("writes still pending at shutdown; their entries stay pending for a peer")
        await self._hand_back()
        for task in self._tasks:
            await cancel_and_wait(task)
        await self.writer.aclose()
        try:
            await self.redis.delete(self.keys.worker(self.service.name, self.worker_id))
        except Exception as exc:
            if not is_transient(exc):
                raise

    async def _hand_back(self) -> None:
        """Make every owned control entry claimable by a peer right now."""
        claims = list(self.table.claims.values())
        if not claims:
            return
        idle_ms = self.settings.lease_ms * 1000
        try:
            pipe = self.redis.pipeline(transaction=False)
            for claim in claims:
                pipe.xclaim(
                    claim.control_key, self.service.group, self.worker_id, 0, [claim.control_entry_id],
                    idle=idle_ms, justid=True,
                )
            await pipe.execute()
            self._m.handbacks.inc(len(claims))
            log.info("handed back %d conversations", len(claims))
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.error("could not hand back (redis away): peers take over after the lease")
        await self._drop([c.conversation_id for c in claims], "handed back on shutdown")
