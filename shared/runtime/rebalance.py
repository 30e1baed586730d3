"""Rebalancing policy: how many live conversations a worker hands back, and
which handed-back ones it takes (pure: no I/O, unit-tested alone).

There is no coordinator. Each worker reads its peers' heartbeats (sessions,
capacity, saturated and overloaded, draining, handed back and not taken yet)
and decides for itself, the way Akka Cluster Sharding's least-shard-allocation
strategy decides for its coordinator:

- **Fair share.** The conversations of the live workers are shared out in
  proportion to their capacity (``MAX_SESSIONS``) over the workers that can
  take more: a saturated worker (overloaded now, or lately: see
  saturation.py) takes none and keeps what it holds, less what it sheds while
  overloaded; the others share the rest. A worker's *target* is its share
  rounded up.
- **One allocation** (``_Allocation``): every worker simulates the same moves
  over the same heartbeats (overloaded workers give a quarter; one over its
  share by more than ``REBALANCE_THRESHOLD`` gives down to its target; a
  worker under its share by as much is given some by the one most over), so
  they agree on who gives how many to whom without talking. A worker then
  hands back what it gives (at most ``REBALANCE_MAX_MOVES`` a round), or takes
  what it receives. Nothing is given that no worker has room for.

Handed-back conversations are told apart from a dead worker's by their idle
time: a hand-back to rebalance sets it to ``SHED_IDLE_MS`` (about 31 years),
which no claim reaches by ageing; so ``idle - SHED_IDLE_MS`` is how long ago it
was handed back. A dead or leaving worker's claims are taken at once by any
reaper with a free slot, whatever the shares say (``pick_claims``): a
heartbeat outlives its worker by up to ``3 x LEASE_S``, so a count read from it
may be stale, and takeover after a crash must not wait on it. Against
ping-pong: a worker takes a handed-back conversation within its allocation
only, never one it handed back itself (for ``ORPHAN_LEASES``) or lately (for
``HOLD_LEASES``, ``ShedMemory``); one that nobody took within
``OPEN_LEASES`` is anyone's but its shedder's (and a saturated worker's). The threshold leaves a band
where nothing moves, and a worker hands back at most once per lease (the
heartbeats settle in between).

Heartbeats only steer; they never decide ownership: every move goes through
the claims in Redis (the hand-back's XCLAIM, the taker's XCLAIM with a
min-idle), so a stale or skewed heartbeat can cost a needless move, never a
lost or doubled conversation. See docs/architecture.md ("Rebalancing").
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

from shared.settings import CommonSettings

#: Idle time a hand-back to rebalance gives a claim (ms, about 31.7 years): far past any
#: lease, and below the server's clock in ms (XCLAIM turns a larger one into 0).
SHED_IDLE_MS = 10**12
#: A handed-back conversation nobody took within its allocation for this many leases is
#: taken by any worker with a free slot except its shedder; after ORPHAN_LEASES by its
#: shedder too.
OPEN_LEASES = 1
ORPHAN_LEASES = 3
#: How long a worker takes none of what it handed back within its allocation, in leases.
HOLD_LEASES = 10
#: A heartbeat older than this part of a lease is a dead or stopped worker's: two were
#: missed (one is written every third of a lease), and its claims may be taken soon.
FRESH_LEASES = 2 / 3
#: An overloaded worker sheds this fraction of its conversations per round (at least one).
SATURATED_SHED_FRACTION = 0.25


@dataclass(frozen=True, slots=True)
class Load:
    """One worker as its heartbeat tells it (``seen_ms``: when it was written).
    ``saturated``: it takes none (overloaded now or lately); ``overloaded``: it
    sheds a quarter of what it holds. ``handed_back``: conversations it handed
    back to rebalance that nobody took yet."""

    worker_id: str
    sessions: int
    capacity: int
    saturated: bool = False
    draining: bool = False
    seen_ms: int = 0
    handed_back: int = 0
    overloaded: bool = False

    @property
    def holding(self) -> int:
        """What it holds or has on offer: a conversation handed back and not taken yet
        still counts as its own, so that every worker's view adds up the same
        whether or not its heartbeat was written since the hand-back."""
        return self.sessions + self.handed_back

    @classmethod
    def from_heartbeat(cls, fields: Mapping[str, str]) -> Load | None:
        """A heartbeat hash's fields (``Chores.heartbeat_fields``); None when it is
        incomplete or malformed (expired between listing and reading, or foreign)."""
        try:
            return cls(
                worker_id=fields["worker_id"],
                sessions=max(0, int(fields["sessions"])),
                capacity=max(1, int(fields["capacity"])),
                saturated=fields.get("saturated") == "1",
                draining=fields.get("draining") == "1",
                seen_ms=int(fields["seen_ms"]),
                handed_back=max(0, int(fields.get("handed_back") or 0)),
                overloaded=fields.get("overloaded") == "1",
            )
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Policy:
    lease_ms: int
    threshold: float = 0.2
    max_moves: int = 20

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> Policy:
        return cls(settings.lease_ms, settings.rebalance_threshold, settings.rebalance_max_moves)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one worker should do now: hand back ``shed`` conversations, or take up to
    ``take`` handed-back ones (never both). ``take_back``: of what it handed back and
    nobody took yet, how many the pool no longer gives away (a taker it counted on
    became saturated or left): it takes those back. ``fair``: its share; ``reason``
    why it sheds."""

    shed: int = 0
    take: int = 0
    fair: float = 0.0
    reason: str = ""
    take_back: int = 0


def overloaded_step(sessions: int) -> int:
    """What an overloaded worker sheds per round (what it keeps is the rest)."""
    return min(sessions, max(1, math.ceil(sessions * SATURATED_SHED_FRACTION)))


def live_peers(me: Load, peers: Iterable[Load], now_ms: int, lease_ms: int) -> list[Load]:
    """The peers that may hold or take conversations: heartbeat written lately
    (``FRESH_LEASES``), not draining, not this worker."""
    return [p for p in peers
            if p.worker_id != me.worker_id and not p.draining and now_ms - p.seen_ms <= FRESH_LEASES * lease_ms]


def plan(me: Load, peers: Iterable[Load], now_ms: int, policy: Policy) -> Plan:
    """This worker's move, from its own load (``me``, current) and its peers' heartbeats.

    Every worker runs the same allocation (``_Allocation``) over the same heartbeats,
    so they agree on who gives how many to whom without talking; this worker does
    its part: hands back what it gives (less what it handed back already and nobody
    took yet), or takes what it receives."""
    if me.draining:
        return Plan()  # it hands everything back on its way out anyway
    alloc = _Allocation([me, *live_peers(me, peers, now_ms, policy.lease_ms)], policy.threshold)
    alloc.run()
    given = alloc.given[me.worker_id]
    shed = min(max(0, given - me.handed_back), policy.max_moves)
    if me.saturated:  # what it handed back stays on offer (it takes none, its own neither)
        kept = me.holding - (overloaded_step(me.holding) if me.overloaded else 0)
        return Plan(shed=shed, fair=float(kept), reason="saturated" if shed else "")
    take_back = max(0, me.handed_back - given)
    fair = alloc.share(me)
    if shed:
        over = me.holding > fair * (1 + policy.threshold)
        return Plan(shed=shed, fair=fair, reason="over its fair share" if over else "a peer is short")
    return Plan(take=alloc.received[me.worker_id], fair=fair, take_back=take_back)


class _Allocation:
    """Who gives how many to whom, simulated on the workers' counts (what each holds
    or has on offer), in a fixed order:

    1. an overloaded worker gives a quarter of what it holds;
    2. one over its share by more than the threshold gives down to its target
       (the most over first);
    3. while a worker is under its share by more than the threshold, the one
       most over its share gives to the one most under, as long as that narrows
       their gap (two or more apart) and the giver stays at its share rounded down.

    What is given goes to the workers with the most room up to their targets
    (ties by worker id): nothing is given that no one would take. Over the same
    heartbeats every worker computes the same moves."""

    def __init__(self, workers: list[Load], threshold: float) -> None:
        self.workers = sorted(workers, key=lambda w: w.worker_id)
        self.threshold = threshold
        self.receivers = [w for w in self.workers if not w.saturated]
        kept = sum(w.holding - (overloaded_step(w.holding) if w.overloaded else 0)
                   for w in self.workers if w.saturated)
        self.pool = sum(w.holding for w in self.workers) - kept
        self.capacity = sum(w.capacity for w in self.receivers)
        self.count = {w.worker_id: w.holding for w in self.workers}
        self.given = {w.worker_id: 0 for w in self.workers}
        self.received = {w.worker_id: 0 for w in self.workers}

    def share(self, w: Load) -> float:
        return min(float(w.capacity), self.pool * w.capacity / self.capacity) if self.capacity else 0.0

    def target(self, w: Load) -> int:
        return min(w.capacity, math.ceil(self.share(w) - 1e-9))

    def run(self) -> None:
        givers = sorted(self.workers, key=lambda w: (not w.saturated, self.share(w) - w.holding, w.worker_id))
        for w in givers:
            if w.saturated:
                if w.overloaded:
                    self._give(w, overloaded_step(w.holding))
            elif w.holding > self.share(w) * (1 + self.threshold):
                self._give(w, w.holding - self.target(w))
        while self._even_out_one():
            pass

    def _give(self, giver: Load, n: int) -> None:
        while n > 0:
            rooms = [(self.target(r) - self.count[r.worker_id], r) for r in self.receivers if r is not giver]
            room, taker = max(rooms, key=lambda x: x[0], default=(0, giver))
            if room <= 0:
                return
            k = min(n, room)
            self._move(giver, taker, k)
            n -= k

    def _even_out_one(self) -> bool:
        short = [r for r in self.receivers if self.count[r.worker_id] < self.share(r) * (1 - self.threshold)
                 and self.count[r.worker_id] < self.target(r)]
        if not short:
            return False
        taker = min(short, key=lambda r: self.count[r.worker_id] - self.share(r))
        low = self.count[taker.worker_id]
        givers = [g for g in self.receivers
                  if self.count[g.worker_id] > math.floor(self.share(g) + 1e-9) and self.count[g.worker_id] - low >= 2]
        if not givers:
            return False
        giver = max(givers, key=lambda g: self.count[g.worker_id] - self.share(g))
        high = self.count[giver.worker_id]
        k = max(1, min(high - math.floor(self.share(giver) + 1e-9), self.target(taker) - low, (high - low) // 2))
        self._move(giver, taker, k)
        return True

    def _move(self, giver: Load, taker: Load, n: int) -> None:
        self.count[giver.worker_id] -= n
        self.count[taker.worker_id] += n
        self.given[giver.worker_id] += n
        self.received[taker.worker_id] += n


@dataclass(frozen=True, slots=True)
class PendingClaim:
    """A control entry idle past the lease (an XPENDING row): whose, and how idle."""

    entry_id: str
    consumer: str
    idle_ms: int

    @property
    def shed(self) -> bool:
        """Handed back to rebalance (not a dead or leaving worker's)."""
        return self.idle_ms >= SHED_IDLE_MS

    @property
    def shed_age_ms(self) -> int:
        return self.idle_ms - SHED_IDLE_MS


@dataclass(frozen=True, slots=True)
class Picks:
    entry_ids: list[str]
    #: How many of them others handed back to rebalance (they count against the take budget).
    shed: int
    #: How many of them this worker had handed back itself.
    taken_back: int = 0


def pick_claims(
    rows: Iterable[PendingClaim], me: str, free_slots: int, take: int, shed_here: Container[str], lease_ms: int,
    saturated: bool = False, take_back: int = 0,
) -> Picks:
    """Which idle claims a reaper with ``free_slots`` takes: every dead or leaving
    worker's (at once, whatever the shares), and handed-back ones within ``take``
    but none this worker handed back lately (``shed_here``); of its own, up to
    ``take_back``. One left untaken for OPEN_LEASES is open to any worker but its
    shedder (its consumer name) and a saturated one, for ORPHAN_LEASES to every
    worker."""
    ids: list[str] = []
    shed = taken_back = 0
    for row in rows:
        if len(ids) >= free_slots:
            break
        if not row.shed:
            ids.append(row.entry_id)
            continue
        age = row.shed_age_ms
        if row.consumer == me and taken_back < take_back:
            taken_back += 1
            ids.append(row.entry_id)
            continue
        if (row.consumer == me or saturated) and age < ORPHAN_LEASES * lease_ms:
            continue
        if age < OPEN_LEASES * lease_ms and (row.entry_id in shed_here or shed >= take):
            continue
        ids.append(row.entry_id)
        shed += 1
    return Picks(ids, shed, taken_back)


class ShedMemory:
    """The control entries (stream, entry id) this worker handed back to rebalance,
    and when (monotonic seconds), for ``hold_s``: it takes none of them back
    meanwhile. Bounded: the oldest are forgotten first."""

    def __init__(self, hold_s: float, max_entries: int = 10_000) -> None:
        self.hold_s = hold_s
        self.max_entries = max_entries
        self._shed: OrderedDict[tuple[str, str], float] = OrderedDict()

    def add(self, control_key: str, entry_id: str, now_s: float) -> None:
        self._shed.pop((control_key, entry_id), None)
        self._shed[control_key, entry_id] = now_s
        while len(self._shed) > self.max_entries:
            self._shed.popitem(last=False)

    def entries(self, control_key: str, now_s: float) -> set[str]:
        """The entry ids of ``control_key`` held now."""
        self._forget(now_s)
        return {entry_id for key, entry_id in self._shed if key == control_key}

    def __len__(self) -> int:
        return len(self._shed)

    def _forget(self, now_s: float) -> None:
        while self._shed:
            oldest, at = next(iter(self._shed.items()))
            if now_s - at < self.hold_s:
                return
            del self._shed[oldest]
