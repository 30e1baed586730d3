"""The per-conversation drain: each owned conversation's entries are handled
one at a time, in stream order, by a task that exists only while the
conversation has work. A failing entry is retried a few times, then
dead-lettered: nothing is acked without a trace, and no entry stalls the others.

The queue is bounded (``QueueLimits``): the reader leaves a conversation whose
queue is over the low-water mark out of its reads, and the drain asks for it to
be read again (``on_room``) when its queue drains back to the mark. After a
takeover the drain first claims the previous owner's pending entries, a page at
a time as room allows (``refill``), before the conversation is read again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shared.engines.base import EngineError
from shared.models import ENTRY_FIELD, Entry, EntryError, decode_fields
from shared.runtime.context import WorkerContext
from shared.runtime.conversations import Live

log = logging.getLogger(__name__)


class Drainer:
    def __init__(
        self,
        w: WorkerContext,
        on_finished: Callable[[Live], Awaitable[None]],
        on_room: Callable[[Live], None],
        refill: Callable[[Live], Awaitable[None]],
    ) -> None:
        self._w = w
        #: Called once a conversation's session says it ended (release it).
        self._on_finished = on_finished
        #: Called when a queue drains back to the low-water mark (read it again).
        self._on_room = on_room
        #: Claims the next page of a taken-over conversation's pending entries into its queue.
        self._refill = refill
        #: Entries handled since start (published in the heartbeat; Prometheus has the rest).
        self.handled = 0
        #: The service's optional look at each entry as it is queued (before its turn).
        self._on_queued = getattr(w.service, "on_queued", None)

    def queue(self, live: Live, entry_id: str, fields: dict[bytes, bytes]) -> None:
        """Queue one data entry as read (decoded now: a bad one is dead-lettered in turn)."""
        item: Entry | EntryError
        try:
            item = decode_fields(fields)
        except EntryError as exc:
            item = exc
        live.push((entry_id, item, fields.get(ENTRY_FIELD)))
        if self._on_queued is not None and not isinstance(item, EntryError):
            self._on_queued(live.ctx, item)

    def kick(self, live: Live) -> None:
        """Make sure the conversation's queue is being worked through. A task that is
        done counts as none: one cancelled before it started never ran its ``finally``
        (``Leases.resume_all`` and the rebalancer cancel drains that may not have started)."""
        if (live.task is None or live.task.done()) and not live.closed and not live.moving:
            live.task = asyncio.create_task(self._drain(live), name=f"session:{live.conversation_id}")

    async def _drain(self, live: Live) -> None:
        limits = self._w.owned.limits
        try:
            while not live.closed and not live.moving:
                if live.replay is not None and live.has_room(limits) and not self._w.stopping.is_set():
                    await self._replay_page(live)
                    continue
                if not live.queue:
                    break
                entry_id, item, raw = live.queue[0]
                live.handling = True
                try:
                    finished = await self._process(live, entry_id, item, raw)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if await self._failed(live, entry_id, item, raw, exc):
                        continue  # retry the same entry
                    finished = False
                full = not live.has_room(limits)
                live.pop()
                live.handling = False
                if full and live.replay is None and live.has_room(limits):
                    self._on_room(live)  # back to the low-water mark: read it again
                self.handled += 1
                if entry_id is not None:
                    self._w.meters.handled(item, entry_id)
                if finished:
                    live.task = None  # this task ends here; the release must not wait for it
                    await self._on_finished(live)
                    return
        finally:
            live.handling = False
            if live.task is asyncio.current_task():
                live.task = None
                if (live.queue or live.replay is not None) and not live.closed and not self._w.stopping.is_set():
                    self.kick(live)

    async def _replay_page(self, live: Live) -> None:
        try:
            await self._refill(live)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not a transient Redis error (those are retried inside): try again, slowly.
            log.exception("claiming the pending entries of %s failed", live.conversation_id,
                          extra={"conversation_id": live.conversation_id})
            await asyncio.sleep(1.0)

    async def _process(self, live: Live, entry_id: str | None, item: Entry | EntryError, raw: bytes | None) -> bool:
        ctx = live.ctx
        if isinstance(item, EntryError):
            if entry_id is not None:
                self._dead_data(live, entry_id, None, raw, item.reason)
            return False
        if item.conversation_id != ctx.conversation_id:
            if entry_id is not None:
                self._dead_data(live, entry_id, item, raw, "conversation_id does not match its stream")
            return False
        if not isinstance(item, self._w.service.data_types):
            if entry_id is not None:
                self._dead_data(live, entry_id, item, raw, f"type {item.type!r} does not belong on {ctx.data_key}")
            return False
        if live.session is None:
            live.session = await self._w.service.open_session(ctx)
        return await live.session.handle(entry_id, item)

    async def _failed(
        self, live: Live, entry_id: str | None, item: Entry | EntryError, raw: bytes | None, exc: Exception
    ) -> bool:
        """Count a processing failure; True to retry the entry, False once it is dead-lettered."""
        max_deliveries = self._w.settings.max_deliveries
        key = entry_id or "synthetic"
        n = live.failures.get(key, 0) + 1
        if isinstance(exc, EngineError) and not exc.retryable:
            n = max(n, max_deliveries)  # e.g. a bad API key: retrying cannot help
        live.failures[key] = n
        cid = live.conversation_id
        if n < max_deliveries:
            log.warning(
                "processing %s failed (%s: %s); attempt %d of %d",
                key, type(exc).__name__, exc, n, max_deliveries, extra={"conversation_id": cid},
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
        self, live: Live, entry_id: str, entry: Entry | None, raw: bytes | None, reason: str, deliveries: int = 1
    ) -> None:
        self._w.dead(live.ctx.data_key, entry_id, raw, reason, deliveries, writer=live.ctx.writer)
        try:
            self._w.service.on_dead_letter(live.ctx, entry, reason)
        except Exception:
            log.exception("dead-letter hook failed")

    async def close_session(self, live: Live) -> None:
        if live.session is not None:
            try:
                await live.session.close()
            except Exception:
                log.exception("closing session %s failed", live.conversation_id,
                              extra={"conversation_id": live.conversation_id})
            live.session = None
