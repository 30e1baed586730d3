"""The OpenAI conversation engine against the fake Realtime server,
in-process over real WebSockets (tests/fake_realtime.py): the text flow,
history replayed into new sessions, expiry, drops, rate limits, bad keys."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from conversation_svc.engines.openai import OpenAIConversation
from conversation_svc.engines.stitcher import Stitcher
from shared.engines.base import Completed, ConversationSession, EngineError, TextDelta
from shared.history import Turn
from shared.realtime.connection import RealtimeAuthError
from tests.fake_realtime import FakeRealtimeServer
from tests.fake_realtime_script import answer_text
from tests.openai_engine_helpers import KEY, endpoint, fast_delays


def conversation(server: FakeRealtimeServer, **kw: Any) -> OpenAIConversation:
    return OpenAIConversation(endpoint(server, **kw), delays=fast_delays)


async def ask(session: ConversationSession, text: str) -> tuple[str, list[Any]]:
    events = [e async for e in session.respond(text)]
    assert isinstance(events[-1], Completed)
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    return "".join(e.text for e in events[:-1]), events


async def test_conversation_text_flow(fake: FakeRealtimeServer) -> None:
    session = await conversation(fake).open_session("c1", "Be brief.", [])
    try:
        text, events = await ask(session, "hello there")
        assert text == answer_text("hello there", 1)
        assert len(events) > 3  # several deltas, then Completed
        assert events[-1].usage["total_tokens"] == events[-1].usage["input_tokens"] + events[-1].usage["output_tokens"]
        text2, _ = await ask(session, "and again")
        assert text2 == answer_text("and again", 3)
    finally:
        await session.close()
    record = fake.sessions[0]
    assert record.query == {"model": ["gpt-realtime"]}
    assert record.headers["Authorization"] == f"Bearer {KEY}"
    assert "OpenAI-Beta" not in record.headers
    assert record.received[0]["session"] == {"type": "realtime", "output_modalities": ["text"],
                                             "instructions": "Be brief."}
    assert record.received_types()[1:] == ["conversation.item.create", "response.create"] * 2
    assert record.errors() == []


async def test_history_is_replayed_into_the_session(fake: FakeRealtimeServer) -> None:
    history = [Turn("u1", "first", "one"), Turn("u2", "second", "two")]
    session = await conversation(fake).open_session("c1", "sys", history)
    try:
        text, _ = await ask(session, "third")
    finally:
        await session.close()
    assert text == answer_text("third", 5)  # 4 replayed messages + this one
    received = fake.sessions[0].received
    assert [e["type"] for e in received] == ["session.update"] + ["conversation.item.create"] * 5 + ["response.create"]
    assert received[2]["item"]["content"] == [{"type": "output_text", "text": "one"}]


async def test_session_expiry_opens_a_new_session_and_replays(fake: FakeRealtimeServer) -> None:
    fake.faults.expire_after_responses = 2
    session = await conversation(fake).open_session("c1", "sys", [Turn("u0", "zero", "nil")])
    try:
        texts = [(await ask(session, f"q{i}"))[0] for i in range(4)]
    finally:
        await session.close()
    assert texts == [answer_text(f"q{i}", 3 + 2 * i) for i in range(4)]
    assert [s.closed_by_fault for s in fake.sessions] == ["session_expired", None]
    assert fake.sessions[1].received_types()[0] == "session.update"
    replayed = [e for e in fake.sessions[1].received if e["type"] == "conversation.item.create"][:6]
    assert [e["item"]["content"][0]["text"] for e in replayed] == [
        "zero", "nil", "q0", answer_text("q0", 3), "q1", answer_text("q1", 5)]


@pytest.mark.parametrize("drop_code", [1006, 1011])
async def test_drop_mid_response_retries_the_turn_once_without_repeating_text(
    fake: FakeRealtimeServer, drop_code: int
) -> None:
    fake.faults.drop_after_responses = 1
    fake.faults.drop_code = drop_code
    session = await conversation(fake).open_session("c1", "sys", [])
    try:
        first, _ = await ask(session, "a")
        second, events = await ask(session, "b")  # dropped after its first delta, retried
        third, _ = await ask(session, "c")
    finally:
        await session.close()
    assert (first, second, third) == (answer_text("a", 1), answer_text("b", 3), answer_text("c", 5))
    assert fake.sessions[0].closed_by_fault == "drop_after_responses"
    assert len(fake.sessions) == 2


async def test_two_drops_in_one_turn_give_a_retryable_error(fake: FakeRealtimeServer) -> None:
    fake.faults.drop_after_responses = 0
    fake.faults.drop_budget = 2
    session = await conversation(fake).open_session("c1", "sys", [])
    try:
        with pytest.raises(EngineError) as info:
            await ask(session, "a")
        assert info.value.retryable
        text, _ = await ask(session, "b")  # the next turn works on a new session
        assert text == answer_text("b", 1)
    finally:
        await session.close()


async def test_rate_limit_is_a_failed_turn_not_a_retry_loop(fake: FakeRealtimeServer) -> None:
    fake.faults.rate_limit_responses = 1
    session = await conversation(fake).open_session("c1", "sys", [])
    try:
        with pytest.raises(EngineError) as info:
            await ask(session, "a")
        assert info.value.code == "rate_limit_exceeded"
        assert not info.value.retryable
        assert "Rate limit reached" in str(info.value)
        text, _ = await ask(session, "b")
    finally:
        await session.close()
    # One response.create for the failed turn (not retried), one for the next.
    assert fake.sessions[0].received_types().count("response.create") == 2
    assert text == answer_text("b", 2)  # the failed turn's user item stays in the upstream conversation
    assert len(fake.sessions) == 1


async def test_invalid_key_is_a_clear_error_and_never_logged(
    fake: FakeRealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = "sk-WRONG-key-do-not-print-0123456789"
    with pytest.raises(RealtimeAuthError) as info:
        await conversation(fake, key=bad).open_session("c1", "sys", [])
    assert info.value.code == "invalid_api_key" and not info.value.retryable
    assert "HTTP 401" in str(info.value) and "OPENAI_API_KEY" in str(info.value)
    assert fake.rejected_handshakes == [401]  # no retry loop
    assert bad not in str(info.value)
    assert bad not in caplog.text
    assert any("refused the API key" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


async def test_close_3000_invalid_key_is_fatal(fake: FakeRealtimeServer) -> None:
    fake.faults.close_3000_on_open = True
    with pytest.raises(EngineError) as info:
        await conversation(fake).open_session("c1", "sys", [])
    assert info.value.code == "invalid_api_key" and not info.value.retryable
    assert len(fake.sessions) == 1


async def test_key_never_in_logs_during_a_session(fake: FakeRealtimeServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.faults.drop_after_responses = 1
    session = await conversation(fake).open_session("c1", "sys", [])
    try:
        await ask(session, "a")
        await ask(session, "b")
    finally:
        await session.close()
    assert caplog.records  # websockets' debug log (request headers included) was captured
    assert KEY not in caplog.text
    assert all(KEY not in str(r.args) for r in caplog.records)


def test_stitcher_continues_or_restarts_visibly() -> None:
    same = Stitcher()
    assert [same.piece(p) for p in ("Hello ", "wor")] == ["Hello ", "wor"]
    same.restart()
    assert [same.piece(p) for p in ("Hel", "lo ", "world", "!")] == ["", "", "ld", "!"]
    assert same.streamed == "Hello world!"
    other = Stitcher()
    other.piece("Hello ")
    other.restart()
    assert [other.piece(p) for p in ("Hi", " there")] == ["\nHi", " there"]
    empty = Stitcher()
    empty.restart()
    assert empty.piece("x") == "x"
