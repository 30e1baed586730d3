"""The Realtime API's two steps through the pipeline: user turns written with
``respond: false`` get no answer of their own; a ``response.request`` behind
them gets one answer that hears them all, also when a new conversation owner
takes over between the steps (it rebuilds the waiting turns from the streams)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from shared.bus.doorbell import add_with_rings
from shared.history import History, UnansweredTail
from shared.keys import Keys
from shared.models import (
    ConversationStarted,
    ResponseDone,
    ResponseRequest,
    TranscriptFinal,
    UtteranceText,
    encode,
    now_ms,
)
from shared.settings import ConversationSettings
from tests.runtime_helpers import FAST, conversation_service, entries, pipeline, running, until


async def _write(redis: aioredis.Redis, keys: Keys, entry: Any) -> None:
    key = keys.control_for("c") if isinstance(entry, ConversationStarted) else keys.input("c")
    await add_with_rings(redis, keys, [(key, encode(entry), None)])


def _quiet(uid: str, text: str) -> UtteranceText:
    return UtteranceText(conversation_id="c", utterance_id=uid, text=text, sent_ms=now_ms(), respond=False)


async def _dones(redis: aioredis.Redis, keys: Keys) -> list[ResponseDone]:
    return [e for e in await entries(redis, keys.responses("c")) if isinstance(e, ResponseDone)]


async def test_turns_wait_for_the_request_and_survive_a_new_owner(
    redis_url: str, redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    common: dict[str, Any] = {"redis_url": redis_url, "key_prefix": prefix, **FAST, "lease_s": 60.0}
    async with pipeline(redis_url, prefix, lease_s=60.0) as (_, first):
        await _write(redis, keys, ConversationStarted(conversation_id="c"))
        await _write(redis, keys, _quiet("t1", "hello"))
        await _write(redis, keys, _quiet("t2", "how are you"))
        await _write(redis, keys, ResponseRequest(conversation_id="c", request_id="r1", sent_ms=now_ms()))

        async def answered(n: int) -> Any:
            async def check() -> bool:
                return len(await _dones(redis, keys)) == n
            return check

        await until(await answered(1))
        (done,) = await _dones(redis, keys)
        assert done.utterance_id == "r1" and done.prompt == "hello\nhow are you"
        assert done.text == 'I\'ve received your transcription: "hello\nhow are you" (turn 1)'
        finals = [e for e in await entries(redis, keys.transcripts("c")) if isinstance(e, TranscriptFinal)]
        assert [(f.utterance_id, f.respond) for f in finals] == [("t1", False), ("t2", False)]
        # A turn that waits, then the owner hands the conversation to a peer.
        await _write(redis, keys, _quiet("t3", "one more thing"))

        async def relayed() -> bool:
            return any(isinstance(e, TranscriptFinal) and e.utterance_id == "t3"
                       for e in await entries(redis, keys.transcripts("c")))

        await until(relayed)
        settings = ConversationSettings(conversation_engine="echo", **common)
        async with running(settings, await conversation_service(settings)) as peer:
            first.stop()

            async def moved() -> bool:
                return set(peer.live) == {"c"}

            await until(moved, timeout_s=5.0)
            await _write(redis, keys, ResponseRequest(conversation_id="c", request_id="r2", sent_ms=now_ms()))
            await _write(redis, keys, ResponseRequest(conversation_id="c", request_id="r2", sent_ms=now_ms()))
            await until(await answered(2))
            second = (await _dones(redis, keys))[1]
            # The new owner heard the waiting turn and knows the history (turn 2).
            assert second.utterance_id == "r2" and second.prompt == "one more thing"
            assert second.text.endswith("(turn 2)")


def test_unanswered_tail_stops_at_the_last_answered_turn() -> None:
    def final(uid: str, respond: bool) -> TranscriptFinal:
        return TranscriptFinal(conversation_id="c", utterance_id=uid, text=uid, sent_ms=1, final_ms=2,
                               respond=respond)

    history = History(10, answered=["a1", "r1"])
    tail = UnansweredTail(history)
    newest_first = [final("q3", False), ResponseRequest(conversation_id="c", request_id="r9", sent_ms=1),
                    final("q2", False), ResponseRequest(conversation_id="c", request_id="r1", sent_ms=1),
                    final("q1", False), final("a1", True)]
    assert tail.add(newest_first) is True
    assert tail.turns() == [("q2", "q2"), ("q3", "q3")]
