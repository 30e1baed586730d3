"""Rebalancing policy (shared/runtime/rebalance.py) and saturation (saturation.py):
who hands back how many, who may take which idle claims, and when a worker is
saturated. No I/O."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from shared.runtime.rebalance import (
    ORPHAN_LEASES,
    SHED_IDLE_MS,
    Load,
    PendingClaim,
    Plan,
    Policy,
    ShedMemory,
    overloaded_step,
    pick_claims,
    plan,
)
from shared.runtime.saturation import MIN_SAMPLES, QueueDelay

LEASE_MS = 2000
NOW = 1_000_000
POLICY = Policy(LEASE_MS, threshold=0.2, max_moves=20)


def w(worker_id: str, sessions: int, capacity: int = 500, saturated: bool = False, draining: bool = False,
      age_ms: int = 0, overloaded: bool = False) -> Load:
    return Load(worker_id, sessions, capacity, saturated or overloaded, draining, NOW - age_ms, overloaded=overloaded)


def plan_of(me: Load, *peers: Load, policy: Policy = POLICY) -> Plan:
    return plan(me, [me, *peers], NOW, policy)  # the registry lists this worker too


# --- shares ------------------------------------------------------------------------------------------------


def test_a_balanced_pool_moves_nothing() -> None:
    for me in ("a", "b", "c"):
        loads = {"a": w("a", 10), "b": w("b", 10), "c": w("c", 10)}
        p = plan_of(loads.pop(me), *loads.values())
        assert (p.shed, p.take) == (0, 0)


def test_workers_that_join_get_their_share_from_the_one_that_holds_everything() -> None:
    old, new1, new2 = w("old", 30), w("new1", 0), w("new2", 0)
    assert plan_of(old, new1, new2) == Plan(shed=20, fair=10.0, reason="over its fair share")
    assert plan_of(new1, old, new2).take == 10
    assert plan_of(new2, old, new1).take == 10


def test_a_round_hands_back_at_most_max_moves() -> None:
    p = plan_of(w("old", 100), w("new", 0), policy=Policy(LEASE_MS, max_moves=7))
    assert p.shed == 7


def test_within_the_threshold_nothing_moves_and_over_it_down_to_the_share() -> None:
    # 30 over 3 workers: share 10; 20 % over is 12.
    assert plan_of(w("me", 12), w("b", 9), w("c", 9)).shed == 0
    assert plan_of(w("me", 13), w("b", 9), w("c", 8)).shed == 3
    # A worker within the band does not take either: it is at or over its share.
    assert plan_of(w("me", 11), w("b", 13), w("c", 6)).take == 0


def test_small_counts_do_not_churn() -> None:
    # 7 over 3: share 2.33, target 3: 3-2-2 is as even as whole conversations go.
    assert plan_of(w("me", 3), w("b", 2), w("c", 2)).shed == 0
    assert plan_of(w("me", 1), w("b", 0)).shed == 0


def test_never_more_than_the_peers_have_room_for() -> None:
    # An overloaded worker sheds 3 of 10; a peer at its capacity takes none, one with 2 free slots 2.
    assert plan_of(w("hot", 10, overloaded=True), w("full", 10, capacity=10)).shed == 0
    assert plan_of(w("hot", 10, overloaded=True), w("roomy", 8, capacity=10)).shed == 2


def test_shares_follow_capacity() -> None:
    big, small = w("big", 0, capacity=300), w("small", 40, capacity=100)
    assert plan_of(small, big, policy=Policy(LEASE_MS, max_moves=50)) == Plan(shed=30, fair=10.0,
                                                                             reason="over its fair share")
    assert plan_of(big, small).take == 30


def test_stale_and_draining_peers_are_not_counted() -> None:
    # Two heartbeats missed: the peer is dead or stopped (its hash lives 3 leases).
    assert plan_of(w("me", 30), w("dead", 0, age_ms=LEASE_MS * 2 // 3 + 1)).shed == 0
    assert plan_of(w("me", 30), w("leaving", 0, draining=True)).shed == 0
    assert plan_of(w("me", 30), w("alive", 0, age_ms=LEASE_MS * 2 // 3 - 1)).shed == 15


def test_a_draining_worker_plans_nothing() -> None:
    assert plan_of(w("me", 30, draining=True), w("b", 0)) == Plan()


# --- saturation ------------------------------------------------------------------------------------------------


def test_an_overloaded_worker_sheds_a_quarter_even_at_its_share_and_takes_nothing() -> None:
    hot, cool = w("hot", 10, overloaded=True), w("cool", 10)
    p = plan_of(hot, cool)
    assert (p.shed, p.take, p.reason) == (overloaded_step(10), 0, "saturated") == (3, 0, "saturated")
    # Its peer makes room for what it sheds: 20 less the 7 it keeps.
    assert plan_of(cool, hot).take == 3
    assert plan_of(w("hot", 1, overloaded=True), cool).shed == 1


def test_a_worker_takes_back_what_it_handed_back_when_nobody_is_to_take_it_any_more() -> None:
    # It handed back 3 to "b", which then became saturated: nobody is to take them.
    me = dataclasses.replace(w("me", 7), handed_back=3)
    p = plan_of(me, w("b", 10, saturated=True))
    assert (p.shed, p.take_back) == (0, 3)
    rows = [shed("1", consumer="me"), shed("2", consumer="me"), shed("3", consumer="me"), shed("4", consumer="b")]
    picks = pick_claims(rows, "me", 10, 0, set(), LEASE_MS, take_back=p.take_back)
    assert picks.entry_ids == ["1", "2", "3"] and picks.taken_back == 3 and picks.shed == 0
    # While a taker still has room for them, they stay on offer; a saturated shedder leaves them too.
    assert plan_of(me, w("b", 3)).take_back == 0
    assert plan_of(dataclasses.replace(me, saturated=True), w("b", 10, saturated=True)).take_back == 0


def test_a_worker_saturated_lately_keeps_what_it_has_and_is_given_nothing() -> None:
    held, cool = w("held", 4, saturated=True), w("cool", 16)
    assert plan_of(held, cool) == Plan(fair=4.0)  # no hand-back, no take
    # cool is at its share: all that held does not keep
    assert plan_of(cool, held) == Plan(fair=16.0)
    assert pick_claims([shed("1", age_ms=LEASE_MS)], "held", 10, 0, set(), LEASE_MS, saturated=True).entry_ids == []


def test_a_saturated_worker_keeps_its_conversations_when_nobody_can_take_them() -> None:
    assert plan_of(w("hot", 10, overloaded=True), w("also", 10, saturated=True)).shed == 0
    assert plan_of(w("hot", 10, overloaded=True)).shed == 0


def test_a_saturated_peer_takes_no_share_of_the_rest() -> None:
    # me and b share what hot does not keep (12 less the 3 it sheds): (12 + 10 + 12 - 9) / 2 = 12.5.
    p = plan_of(w("me", 12), w("b", 10), w("hot", 12, overloaded=True))
    assert p.fair == pytest.approx(12.5) and p.shed == 0 and p.take == 0
    assert plan_of(w("b", 10), w("me", 12), w("hot", 12, overloaded=True)).take == 3  # the most room first
    assert plan_of(w("hot", 12, overloaded=True), w("me", 12), w("b", 10)).shed == 3


# --- which idle claims a reaper takes ----------------------------------------------------------------------------


def dead(entry_id: str, consumer: str = "gone") -> PendingClaim:
    return PendingClaim(entry_id, consumer, LEASE_MS + 5)


def shed(entry_id: str, consumer: str = "peer", age_ms: int = 0) -> PendingClaim:
    return PendingClaim(entry_id, consumer, SHED_IDLE_MS + age_ms)


def test_a_dead_workers_claims_are_taken_whatever_the_budget() -> None:
    picks = pick_claims([dead("1"), dead("2"), dead("3")], "me", free_slots=10, take=0, shed_here=set(),
                        lease_ms=LEASE_MS)
    assert picks.entry_ids == ["1", "2", "3"] and picks.shed == 0


def test_free_slots_bound_every_take() -> None:
    picks = pick_claims([dead("1"), shed("2"), dead("3")], "me", free_slots=2, take=5, shed_here=set(),
                        lease_ms=LEASE_MS)
    assert picks.entry_ids == ["1", "2"]


def test_handed_back_claims_are_taken_within_the_budget() -> None:
    rows = [shed("1"), dead("2"), shed("3"), shed("4")]
    picks = pick_claims(rows, "me", free_slots=10, take=2, shed_here=set(), lease_ms=LEASE_MS)
    assert picks.entry_ids == ["1", "2", "3"] and picks.shed == 2
    assert pick_claims(rows, "me", free_slots=10, take=0, shed_here=set(), lease_ms=LEASE_MS).entry_ids == ["2"]


def test_a_worker_does_not_take_back_what_it_shed() -> None:
    # "2" went from this worker to "other", which handed it back: not back within the allocation.
    rows = [shed("1", consumer="me"), shed("2", consumer="other")]
    assert pick_claims(rows, "me", 10, 10, shed_here={"2"}, lease_ms=LEASE_MS).entry_ids == []
    # Nobody else took it within a lease: then it may come back rather than wait.
    late = shed("2", consumer="other", age_ms=LEASE_MS)
    assert pick_claims([late], "me", 10, 0, shed_here={"2"}, lease_ms=LEASE_MS).entry_ids == ["2"]


def test_one_nobody_took_is_open_to_any_peer_then_to_its_shedder() -> None:
    waited = shed("1", consumer="other", age_ms=LEASE_MS)
    assert pick_claims([waited], "me", 10, take=0, shed_here=set(), lease_ms=LEASE_MS).entry_ids == ["1"]
    mine = shed("2", consumer="me", age_ms=LEASE_MS)
    assert pick_claims([mine], "me", 10, take=10, shed_here={"2"}, lease_ms=LEASE_MS).entry_ids == []
    orphan = shed("2", consumer="me", age_ms=ORPHAN_LEASES * LEASE_MS)
    assert pick_claims([orphan], "me", 10, take=0, shed_here={"2"}, lease_ms=LEASE_MS).entry_ids == ["2"]


def test_a_claim_is_handed_back_only_by_its_idle_time() -> None:
    assert shed("1").shed and not dead("1").shed
    # No claim ages into the mark: SHED_IDLE_MS is decades, under today's clock in ms (XCLAIM's bound).
    assert SHED_IDLE_MS > 10 * 365 * 24 * 3600 * 1000
    assert SHED_IDLE_MS < 1_700_000_000_000
    assert shed("1", age_ms=1234).shed_age_ms == 1234


def test_the_memory_of_what_was_shed_is_per_stream_bounded_and_forgets() -> None:
    memory = ShedMemory(hold_s=10.0, max_entries=3)
    memory.add("ctl:{0}", "1-0", now_s=0.0)
    memory.add("ctl:{1}", "1-0", now_s=1.0)
    assert memory.entries("ctl:{0}", now_s=5.0) == {"1-0"}
    assert memory.entries("ctl:{0}", now_s=10.5) == set()  # held 10 s
    assert memory.entries("ctl:{1}", now_s=10.5) == {"1-0"}
    for i in range(5):
        memory.add("ctl:{0}", f"{i}-1", now_s=10.5)
    assert len(memory) == 3


# --- heartbeats ----------------------------------------------------------------------------------------------------


def test_a_heartbeat_is_read_into_a_load_and_a_broken_one_is_skipped() -> None:
    fields = {"worker_id": "w1", "sessions": "4", "capacity": "500", "saturated": "1", "draining": "0",
              "seen_ms": "123", "host": "h", "handed_back": "2", "overloaded": "1"}
    assert Load.from_heartbeat(fields) == Load("w1", 4, 500, True, False, 123, handed_back=2, overloaded=True)
    assert Load.from_heartbeat({**fields, "sessions": "many"}) is None
    assert Load.from_heartbeat({k: v for k, v in fields.items() if k != "seen_ms"}) is None
    old = {k: v for k, v in fields.items() if k not in ("saturated", "handed_back", "overloaded")}  # from before
    assert Load.from_heartbeat(old) == Load("w1", 4, 500, False, False, 123)


# --- many rounds: it converges, and what is handed back goes where it is short -------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_rounds_converge_within_the_threshold(seed: int) -> None:
    """Workers plan from heartbeats of the round before (their own count fresh), hand back,
    then take in a random order; a hand-back nobody took stays on offer (counted as its
    shedder's) for a round, then goes to anyone but its shedder (the reaper's open rule)."""
    rng = random.Random(seed)
    workers = [f"w{i}" for i in range(rng.randint(2, 6))]
    held: dict[str, set[int]] = {name: set() for name in workers}
    ids = itertools.count()
    for name in workers[: rng.randint(1, len(workers) - 1)]:  # some hold everything, the rest just joined
        held[name] = {next(ids) for _ in range(rng.randint(0, 60))}
    offered: dict[int, tuple[str, int]] = {}  # conversation -> (shedder, round)
    moves = 0

    def load(name: str) -> Load:
        return dataclasses.replace(w(name, len(held[name])),
                                   handed_back=sum(1 for shedder, _ in offered.values() if shedder == name))

    for round_ in range(12):
        heartbeats = [load(name) for name in workers]
        for name in workers:
            for conversation in sorted(held[name])[: plan(load(name), heartbeats, NOW, POLICY).shed]:
                held[name].discard(conversation)
                offered[conversation] = (name, round_)
        heartbeats = [rng.choice([hb, load(hb.worker_id)]) for hb in heartbeats]  # some written since
        for name in rng.sample(workers, len(workers)):
            take = plan(load(name), heartbeats, NOW, POLICY).take
            for conversation, (shedder, at) in list(offered.items()):
                if shedder == name or (at == round_ and take <= 0):
                    continue
                take -= at == round_
                del offered[conversation]
                held[name].add(conversation)
                moves += 1
    assert not offered
    total = sum(len(h) for h in held.values())
    fair = total / len(workers)
    counts = sorted(len(h) for h in held.values())
    assert all(abs(n - fair) <= max(0.2 * fair, 1) for n in counts), (counts, fair)
    heartbeats = [load(name) for name in workers]
    assert all(plan(hb, heartbeats, NOW, POLICY).shed == 0 for hb in heartbeats)  # stable: nothing more moves
    assert moves <= 1.5 * total, (moves, total)


# --- saturation ------------------------------------------------------------------------------------------------------


def test_a_worker_is_overloaded_by_its_median_queue_delay_and_saturated_for_the_hold() -> None:
    meter = QueueDelay(threshold_s=0.4, window_s=10.0, hold_s=20.0)
    for i in range(MIN_SAMPLES - 1):
        meter.observe(0.5, now_s=i * 0.1)
    assert not meter.overloaded(1.0) and not meter.saturated(1.0)  # too few samples say nothing
    meter.observe(0.5, now_s=1.0)
    assert meter.overloaded(1.0) and meter.saturated(1.0) and meter.median_s(1.0) == 0.5
    for i in range(3 * MIN_SAMPLES):
        meter.observe(0.001, now_s=2.0 + i * 0.01)
    assert meter.median_s(3.0) == pytest.approx(0.001)
    assert not meter.overloaded(3.0)  # it sheds no more...
    assert meter.saturated(3.0)  # ...and takes none within the hold since it was last over
    assert not meter.saturated(21.5)


def test_a_loop_held_most_of_the_window_is_saturated_on_few_samples() -> None:
    # Held 1.5 s at a time, the 100 ms probe fires four times in 6 s.
    meter = QueueDelay(threshold_s=0.25, window_s=10.0, hold_s=20.0)
    for i in range(4):
        meter.observe(1.5, now_s=1.6 * (i + 1))
    assert meter.overloaded(6.5) and meter.median_s(6.5) == 1.5


def test_a_few_stalls_do_not_make_a_worker_saturated() -> None:
    meter = QueueDelay(threshold_s=0.5, window_s=10.0, hold_s=20.0)
    for i in range(50):
        meter.observe(3.0 if i % 10 == 0 else 0.002, now_s=i * 0.05)
    assert not meter.overloaded(3.0) and not meter.saturated(3.0)


def test_no_threshold_means_never_saturated() -> None:
    meter = QueueDelay(threshold_s=0.0, window_s=10.0, hold_s=0.0)
    for i in range(50):
        meter.observe(9.0, now_s=i * 0.01)
    assert not meter.overloaded(1.0) and not meter.saturated(1.0) and meter.median_s(1.0) == 9.0
