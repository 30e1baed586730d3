"""Rebalancing in-process (shared/runtime/balancer.py), on a real Redis: a worker
that joins gets live conversations between turns, and their history goes on;
REBALANCE=false leaves them where they are. The multi-process runs are in
test_e2e_rebalance.py."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from shared.bus.doorbell import add_with_rings
from shared.keys import Keys
from shared.models import ConversationStarted, ResponseDone, encode
from shared.runtime.rebalance import SHED_IDLE_MS
from shared.settings import ConversationSettings
from tests.runtime_helpers import (
    FAST,
    answered_ids,
    conversation_service,
    entries,
    pipeline,
    running,
    say,
    until,
)

CONVERSATIONS = [f"c{i}" for i in range(4)]


async def _start_and_answer_once(redis: aioredis.Redis, keys: Keys) -> None:
    for cid in CONVERSATIONS:
        await add_with_rings(redis, keys, [(keys.control_for(cid), encode(ConversationStarted(conversation_id=cid)),
                                            None)])
        await say(redis, keys, cid, "u1", f"hello from {cid}")

    async def answered() -> bool:
        return [await answered_ids(redis, keys, cid) for cid in CONVERSATIONS] == [["u1"]] * len(CONVERSATIONS)

    await until(answered)


async def test_a_worker_that_joins_takes_its_share_between_turns_and_the_history_goes_on(
    redis_url: str, redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    common: dict[str, Any] = {"redis_url": redis_url, "key_prefix": prefix, **FAST}
    async with pipeline(redis_url, prefix) as (_, first):
        await _start_and_answer_once(redis, keys)
        assert set(first.live) == set(CONVERSATIONS)
        settings = ConversationSettings(conversation_engine="echo", **common)
        async with running(settings, await conversation_service(settings)) as second:

            async def balanced() -> bool:
                return len(first.live) == len(second.live) == 2

            await until(balanced, timeout_s=10.0)
            assert not set(first.live) & set(second.live)
            (control,) = keys.controls()
            handed_back = await redis.xpending_range(control, "conversation", "-", "+", 100, idle=SHED_IDLE_MS)
            assert handed_back == []  # every hand-back was taken
            for cid in CONVERSATIONS:
                await say(redis, keys, cid, "u2", "/recall")

            async def answered() -> bool:
                done = [await answered_ids(redis, keys, cid) for cid in CONVERSATIONS]
                return done == [["u1", "u2"]] * len(CONVERSATIONS)

            await until(answered)
            assert first.balancer is not None and second.balancer is not None
            moved = set(second.live)
    for cid in CONVERSATIONS:
        dones = [e for e in await entries(redis, keys.responses(cid)) if isinstance(e, ResponseDone)]
        # The second turn heard the first, also where a new owner answered it.
        first_answer = f'I\'ve received your transcription: "hello from {cid}" (turn 1)'
        assert [d.text for d in dones] == [first_answer, f'I said: "{first_answer}" (turn 2)'], (cid, cid in moved)


async def test_with_rebalance_off_live_conversations_stay_where_they_are(
    redis_url: str, redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    common: dict[str, Any] = {"redis_url": redis_url, "key_prefix": prefix, **FAST, "rebalance": False}
    async with pipeline(redis_url, prefix, rebalance=False) as (_, first):
        await _start_and_answer_once(redis, keys)
        settings = ConversationSettings(conversation_engine="echo", **common)
        async with running(settings, await conversation_service(settings)) as second:
            assert first.balancer is None and second.balancer is None
            await asyncio.sleep(3 * settings.lease_s)  # three rebalancing rounds' worth, were it on
            assert set(first.live) == set(CONVERSATIONS) and not second.live
