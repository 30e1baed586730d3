"""A ``response.cancel`` through the pipeline with the openai conversation engine
against the fake Realtime server (real Redis, in-process runtimes): the worker
stops the answer and writes a cancelled done with what it streamed; the engine
cancels upstream, and the next turn goes on the same upstream session, which
holds the partial answer."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from conversation_svc.engines.openai import OpenAIConversation
from conversation_svc.worker import ConversationService
from shared.bus.doorbell import add_with_rings
from shared.keys import Keys
from shared.models import ConversationStarted, ResponseCancel, ResponseDelta, ResponseDone, encode, now_ms
from shared.settings import ConversationSettings, TranscriberSettings
from tests.fake_realtime import FakeRealtimeServer
from tests.fake_realtime_script import answer_text
from tests.openai_engine_helpers import endpoint, fast_delays
from tests.runtime_helpers import FAST, entries, running, say, transcriber_service, until


async def test_a_cancelled_answer_is_cancelled_upstream_and_the_next_turn_follows_it(
    redis_url: str, redis: aioredis.Redis, prefix: str, fake: FakeRealtimeServer
) -> None:
    keys = Keys(prefix)
    common: dict[str, Any] = {"redis_url": redis_url, "key_prefix": prefix, **FAST}
    t_settings = TranscriberSettings(transcriber_engine="simulated", **common)
    c_settings = ConversationSettings(**common)
    engine = OpenAIConversation(endpoint(fake), delays=fast_delays)
    fake.faults.stall_responses = 1  # the first answer stops after its first delta until cancelled

    async def responses() -> list[Any]:
        return await entries(redis, keys.responses("c"))

    async def dones() -> list[ResponseDone]:
        return [e for e in await responses() if isinstance(e, ResponseDone)]

    async with (
        running(t_settings, await transcriber_service(t_settings)),
        running(c_settings, ConversationService(c_settings, engine)),
    ):
        await add_with_rings(redis, keys, [(keys.control_for("c"), encode(ConversationStarted(conversation_id="c")),
                                            None)])
        await say(redis, keys, "c", "u1", "a")

        async def streaming() -> bool:
            return any(isinstance(e, ResponseDelta) for e in await responses())

        await until(streaming)
        cancel = ResponseCancel(conversation_id="c", target_id="u1", sent_ms=now_ms())
        await add_with_rings(redis, keys, [(keys.input("c"), encode(cancel), 1000)])

        async def cancelled() -> bool:
            return len(await dones()) == 1

        await until(cancelled)
        await say(redis, keys, "c", "u2", "b")

        async def answered() -> bool:
            return len(await dones()) == 2

        await until(answered)
    first, second = await dones()
    assert (first.utterance_id, first.status) == ("u1", "cancelled")
    assert first.text and answer_text("a", 1).startswith(first.text) and first.text != answer_text("a", 1)
    # Same upstream session, no replay: it holds user "a", the partial answer, then user "b".
    assert (second.utterance_id, second.status, second.text) == ("u2", "completed", answer_text("b", 3))
    assert len(fake.kind_sessions("realtime")) == 1
    record = fake.kind_sessions("realtime")[0]
    assert record.received_types() == ["session.update", "conversation.item.create", "response.create",
                                       "response.cancel", "conversation.item.create", "response.create"]
    assert [e["response"]["status"] for e in record.sent if e["type"] == "response.done"] == ["cancelled",
                                                                                              "completed"]
