"""The OpenAI conversation engine when a turn is abandoned mid-answer (the
worker cancels it, or the caller stops reading), against the fake Realtime
server (tests/fake_realtime.py): ``response.cancel`` goes upstream, the next
turn goes on the same session without a replay, the history holds what the
caller kept; when the cancel gets no answer, the connection is dropped and the
next turn replays."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any, Literal

import pytest

from conversation_svc.engines.openai import OpenAIConversation
from shared.engines.base import ConversationSession, TextDelta
from shared.history import Turn
from tests.fake_realtime import FakeRealtimeServer
from tests.fake_realtime_script import answer_text
from tests.openai_engine_helpers import endpoint, fast_delays
from tests.test_openai_conversation import ask

Abandon = Literal["cancel", "stop"]


def conversation(server: FakeRealtimeServer, cancel_settle_s: float = 2.0,
                 timeout_s: float = 5.0) -> OpenAIConversation:
    return OpenAIConversation(endpoint(server, timeout_s=timeout_s), delays=fast_delays,
                              cancel_settle_s=cancel_settle_s)


async def abandon_after(session: ConversationSession, text: str, how: Abandon, enough: str | None = None) -> str:
    """Read the answer to ``text`` until its first delta (or until it reads ``enough``),
    then abandon the turn: cancel the reading task (as the worker does) or stop
    reading. Returns what was read: the partial answer the worker remembers."""
    got: list[str] = []
    read = asyncio.Event()

    async def consume() -> None:
        async for event in session.respond(text):
            assert isinstance(event, TextDelta)
            got.append(event.text)
            if enough is None or "".join(got) == enough:
                read.set()

    if how == "stop":
        async with aclosing(session.respond(text)) as events:
            async for event in events:
                assert isinstance(event, TextDelta)
                got.append(event.text)
                if enough is None or "".join(got) == enough:
                    break
    else:
        task = asyncio.create_task(consume())
        await read.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return "".join(got)


def pairs(session: ConversationSession) -> list[tuple[str, str]]:
    return [(t.user_text, t.assistant_text) for t in session.state.history]  # type: ignore[attr-defined]


def item_texts(received: list[dict[str, Any]]) -> list[str]:
    return [e["item"]["content"][0]["text"] for e in received if e["type"] == "conversation.item.create"]


@pytest.mark.parametrize("how", ["cancel", "stop"])
async def test_an_abandoned_turn_is_cancelled_upstream_and_the_next_goes_on_the_same_session(
    fake: FakeRealtimeServer, how: Abandon
) -> None:
    fake.faults.stall_responses = 1  # the first answer stops after its first delta, until cancelled
    session = await conversation(fake).open_session("c1", "sys", [])
    try:
        partial = await abandon_after(session, "a", how)
        session.remember(Turn("u1", "a", partial))  # what the worker does with a cancelled answer
        fake.faults.expire_after_responses = 1  # after the next answer: a new session, to see the replay
        second, _ = await ask(session, "b")
        assert len(fake.sessions) == 1
        third, _ = await ask(session, "c")
    finally:
        await session.close()
    assert partial == answer_text("a", 1)[:len(partial)] and 0 < len(partial) < len(answer_text("a", 1))
    first = fake.sessions[0]
    assert first.received_types() == ["session.update", "conversation.item.create", "response.create",
                                      "response.cancel", "conversation.item.create", "response.create"]
    created = [e for e in first.sent if e["type"] == "response.created"][0]["response"]["id"]
    assert first.received[3]["response_id"] == created
    cancelled = [e["response"] for e in first.sent if e["type"] == "response.done"][0]
    assert (cancelled["id"], cancelled["status"]) == (created, "cancelled")
    assert [e["code"] for e in first.errors()] == ["session_expired"]  # the expiry asked for; no refusal
    # The upstream conversation kept the partial answer: user, assistant, user.
    assert second == answer_text("b", 3)
    # The engine's history holds it once, with the text the worker kept: the replay shows it.
    assert pairs(session) == [("a", partial), ("b", second), ("c", third)]
    assert item_texts(fake.sessions[1].received) == ["a", partial, "b", second, "c"]
    assert third == answer_text("c", 5)


async def test_a_turn_abandoned_as_its_answer_ends_leaves_one_history_entry(fake: FakeRealtimeServer) -> None:
    """The caller stops reading after the last delta, before the done: the cancel races
    the end (the response ends ``completed``, or ``cancelled`` with all of it); the engine
    keeps nothing of the turn, the caller's remember is its one entry."""
    session = await conversation(fake).open_session("c1", "sys", [])
    whole = answer_text("a", 1)
    try:
        kept = await abandon_after(session, "a", "stop", enough=whole)
        session.remember(Turn("u1", "a", kept))
        second, _ = await ask(session, "b")
    finally:
        await session.close()
    assert kept == whole
    assert len(fake.sessions) == 1
    assert fake.sessions[0].received_types().count("response.cancel") == 1
    assert second == answer_text("b", 3)
    assert pairs(session) == [("a", whole), ("b", second)]


async def test_the_cancelled_task_does_not_wait_for_the_upstream_cancel(fake: FakeRealtimeServer) -> None:
    fake.faults.stall_responses = 1
    fake.faults.ignore_cancels = True  # the response never ends
    session = await conversation(fake, cancel_settle_s=60, timeout_s=60).open_session("c1", "sys", [])
    try:
        await abandon_after(session, "a", "cancel")
        # The worker's task is done while the cancel still waits for the response's end.
        settling = session._settling  # type: ignore[attr-defined]
        assert settling is not None and not settling.done()
    finally:
        await session.close()  # stops the wait
    assert settling.done()


async def test_an_unanswered_cancel_drops_the_connection_and_the_next_turn_replays(
    fake: FakeRealtimeServer,
) -> None:
    fake.faults.stall_responses = 1
    fake.faults.ignore_cancels = True  # neither a cancelled done nor an error: the bound passes
    session = await conversation(fake, cancel_settle_s=0.05).open_session("c1", "sys", [])
    try:
        partial = await abandon_after(session, "a", "cancel")
        session.remember(Turn("u1", "a", partial))
        second, _ = await ask(session, "b")
    finally:
        await session.close()
    assert fake.sessions[0].received_types()[-1] == "response.cancel"
    assert len(fake.sessions) == 2
    assert fake.sessions[1].received_types() == ["session.update"] + ["conversation.item.create"] * 3 + [
        "response.create"]
    assert item_texts(fake.sessions[1].received) == ["a", partial, "b"]
    assert second == answer_text("b", 3)
    assert pairs(session) == [("a", partial), ("b", second)]
