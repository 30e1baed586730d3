"""The runtime against a Redis that refuses writes: full memory (maxmemory with
noeviction). Readiness says so while it lasts, every utterance still ends in
exactly one answer once memory frees, and readiness comes back."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from shared.bus.doorbell import add_with_rings
from shared.keys import Keys
from shared.models import ConversationStarted, encode
from shared.redis_server import RedisServer
from tests.runtime_helpers import answered_ids, pipeline, say, until


async def test_full_memory_flips_readiness_both_ways_and_loses_nothing(own_redis_server: RedisServer) -> None:
    keys = Keys("oom")
    redis = aioredis.Redis.from_url(own_redis_server.url)
    try:
        async with pipeline(own_redis_server.url, "oom") as (transcriber, conversation):
            await add_with_rings(redis, keys, [(keys.control_for("c"), encode(ConversationStarted(conversation_id="c")),
                                                None)])
            await say(redis, keys, "c", "u0", "before memory runs out")

            async def first() -> bool:
                return await answered_ids(redis, keys, "c") == ["u0"]

            await until(first)
            assert transcriber.not_ready_reason() is None and conversation.not_ready_reason() is None
            used = int((await redis.info("memory"))["used_memory"])
            await redis.config_set("maxmemory-policy", "noeviction")
            await redis.config_set("maxmemory", str(used - 1024))
            # Plain client XADDs are refused too: each utterance is written with the limit lifted for
            # a moment, until one of them reaches a worker that then meets the limit.
            sent = 0
            while transcriber.not_ready_reason() is None and conversation.not_ready_reason() is None:
                assert sent < 50, "no worker write met the memory limit"
                sent += 1
                await redis.config_set("maxmemory", "0")
                await say(redis, keys, "c", f"u{sent}", f"utterance {sent}")
                await redis.config_set("maxmemory", str(used - 1024))
                await asyncio.sleep(0.05)
            reasons = {transcriber.not_ready_reason(), conversation.not_ready_reason()}
            assert "redis refuses writes (OutOfMemoryError)" in reasons, reasons
            await asyncio.sleep(0.5)
            await redis.config_set("maxmemory", "0")

            async def all_answered() -> bool:
                return await answered_ids(redis, keys, "c") == [f"u{i}" for i in range(sent + 1)]

            await until(all_answered)

            async def ready_again() -> bool:
                return transcriber.not_ready_reason() is None and conversation.not_ready_reason() is None

            await until(ready_again)
        for key in (keys.input("c"), keys.transcripts("c")):
            (group,) = await redis.xinfo_groups(key)
            assert group["pending"] == 0, key
    finally:
        await redis.aclose()
