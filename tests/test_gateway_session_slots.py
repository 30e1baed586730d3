"""Concurrent sessions per key across gateway instances, against a real Redis.

The slots' clock is injected: expiry is tested by moving it, never by sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway_svc.quotas import Limits, SessionSlots
from shared.keys import Keys

TTL_S = 30.0
LIMITS = Limits(max_sessions=2, events_per_s=10, audio_s_per_min=60, max_event_bytes=1000)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def slots(redis: aioredis.Redis, prefix: str, clock: Clock) -> SessionSlots:
    return SessionSlots(redis, Keys(prefix), LIMITS, TTL_S, clock=clock)


@pytest.fixture
async def other_gateway(redis_url: str, prefix: str, clock: Clock) -> AsyncIterator[SessionSlots]:
    """A second gateway instance: its own connection, the same Redis and prefix."""
    client = aioredis.Redis.from_url(redis_url)
    yield SessionSlots(client, Keys(prefix), LIMITS, TTL_S, clock=clock)
    await client.aclose()


async def test_limit_reached(slots: SessionSlots) -> None:
    assert await slots.acquire("key1", "s1")
    assert await slots.acquire("key1", "s2")
    assert not await slots.acquire("key1", "s3")
    assert await slots.in_use("key1") == 2


async def test_acquire_is_idempotent(slots: SessionSlots) -> None:
    assert await slots.acquire("key1", "s1")
    assert await slots.acquire("key1", "s1")
    assert await slots.in_use("key1") == 1
    assert await slots.acquire("key1", "s2")
    assert await slots.acquire("key1", "s1")  # held: still its own, though the key is full


async def test_release_frees_a_slot(slots: SessionSlots) -> None:
    assert await slots.acquire("key1", "s1")
    assert await slots.acquire("key1", "s2")
    assert await slots.release("key1", "s1")
    assert not await slots.release("key1", "s1")
    assert await slots.acquire("key1", "s3")
    assert not await slots.acquire("key1", "s4")


async def test_unrefreshed_slots_expire(slots: SessionSlots, clock: Clock) -> None:
    """A gateway killed without releasing: its sessions' slots free after ttl_s."""
    assert await slots.acquire("key1", "s1")
    assert await slots.acquire("key1", "s2")
    clock.now += TTL_S - 1
    assert not await slots.acquire("key1", "s3")
    clock.now += 1
    assert await slots.in_use("key1") == 0
    assert await slots.acquire("key1", "s3")
    assert await slots.acquire("key1", "s4")


async def test_refresh_keeps_a_slot_and_does_not_revive_an_expired_one(slots: SessionSlots, clock: Clock) -> None:
    assert await slots.acquire("key1", "live")
    assert await slots.acquire("key1", "dead")
    for _ in range(4):
        clock.now += TTL_S / 2
        assert await slots.refresh("key1", "live")
    assert not await slots.refresh("key1", "dead")
    assert await slots.in_use("key1") == 1
    assert await slots.release("key1", "live")
    assert not await slots.refresh("key1", "live")
    assert await slots.in_use("key1") == 0


async def test_two_gateways_share_one_limit(slots: SessionSlots, other_gateway: SessionSlots) -> None:
    assert await slots.acquire("key1", "a1")
    assert await other_gateway.acquire("key1", "b1")
    assert not await slots.acquire("key1", "a2")
    assert not await other_gateway.acquire("key1", "b2")
    assert await other_gateway.release("key1", "b1")
    assert await slots.acquire("key1", "a2")


async def test_concurrent_acquires_never_exceed_the_limit(slots: SessionSlots, other_gateway: SessionSlots) -> None:
    results = await asyncio.gather(*(
        (slots if n % 2 else other_gateway).acquire("key1", f"s{n}") for n in range(20)
    ))
    assert sum(results) == LIMITS.max_sessions
    assert await slots.in_use("key1") == LIMITS.max_sessions


async def test_keys_have_separate_limits(slots: SessionSlots) -> None:
    assert await slots.acquire("key1", "s1")
    assert await slots.acquire("key1", "s2")
    assert await slots.acquire("key2", "s1")
    assert await slots.in_use("key2") == 1


async def test_the_set_is_named_by_keys_and_expires(
    slots: SessionSlots, redis: aioredis.Redis, prefix: str, clock: Clock,
) -> None:
    assert await slots.acquire("0123456789abcdef", "s1")
    name = Keys(prefix).gateway_sessions("0123456789abcdef")
    assert name == f"{prefix}:gw:sessions:0123456789abcdef"
    assert await redis.zscore(name, "s1") == (clock.now + TTL_S) * 1000
    assert 0 < await redis.pttl(name) <= 2 * TTL_S * 1000
