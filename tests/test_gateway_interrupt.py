"""Interruptions through the gateway, driven by the official openai SDK: a
``response.cancel``, a truncation of what was played, and a cancel racing a
takeover. The echo engine streams slowly (ECHO_DELTA_DELAY_MS) so a cancel
lands mid-answer, and answers ``/recall`` with the last answer its context
holds: what the model saw. Speech over an answer (server VAD) is in
tests/test_gateway_voice.py."""

from __future__ import annotations

import base64
import signal
from typing import Any

import redis.asyncio as aioredis

from shared.devstack import ServiceProcess, Stack
from shared.keys import Keys
from shared.models import ResponseDone, decode_fields
from tests.conftest import wait_for_workers
from tests.gateway_helpers import client, collect_until, of_type, start_gateway

SLOW = {"ECHO_DELTA_DELAY_MS": "150", "ECHO_WORDS_PER_DELTA": "1"}


def _is(type_: str) -> Any:
    return lambda e: e.type == type_


async def _text_session(conn: Any, modalities: list[str]) -> str:
    created = await collect_until(conn, _is("session.created"))
    await conn.session.update(session={"type": "realtime", "output_modalities": modalities,
                                       "audio": {"input": {"turn_detection": None}}})
    await collect_until(conn, _is("session.updated"))
    return str(created[-1].session.conversation_id)


async def _ask(conn: Any, text: str) -> None:
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                               "content": [{"type": "input_text", "text": text}]})
    await conn.response.create()


async def _dones(redis_url: str, prefix: str, conversation_id: str) -> list[ResponseDone]:
    r = aioredis.Redis.from_url(redis_url)
    try:
        rows = await r.xrange(Keys(prefix=prefix).responses(conversation_id))
    finally:
        await r.aclose()
    return [e for e in (decode_fields(f) for _, f in rows) if isinstance(e, ResponseDone)]


def _answer_text(done_event: Any) -> str:
    content = done_event.response.output[0].content[0]
    return str(content.text if content.text is not None else content.transcript)


async def test_response_cancel_stops_the_answer_and_the_context_keeps_what_was_said(
    stack: Stack, redis_url: str, prefix: str
) -> None:
    stack.start("transcriber_svc")
    stack.start("conversation_svc", SLOW)
    wait_for_workers(redis_url, prefix, 2)
    _, base = start_gateway(stack)
    async with client(base).realtime.connect(model="local") as conn:
        conversation_id = await _text_session(conn, ["text"])
        await _ask(conn, "tell me a long story about the sea and the wind")
        seen = await collect_until(conn, _is("response.output_text.delta"))
        await conn.response.cancel()
        seen += await collect_until(conn, _is("response.done"))
        done = seen[-1].response
        assert done.status == "cancelled" and done.status_details.type == "cancelled"
        partial = _answer_text(seen[-1])
        # Nothing more of it: the next events belong to the next answer.
        await _ask(conn, "/recall")
        after = await collect_until(conn, _is("response.done"))
        assert {e.response.id for e in after if e.type.startswith("response.") and hasattr(e, "response")} \
            == {after[-1].response.id} != done.id
        assert not [e for e in after if getattr(e, "response_id", None) == done.id]
        recalled = _answer_text(after[-1])
    # The pipeline wrote one done for the cancelled answer, cancelled, with the text produced by then.
    dones = await _dones(redis_url, prefix, conversation_id)
    assert [d.status for d in dones] == ["cancelled", "completed"]
    full = 'I\'ve received your transcription: "tell me a long story about the sea and the wind" (turn 1)'
    assert full.startswith(dones[0].text) and len(dones[0].text) < len(full)
    assert full.startswith(partial)
    # The engine's context holds the cancelled answer as far as it went, not the whole answer.
    assert recalled == f'I said: "{dones[0].text}" (turn 2)'
    # A cancel with nothing active is an error.


async def test_truncate_keeps_only_what_was_played(stack: Stack, redis_url: str, prefix: str) -> None:
    stack.start("transcriber_svc")
    stack.start("conversation_svc")
    wait_for_workers(redis_url, prefix, 2)
    _, base = start_gateway(stack)
    async with client(base).realtime.connect(model="local") as conn:
        await _text_session(conn, ["audio"])
        await _ask(conn, "First the weather is fine. Then we walk to the harbour. Finally we eat fish.")
        seen = await collect_until(conn, _is("response.done"), timeout_s=60)
        spoken = _answer_text(seen[-1])
        item_id = seen[-1].response.output[0].id
        audio = b"".join(base64.b64decode(e.delta) for e in of_type(seen, "response.output_audio.delta"))
        played_ms = len(audio) // 48 // 3  # the user heard the first third
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=played_ms)
        truncated = (await collect_until(conn, _is("conversation.item.truncated")))[-1]
        assert truncated.item_id == item_id and truncated.audio_end_ms == played_ms
        await _ask(conn, "/recall")
        recalled = _answer_text((await collect_until(conn, _is("response.done"), timeout_s=60))[-1])
    heard = recalled.removeprefix('I said: "').removesuffix('" (turn 2)')
    assert heard and spoken.startswith(heard) and len(heard) < len(spoken) * 0.7
    assert "fish" not in heard


async def test_a_cancel_racing_a_takeover_still_takes_effect(stack: Stack, redis_url: str, prefix: str) -> None:
    stack.start("transcriber_svc")
    first: ServiceProcess = stack.start("conversation_svc", SLOW)
    wait_for_workers(redis_url, prefix, 2)
    _, base = start_gateway(stack)
    async with client(base).realtime.connect(model="local") as conn:
        conversation_id = await _text_session(conn, ["text"])
        await _ask(conn, "tell me a long story about the sea and the wind")
        await collect_until(conn, _is("response.output_text.delta"))
        # The owner freezes mid-answer; the cancel is written while nobody can act on it,
        # then a new owner takes the conversation over and replays request and cancel.
        first.signal(signal.SIGSTOP)
        await conn.response.cancel()
        cancelled = (await collect_until(conn, _is("response.done")))[-1].response
        assert cancelled.status == "cancelled"
        stack.start("conversation_svc", SLOW)
        first.signal(signal.SIGKILL)
        await _ask(conn, "and now?")
        after = await collect_until(conn, _is("response.done"), timeout_s=60)
        assert after[-1].response.status == "completed"
        assert not [e for e in after if getattr(e, "response_id", None) == cancelled.id]
    dones = await _dones(redis_url, prefix, conversation_id)
    # One done per answer: the cancelled one (written by the new owner, without running the
    # engine again) and the next.
    assert [d.status for d in dones] == ["cancelled", "completed"]
    assert len({d.utterance_id for d in dones}) == 2
