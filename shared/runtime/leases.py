"""Leases: how a worker comes to own a conversation, keeps it, and gives it up.

- Claim: a ``conversation.started`` delivered to this worker's group read makes
  it the owner; the control entry stays pending (unacked) while it owns it.
- Refresh: every ``lease_s / 3`` a script re-claims the control entries this
  worker still holds (a peer may have taken some while this worker was paused:
  those are dropped here, never stolen back). Every write of a conversation is
  fenced by its claim (``shared.bus.program.Fence``): one refused for a claim a
  peer holds drops the conversation here too (``lose``), often before the refresh.
- Reap: control entries idle for longer than ``lease_s`` belong to a dead
  worker; XAUTOCLAIM takes them, and the new owner claims that conversation's
  pending data entries and replays them first, in order: a page at a time, as
  its queue has room (the drain asks for each page), before it reads new ones.
- Finish: the conversation ended; ack the control entry, let its keys expire.
- Hand back (SIGTERM): set the idle time of every owned control entry past the
  lease, so a peer's reaper takes each on its next pass (``set_idle``; the
  rebalancer hands back single conversations the same way: balancer.py).
- Resume all (Redis restarted): Redis may have lost its last second, so what the
  worker remembers may be ahead of what Redis kept; every owned conversation is
  resumed from Redis as after a takeover (``resume_all``).

See docs/architecture.md ("Ownership and takeover").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from redis.exceptions import ResponseError

from shared.bus.groups import ensure_group
from shared.bus.program import Fence
from shared.bus.resp import StreamEntries, server_run_id
from shared.bus.retry import is_transient, retry_forever
from shared.bus.writer import FencedWriter
from shared.models import ENTRY_FIELD, ConversationEnded, ConversationStarted, EntryError, decode_fields
from shared.ownership import Claim
from shared.runtime.context import WorkerContext
from shared.runtime.conversations import Live
from shared.runtime.drain import Drainer
from shared.service import SessionContext
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Control entries re-claimed per refresh script call: each call holds Redis for
#: its whole length (an XPENDING and an XCLAIM per entry), so keep calls short.
REFRESH_CHUNK = 100
#: Most pending data entries listed and claimed at once after a takeover (the queue's
#: room may make a page smaller: QueueLimits.read_count).
CLAIM_PAGE = 200


class Leases:
    def __init__(self, w: WorkerContext, drainer: Drainer, read_soon: Callable[[str], None]) -> None:
        self._w = w
        self._drainer = drainer
        #: Asks the reader to read a stream at its next step (a conversation just adopted).
        self._read_soon = read_soon

    # --- claiming ---------------------------------------------------------------

    async def on_control(self, key: str, entry_id: str, fields: dict[bytes, bytes], took_over: bool = False) -> None:
        """A control-stream entry delivered to this worker (by its group read or the reaper)."""
        raw = fields.get(ENTRY_FIELD)
        try:
            entry = decode_fields(fields)
        except EntryError as exc:
            self._w.dead(key, entry_id, raw, exc.reason)
            return
        if isinstance(entry, ConversationStarted):
            await self._adopt(key, entry_id, entry, took_over=took_over)
        elif isinstance(entry, ConversationEnded):
            await self._relay_ended(key, entry_id, entry, raw)
        else:
            self._w.dead(key, entry_id, raw, f"type {entry.type!r} does not belong on the control stream")

    async def _adopt(self, control_key: str, entry_id: str, started: ConversationStarted, took_over: bool) -> None:
        w = self._w
        conversation_id = started.conversation_id
        data_key = w.service.data_key(w.keys, conversation_id)
        table = w.owned.table
        if table.owns(conversation_id):
            if table.claims[conversation_id].control_entry_id != entry_id:
                w.dead(control_key, entry_id, started.model_dump_json().encode(), "conversation already started")
            return
        try:
            created = await retry_forever("create group", lambda: ensure_group(w.redis, data_key, w.group),
                                          on_error=w.redis_failed)
        except ResponseError as exc:  # e.g. WRONGTYPE: the stream's name holds another type
            w.dead(control_key, entry_id, started.model_dump_json().encode(), f"cannot own {data_key}: {exc}")
            return
        if not created and not took_over:
            w.dead(control_key, entry_id, started.model_dump_json().encode(), "conversation already started")
            return
        # Every write of this conversation is fenced by this claim: none lands once a peer holds it.
        writer = FencedWriter(w.writer, Fence(control_key, w.group, w.worker_id, entry_id))
        ctx = SessionContext(
            conversation_id=conversation_id, started=started, took_over=took_over, data_key=data_key,
            group=w.group, worker_id=w.worker_id, keys=w.keys, settings=w.settings, writer=writer, redis=w.redis,
        )
        # Taken over: the previous owner's pending entries come first (the drain claims
        # them page by page; meanwhile the stream is not read).
        live = Live(ctx=ctx, claim=Claim(conversation_id, control_key, entry_id, took_over=took_over),
                    replay="-" if took_over else None)
        w.owned.add(live)
        w.meters.owned.set(len(table.claims))
        if took_over:
            w.meters.takeovers.inc()
            log.info("took over conversation %s", conversation_id, extra={"conversation_id": conversation_id})
        else:
            # Its stream may already hold entries (their rings came before we owned it).
            self._read_soon(data_key)
        # Open the session inside its task so a slow upstream never stalls the read loop.
        self._drainer.kick(live)

    async def claim_pending_page(self, live: Live) -> None:
        """Claim the next page of a taken-over conversation's pending entries (the
        previous owner's, delivered and never acked) and queue them, in stream order:
        XPENDING from where the last page ended, then XCLAIM. A page is at most what
        the queue has room for; the drain asks for the next one as the queue drains.
        Once a page comes back short, every pending entry was claimed and the stream
        is read again from where the group is (``>``). Entries acked meanwhile (by a
        zombie owner) are not returned by XCLAIM, and nothing past the last listed
        id is skipped."""
        w = self._w
        key = live.ctx.data_key
        start = live.replay or "-"
        count = w.owned.limits.read_count(CLAIM_PAGE)
        rows = await retry_forever("list pending", lambda: self.pending(key, start, count), on_error=w.redis_failed)
        if rows:
            claimed = await retry_forever("claim pending", lambda: self._claim_into(live, rows, min_idle_ms=0),
                                          on_error=w.redis_failed)
            live.replayed += claimed
            live.last_seen_s = time.monotonic()
            last = rows[-1]["message_id"]
            live.replay = "(" + (last.decode() if isinstance(last, bytes) else str(last))
        if len(rows) < count:
            live.replay = None
            if live.replayed:
                log.info("replayed %d pending entries of %s", live.replayed, live.conversation_id,
                         extra={"conversation_id": live.conversation_id})
            self._read_soon(key)

    async def pending(self, key: str, start: str, count: int, idle_ms: int | None = None) -> list[dict[str, Any]]:
        """XPENDING rows of ``key`` from ``start`` (any consumer; ``idle_ms``: only those
        idle that long). [] when the stream lost its group (Redis restarted empty)."""
        try:
            rows = await self._w.redis.xpending_range(key, self._w.group, min=start, max="+", count=count,
                                                      idle=idle_ms)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return []
            raise
        return cast(list[dict[str, Any]], rows)

    async def _claim_into(self, live: Live, rows: list[dict[str, Any]], min_idle_ms: int) -> int:
        """XCLAIM the listed entries (those still idle ``min_idle_ms``; acked ones are not
        returned) and queue them in order; one delivered ``max_deliveries`` times already
        is queued as a poison entry (dead-lettered when its turn comes). How many came."""
        w = self._w
        ids = [r["message_id"] for r in rows]
        deliveries = {r["message_id"]: int(r["times_delivered"]) for r in rows}
        claimed = cast(StreamEntries, await w.redis.xclaim(live.ctx.data_key, w.group, w.worker_id, min_idle_ms, ids))
        for entry_id_b, fields in claimed:
            if fields is None:  # deleted by trimming while pending
                continue
            entry_id = entry_id_b.decode()
            if deliveries.get(entry_id_b, 0) >= w.settings.max_deliveries:
                live.push((entry_id, EntryError(
                    f"delivered {deliveries[entry_id_b]} times without being handled (poison entry?)"
                ), fields.get(ENTRY_FIELD)))
                continue
            self._drainer.queue(live, entry_id, fields)
        return len(claimed)

    async def reclaim_stuck_once(self) -> None:
        """Entries delivered and never gated, left pending: a batch dropped after an
        error, an ack lost with a Redis crash, or what a zombie owner read after a
        takeover. For each owned conversation with nothing queued or running, and
        only while the writer has nothing unwritten (so no gate of ours is on its
        way), claim the entries of its stream pending for longer than
        ``stuck_after_s`` (any consumer's; XCLAIM's min-idle guards a race with a
        fresh read) and handle them again: the gate keeps their effects exactly-once."""
        w = self._w
        if w.writer.backlog or not w.writer.redis_ok or not w.redis_ok or not w.claims_confirmed():
            return
        if await server_run_id(w.redis) != w.run_id:
            return  # Redis restarted and the reader has not resumed from it yet: this memory is stale
        idle_ms = int(w.settings.stuck_after_s * 1000)
        for live in list(w.owned.live.values()):
            if live.closed or live.task is not None or live.queue or live.replay is not None:
                continue
            rows = await self.pending(live.ctx.data_key, "-", w.owned.limits.read_count(CLAIM_PAGE), idle_ms)
            if not rows or live.closed or live.task is not None or live.queue:
                continue
            claimed = await self._claim_into(live, rows, min_idle_ms=idle_ms)
            if not claimed:
                continue
            log.warning("re-claimed %d entries of %s pending for over %.0fs", claimed, live.conversation_id,
                        w.settings.stuck_after_s, extra={"conversation_id": live.conversation_id})
            w.meters.reclaimed.inc(claimed)
            self._drainer.kick(live)

    async def _relay_ended(self, control_key: str, entry_id: str, ended: ConversationEnded, raw: bytes | None) -> None:
        """A control-stream ``ended`` may overtake utterances still in flight, so it
        travels in-band: relayed into the conversation's first data stream."""
        w = self._w
        relay = w.service.ended_relay_key(w.keys, ended.conversation_id)
        if relay is None:
            w.writer.ack(control_key, w.group, [entry_id])
            return

        async def known() -> bool:
            try:
                groups = await w.redis.xinfo_groups(relay)
            except ResponseError:
                return False
            return any(g["name"] in (w.group, w.group.encode()) for g in groups)

        if not await retry_forever("check conversation", known, on_error=w.redis_failed):
            w.dead(control_key, entry_id, raw, "conversation.ended for an unknown conversation")
            return
        w.writer.gate(control_key, w.group, entry_id, relay, ended.model_dump_json().encode(),
                      maxlen=w.settings.input_maxlen)

    # --- keeping ------------------------------------------------------------------

    async def refresh_once(self) -> None:
        w = self._w
        for control_key, ids in w.owned.table.by_control_key().items():
            for start in range(0, len(ids), REFRESH_CHUNK):
                chunk = ids[start : start + REFRESH_CHUNK]
                lost_raw = await w.scripts.call(w.redis, "refresh", [control_key], [w.group, w.worker_id, *chunk])
                lost = [x.decode() if isinstance(x, bytes) else str(x) for x in lost_raw or ()]
                if lost:
                    # Shielded: a refresh cut short by its timeout must not leave a conversation half dropped.
                    await asyncio.shield(self.lose(control_key, lost))

    async def lose(self, control_key: str, entry_ids: list[str]) -> None:
        """Peers hold these claims now (this worker missed its lease): forget their conversations."""
        gone = self._w.owned.table.lose(control_key, entry_ids)
        self._w.meters.lost.inc(len(gone))
        await self.drop(gone, "a peer took it over (this worker missed its lease)")

    async def fenced(self, fence: Fence) -> None:
        """A write behind ``fence`` was refused: a peer holds that claim now. Forget the
        conversation it belongs to, if this worker still has it (and by that very claim)."""
        for live in list(self._w.owned.live.values()):
            if live.ctx.writer.fence is fence:
                log.warning("a write of conversation %s was refused: a peer holds its claim",
                            live.conversation_id, extra={"conversation_id": live.conversation_id})
                await self.lose(fence.control_key, [fence.entry_id])
                return

    async def reap_once(self) -> None:
        """Take over the conversations of workers that stopped refreshing their claims."""
        w = self._w
        table = w.owned.table
        for control_key in w.keys.controls():
            cursor = "0-0"
            while table.accepting:
                reply = await w.redis.xautoclaim(
                    control_key, w.group, w.worker_id,
                    min_idle_time=w.settings.lease_ms, start_id=cursor, count=table.free_slots,
                )
                cursor_b, claimed = reply[0], reply[1]
                for entry_id, fields in claimed:
                    if fields is None:
                        continue
                    await self.on_control(control_key, entry_id.decode(), fields, took_over=True)
                cursor = cursor_b.decode() if isinstance(cursor_b, bytes) else str(cursor_b)
                if cursor == "0-0" or not claimed:
                    break

    async def resume_all(self) -> None:
        """Resume every owned conversation from what Redis kept, as after a takeover:
        stop its session, let what it queued be written, then replay its pending
        entries from the first, in order, and reopen the session (the conversation
        service rebuilds its history from the streams). Redis restarted: with
        ``appendfsync everysec`` a host crash loses up to a second of writes, acks and
        deliveries among them, so an answer this worker remembers may be gone while
        its transcript is delivered again (and would be taken for answered), and an
        entry handled but no longer acked would be left pending behind newer ones."""
        w = self._w
        lives = [live for live in w.owned.live.values() if not live.closed]
        for live in lives:
            live.clear()  # first: a cancelled drain starts again by itself when it has work left
            await cancel_and_wait(live.task)
            await self._drainer.close_session(live)
        await w.writer.flushed()
        for live in lives:
            if live.closed:  # lost meanwhile (its claim may have gone with the lost second)
                continue
            live.clear()
            live.replay = "-"  # its pending entries first, from the first
            live.ctx.took_over = True  # the session's state from the streams
            self._drainer.kick(live)
        log.warning("resumed %d conversations from what redis kept", len(lives))

    # --- giving up ------------------------------------------------------------------

    async def finish(self, live: Live) -> None:
        """The conversation ended: close, let its keys expire, ack our control entry
        (in that order: both are fenced by the claim that the ack releases)."""
        w = self._w
        cid = live.conversation_id
        _, claim = w.owned.remove(cid)
        await self._drainer.close_session(live)
        for key in w.service.keys_to_expire(w.keys, cid):
            live.ctx.writer.expire(key, w.settings.conversation_ttl_s)
        if claim is not None:
            live.ctx.writer.ack(claim.control_key, w.group, [claim.control_entry_id])
        w.meters.owned.set(len(w.owned.table.claims))
        log.info("conversation %s finished", cid, extra={"conversation_id": cid})

    async def reject(self, data_key: str, reason: str) -> None:
        """An owned conversation's stream cannot be read (its name holds another type):
        dead-letter its claim with the reason, which releases it for good, and forget it."""
        w = self._w
        live = w.owned.by_data_key(data_key.encode())
        if live is None:
            return
        claim = live.claim
        log.error("giving up conversation %s: %s", live.conversation_id, reason,
                  extra={"conversation_id": live.conversation_id})
        # Fenced by the claim it releases, behind a fence of its own: drop() stops the rest.
        release = FencedWriter(w.writer, Fence(claim.control_key, w.group, w.worker_id, claim.control_entry_id))
        w.dead(claim.control_key, claim.control_entry_id, None, reason, writer=release)
        await self.drop([live.conversation_id], reason)

    async def drop(self, conversation_ids: Iterable[str], why: str) -> None:
        """Forget conversations without acking anything (lost to a peer, or handed back)."""
        w = self._w
        for cid in conversation_ids:
            live, _ = w.owned.remove(cid)
            if live is None:
                continue
            live.ctx.writer.fence.lost = True  # what it still has queued is no longer ours to write
            await cancel_and_wait(live.task)
            await self._drainer.close_session(live)
            log.warning("released conversation %s: %s", cid, why, extra={"conversation_id": cid})
        w.meters.owned.set(len(w.owned.table.claims))

    async def hand_back(self) -> None:
        """Make every owned control entry claimable by a peer right now."""
        w = self._w
        claims = list(w.owned.table.claims.values())
        if not claims:
            return
        # Idle past the lease (a reaper takes entries idle for lease_ms), with a margin for clock
        # steps between this call and the reaper's.
        if await self.set_idle(claims, 2 * w.settings.lease_ms):
            w.meters.handbacks.inc(len(claims))
            log.info("handed back %d conversations", len(claims))
        else:
            log.error("could not hand back (redis away): peers take over after the lease")
        await self.drop([c.conversation_id for c in claims], "handed back on shutdown")

    async def set_idle(self, claims: list[Claim], idle_ms: int) -> bool:
        """Set these owned control entries' idle time (XCLAIM to ourselves, IDLE): a
        reaper takes an entry idle past the lease. False when Redis is away."""
        w = self._w
        if not claims:
            return True
        try:
            pipe = w.redis.pipeline(transaction=False)
            for claim in claims:
                pipe.xclaim(claim.control_key, w.group, w.worker_id, 0, [claim.control_entry_id],
                            idle=idle_ms, justid=True)
            await pipe.execute()
            return True
        except Exception as exc:
            if not is_transient(exc):
                raise
            return False
