"""Rebalancing's I/O: read the peers' heartbeats, hand back conversations between
turns, and take handed-back ones. What to do is decided by
``shared/runtime/rebalance.py`` (pure); saturation by ``saturation.py``.

- Every ``LEASE_S / 2`` a round reads the peers' heartbeats (through the
  service's registry: one ZRANGE and one HGETALL per peer) and plans. A worker
  that should shed stops claiming new conversations (``taking_new``), and, at
  most once per lease, hands back that many conversations that are between
  turns (``shed``).
- With REBALANCE on, this is the reaper (``reap_once`` instead of the
  XAUTOCLAIM of ``Leases.reap_once``): XPENDING lists the control entries idle
  past the lease, ``pick_claims`` says which to take, XCLAIM with the lease as
  min-idle takes them (a peer that was faster keeps its own).

The views stay close to the truth around a move: a shedder publishes its
heartbeat after forgetting what it hands back and before handing it back, a
taker right after taking; and a reaper that sees handed-back claims re-reads
the heartbeats and counts each shedder's offer from the claims themselves.

See docs/architecture.md ("Rebalancing").
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, cast

from shared.bus.resp import StreamEntries
from shared.bus.retry import is_transient
from shared.models import now_ms
from shared.ownership import Claim
from shared.runtime.context import WorkerContext
from shared.runtime.conversations import Live
from shared.runtime.drain import Drainer
from shared.runtime.leases import Leases
from shared.runtime.rebalance import (
    HOLD_LEASES,
    SHED_IDLE_MS,
    Load,
    PendingClaim,
    Plan,
    Policy,
    ShedMemory,
    live_peers,
    pick_claims,
    plan,
)
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Idle control entries listed per XPENDING call of a reaper pass, and at most per pass.
REAP_PAGE = 100
REAP_ROWS = 2000
#: Most of its own handed-back claims a worker counts (per control stream).
COUNT_HANDED_BACK = 10_000
#: Registry members older than this many heartbeat lifetimes are dropped from it.
PRUNE_AFTER_LEASES = 30
#: A conversation adopted less than this many leases ago is handed back last.
SETTLE_LEASES = 3


class Balancer:
    def __init__(
        self, w: WorkerContext, leases: Leases, drainer: Drainer, heartbeat: Callable[[], Awaitable[None]]
    ) -> None:
        self._w = w
        self._leases = leases
        self._drainer = drainer
        #: Publishes this worker's heartbeat now (around a move, so peers see it at once).
        self._heartbeat = heartbeat
        self.policy = Policy.from_settings(w.settings)
        #: What this worker handed back lately (it takes none of it back meanwhile).
        self.memory = ShedMemory(hold_s=HOLD_LEASES * w.settings.lease_s)
        #: The peers' heartbeats as last read, and when (monotonic).
        self.peers: list[Load] = []
        self._peers_read_s = float("-inf")
        #: The last hand-back, and the last take of handed-back conversations (monotonic): at
        #: most one hand-back per lease, none within a lease of a take (the heartbeats show each
        #: move before the next is planned); a saturated worker waits only for its last hand-back.
        self._last_shed_s = float("-inf")
        self._last_take_s = float("-inf")

    @property
    def interval_s(self) -> float:
        return self._w.settings.lease_s / 2

    def me(self) -> Load:
        """This worker's load now (its own count is never stale)."""
        w = self._w
        table = w.owned.table
        now = time.monotonic()
        return Load(w.worker_id, len(table.claims), table.capacity, w.queue_delay.saturated(now), table.draining,
                    now_ms(), w.handed_back, w.queue_delay.overloaded(now))

    def plan(self, offered: Mapping[str, int] | None = None) -> Plan:
        """This worker's plan now. ``offered``: what each worker has handed back and nobody
        took yet, as the claims say (else as the heartbeats say)."""
        me, peers = self.me(), self.peers
        if offered is not None:
            me = replace(me, handed_back=offered.get(me.worker_id, 0))
            peers = [replace(p, handed_back=offered.get(p.worker_id, 0)) for p in peers]
        return plan(me, peers, now_ms(), self.policy)

    # --- the peers ---------------------------------------------------------------

    async def read_peers(self) -> None:
        """The heartbeats of the service's workers that wrote one lately (the registry
        lists them; a hash that expired meanwhile is skipped), this one's included."""
        w = self._w
        registry = w.keys.workers(w.service.name)
        now = now_ms()
        lifetime_ms = 3 * w.settings.lease_ms  # a heartbeat hash's expiry
        pipe = w.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(registry, "-inf", now - PRUNE_AFTER_LEASES * lifetime_ms)
        pipe.zrangebyscore(registry, now - lifetime_ms, "+inf")
        _, members = await pipe.execute()
        pipe = w.redis.pipeline(transaction=False)
        for member in members:
            worker_id = member.decode() if isinstance(member, bytes) else str(member)
            pipe.hgetall(w.keys.worker(w.service.name, worker_id))
        hashes = await pipe.execute() if members else []
        peers = []
        for raw in hashes:
            fields = {_text(k): _text(v) for k, v in cast(dict[Any, Any], raw).items()}
            load = Load.from_heartbeat(fields)
            if load is not None:
                peers.append(load)
        self.peers = peers
        self._peers_read_s = time.monotonic()

    # --- handing back -------------------------------------------------------------

    async def round(self) -> None:
        """One rebalancing round: read the peers, plan, hand back what the plan says."""
        w = self._w
        if w.owned.table.draining or w.stopping.is_set():
            return
        await self.read_peers()
        await self._count_handed_back()
        planned = self.plan()
        me = self.me()
        # New conversations are left to the peers while this worker should hand some back, or
        # is saturated and a peer with a free slot is not (when none is, someone must take them).
        peers = live_peers(me, self.peers, now_ms(), self.policy.lease_ms)
        w.taking_new = planned.shed == 0 and not (
            me.saturated and any(not p.saturated and p.sessions < p.capacity for p in peers))
        since_s = time.monotonic() - max(self._last_shed_s,
                                         self._last_take_s if planned.reason != "saturated" else float("-inf"))
        if not planned.shed or since_s < w.settings.lease_s:
            return
        lives = await self._between_turns(planned.shed, busiest_first=planned.reason == "saturated")
        if not lives:
            return
        claims = await self.shed(lives, self._why(planned))
        now = time.monotonic()
        for claim in claims:
            self.memory.add(claim.control_key, claim.control_entry_id, now)
        if claims:
            self._last_shed_s = now

    def _why(self, planned: Plan) -> str:
        if planned.reason == "saturated":
            delay_s = self._w.queue_delay.median_s(time.monotonic())
            delay = "?" if delay_s is None else f"{delay_s * 1000:.0f}"
            return f"saturated: queue delay {delay} ms; keeps {planned.fair:.0f}"
        workers = 1 + len(live_peers(self.me(), self.peers, now_ms(), self.policy.lease_ms))
        return f"{planned.reason}; fair share {planned.fair:.1f} of {workers} workers"

    async def _count_handed_back(self) -> None:
        """How many of what this worker handed back no peer took yet: its control entries
        still pending for it with the hand-back's idle time (none when it shed nothing lately)."""
        w = self._w
        if not len(self.memory):
            w.handed_back = 0
            return
        pipe = w.redis.pipeline(transaction=False)
        for control_key in w.keys.controls():
            pipe.xpending_range(control_key, w.group, min="-", max="+", count=COUNT_HANDED_BACK, idle=SHED_IDLE_MS,
                                consumername=w.worker_id)
        w.handed_back = sum(len(rows) for rows in await pipe.execute())

    async def _between_turns(self, count: int, busiest_first: bool) -> list[Live]:
        """Up to ``count`` owned conversations between turns: none of their entries
        being handled, and none handled and not acked yet (an audio utterance under
        way). Those queued and not started may go: they stay pending, and the next
        owner replays them. Ones adopted lately go last; then the least active (or,
        for a saturated worker, the most active: they are its load).

        The candidates are held (``moving``: no entry of theirs starts) while their
        pending entries are counted, so what is counted stays true however busy the
        worker is; those that stay are let go on at once."""
        w = self._w
        now = time.monotonic()
        settle_s = SETTLE_LEASES * w.settings.lease_s
        candidates = [live for live in w.owned.live.values()
                      if not live.closed and live.replay is None and not live.handling and not live.moving]
        candidates.sort(key=lambda live: (now - live.adopted_s < settle_s, bool(live.queue),
                                          -live.last_seen_s if busiest_first else live.last_seen_s))
        candidates = candidates[: 2 * count]
        if not candidates:
            return []
        for live in candidates:
            live.moving = True
        chosen: list[Live] = []
        try:
            for live in candidates:
                await cancel_and_wait(live.task)  # one not started yet: never one mid-turn
                live.task = None  # (cancelled before it started, it never ran its own finally)
            await w.writer.flushed()  # the acks of turns just done are written
            pipe = w.redis.pipeline(transaction=False)
            for live in candidates:
                queued = sum(1 for entry in live.queue if entry[0] is not None)
                pipe.xpending_range(live.ctx.data_key, w.group, min="-", max="+", count=queued + 1,
                                    consumername=w.worker_id)
            replies = await pipe.execute(raise_on_error=False)
            for live, rows in zip(candidates, replies, strict=True):
                queued = sum(1 for entry in live.queue if entry[0] is not None)
                # Pending for us beyond what waits in its queue: handled, not acked (mid-turn).
                if len(chosen) < count and not live.closed and not isinstance(rows, Exception) and len(rows) <= queued:
                    chosen.append(live)
        finally:
            for live in candidates:
                if live not in chosen:
                    live.moving = False
                    self._drainer.kick(live)
        return chosen

    async def shed(self, lives: list[Live], why: str) -> list[Claim]:
        """Hand these conversations back to rebalance, the worker going on (each is
        between turns: ``_between_turns``). Forgotten first, so nothing more is read
        or started for them; their sessions closed; what they queued written while
        the claims are still ours; then their control entries set idle past the
        lease, marked as handed back (``SHED_IDLE_MS``), for a peer with room to take
        (``reap_once``). What they had read and not started stays pending: the next
        owner replays it. If Redis is away, nothing refreshes those claims any more
        and any reaper takes them after the lease, as a dead worker's. Returns the
        claims handed back."""
        w = self._w
        claims: list[Claim] = []
        for live in lives:
            _, claim = w.owned.remove(live.conversation_id)
            if claim is not None:
                claims.append(claim)
        w.meters.owned.set(len(w.owned.table.claims))
        for live in lives:
            await cancel_and_wait(live.task)  # one not started yet (never one mid-turn)
            await self._drainer.close_session(live)
        await w.writer.flushed()
        claims = await self._still_ours(claims)
        w.handed_back += len(claims)
        await self._publish()  # before the hand-back: whoever sees it sees this worker without them
        # A plain XCLAIM to ourselves, as the shutdown's hand-back. A claim a peer took in the
        # instant since _still_ours looked would move once more (its writes fenced from this
        # moment on), never be lost.
        marked = await self._leases.set_idle(claims, SHED_IDLE_MS)
        for live in lives:
            live.ctx.writer.fence.lost = True
        if not marked:
            log.error("could not hand back %d conversations (redis away): peers take them after the lease",
                      len(claims))
            return []
        w.meters.rebalanced.inc(len(claims))
        log.info("handed back %d conversations to rebalance (%s): %s", len(claims), why,
                 " ".join(c.conversation_id for c in claims))
        return claims

    async def _still_ours(self, claims: list[Claim]) -> list[Claim]:
        """The claims still pending for this worker (a worker held up, by an outage or its
        own load, may have lost some to a peer meanwhile: those are the peer's now)."""
        w = self._w
        if not claims:
            return []
        pipe = w.redis.pipeline(transaction=False)
        for claim in claims:
            pipe.xpending_range(claim.control_key, w.group, min=claim.control_entry_id, max=claim.control_entry_id,
                                count=1)
        rows = await pipe.execute()
        ours = [claim for claim, found in zip(claims, rows, strict=True)
                if found and _text(found[0]["consumer"]) == w.worker_id]
        if len(ours) < len(claims):
            log.warning("%d of the conversations to hand back were taken by a peer meanwhile",
                        len(claims) - len(ours))
        return ours

    # --- taking -----------------------------------------------------------------------

    async def reap_once(self) -> None:
        """Take the claims idle past the lease that are this worker's to take: a dead or
        leaving worker's, and handed-back ones within the plan's ``take``."""
        w = self._w
        table = w.owned.table
        idle = {key: await self._idle_claims(key) for key in w.keys.controls()}
        rows = [row for key_rows in idle.values() for row in key_rows]
        offered = Counter(row.consumer for row in rows if row.shed)
        if set(offered) - {w.worker_id} or time.monotonic() - self._peers_read_s > self.interval_s:
            await self.read_peers()  # fresh views before taking handed-back ones (or any, just started)
        planned = self.plan(offered)
        take, take_back, saturated = planned.take, planned.take_back, self.me().saturated
        took = 0
        for control_key, key_rows in idle.items():
            if not table.accepting:
                break
            shed_here = self.memory.entries(control_key, time.monotonic())
            picks = pick_claims(key_rows, w.worker_id, table.free_slots, take, shed_here, w.settings.lease_ms,
                                saturated, take_back)
            take -= picks.shed
            take_back -= picks.taken_back
            if picks.entry_ids:
                took += await self._claim(control_key, picks.entry_ids, {r.entry_id: r for r in key_rows})
        if took:
            self._last_take_s = time.monotonic()
            await self._publish()  # peers planning their takes see these taken

    async def _publish(self) -> None:
        """The heartbeat, now; Redis away: the periodic one will do (it only steers)."""
        try:
            await self._heartbeat()
        except Exception as exc:
            if not is_transient(exc):
                raise

    async def _idle_claims(self, control_key: str) -> list[PendingClaim]:
        """The control entries idle past the lease (at most REAP_ROWS: the rest next pass)."""
        w = self._w
        out: list[PendingClaim] = []
        start = "-"
        while len(out) < REAP_ROWS:
            page = await self._leases.pending(control_key, start, REAP_PAGE, w.settings.lease_ms)
            out += [PendingClaim(_text(r["message_id"]), _text(r["consumer"]), int(r["time_since_delivered"]))
                    for r in page]
            if len(page) < REAP_PAGE:
                break
            start = "(" + out[-1].entry_id
        return out

    async def _claim(self, control_key: str, entry_ids: list[str], rows: dict[str, PendingClaim]) -> int:
        """XCLAIM these and adopt them; how many handed-back ones came."""
        w = self._w
        # Min-idle the lease: an entry a peer claimed (or its owner refreshed) since the listing stays theirs.
        ids: list[Any] = list(entry_ids)
        claimed = cast(StreamEntries, await w.redis.xclaim(control_key, w.group, w.worker_id, w.settings.lease_ms, ids))
        moved: Counter[str] = Counter()
        for entry_id_b, fields in claimed:
            if fields is None:
                continue
            entry_id = entry_id_b.decode()
            row = rows.get(entry_id)
            if row is not None and row.shed:
                moved[row.consumer] += 1
            await self._leases.on_control(control_key, entry_id, fields, took_over=True)
        for shedder, n in moved.items():
            if shedder == w.worker_id:
                w.handed_back = max(0, w.handed_back - n)
                log.info("took back %d conversations it had handed back: no peer is to take them now", n)
            else:
                log.info("took %d conversations handed back by %s to rebalance", n, shedder)
        return sum(moved.values())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

