"""Ownership bookkeeping: capacity, refresh sets, losing claims, draining (no I/O)."""

from __future__ import annotations

import pytest

from shared.ownership import Claim, OwnershipTable


def claim(cid: str, key: str = "ctl:{0}", eid: str | None = None) -> Claim:
    return Claim(cid, key, eid or f"1-{cid}")


def test_capacity_and_accepting() -> None:
    table = OwnershipTable(capacity=2)
    assert table.accepting and table.free_slots == 2
    table.add(claim("a"))
    table.add(claim("b"))
    assert table.free_slots == 0 and not table.accepting
    table.remove("a")
    assert table.accepting and table.free_slots == 1


def test_draining_stops_accepting() -> None:
    table = OwnershipTable(capacity=5)
    table.draining = True
    assert not table.accepting


def test_double_claim_is_refused() -> None:
    table = OwnershipTable(capacity=5)
    table.add(claim("a"))
    with pytest.raises(ValueError):
        table.add(claim("a"))


def test_refresh_set_is_grouped_by_control_stream() -> None:
    table = OwnershipTable(capacity=5)
    table.add(claim("a", "ctl:{0}", "1-0"))
    table.add(claim("b", "ctl:{1}", "2-0"))
    table.add(claim("c", "ctl:{0}", "3-0"))
    assert table.by_control_key() == {"ctl:{0}": ["1-0", "3-0"], "ctl:{1}": ["2-0"]}


def test_lose_drops_only_the_named_entries_of_that_stream() -> None:
    table = OwnershipTable(capacity=5)
    table.add(claim("a", "ctl:{0}", "1-0"))
    table.add(claim("b", "ctl:{1}", "1-0"))
    assert table.lose("ctl:{0}", ["1-0"]) == ["a"]
    assert table.owns("b") and not table.owns("a")


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        OwnershipTable(capacity=0)
