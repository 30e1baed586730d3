"""The pure conversation state machine and the retry policy, driven by recorded
event sequences: no socket, no event loop (transcription: test_realtime_state.py)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.history import Turn
from shared.realtime.client_events import ClientEvent, to_wire
from shared.realtime.conversation_state import ConversationState, Done, Failed, Settled, TextOut, failure_of
from shared.realtime.retry_policy import classify_close, classify_handshake
from shared.realtime.server_events import ResponseObject, ServerEvent, parse_server_event
from shared.realtime.session_common import sent_events


def server(frame: dict[str, Any]) -> ServerEvent:
    return parse_server_event(frame)



# --- conversation ------------------------------------------------------------------


def response_done(rid: str, status: str = "completed", **details: Any) -> ServerEvent:
    response: dict[str, Any] = {"id": rid, "status": status, "output": [],
                                "usage": {"total_tokens": 9, "input_tokens": 5, "output_tokens": 4,
                                          "input_token_details": {"text_tokens": 5}}}
    if details:
        response["status_details"] = details
    return server({"type": "response.done", "response": response})


def text_delta(rid: str, delta: str) -> ServerEvent:
    return server({"type": "response.output_text.delta", "response_id": rid, "item_id": "x", "delta": delta})


def test_conversation_turn_two_step_flow_and_text_accumulation() -> None:
    state = ConversationState("Be brief.", max_output_tokens=64)
    out = state.submit("hello")
    events = sent_events(out)
    assert [e.type for e in events] == ["conversation.item.create", "response.create"]
    assert json_of(events[0])["item"]["content"] == [{"type": "input_text", "text": "hello"}]
    assert json_of(events[1])["response"] == {"output_modalities": ["text"], "max_output_tokens": 64}
    assert state.on_event(server({"type": "response.created", "response": {"id": "r1"}})) == []
    assert state.on_event(text_delta("r1", "Hi ")) == [TextOut("Hi ")]
    assert state.on_event(text_delta("other", "ignored")) == []
    assert state.on_event(text_delta("r1", "there")) == [TextOut("there")]
    done = state.on_event(response_done("r1"))
    assert done == [Done("Hi there", {"total_tokens": 9, "input_tokens": 5, "output_tokens": 4})]
    assert [(t.user_text, t.assistant_text) for t in state.history] == [("hello", "Hi there")]


def json_of(event: ClientEvent) -> dict[str, Any]:
    import json

    return json.loads(to_wire(event))


def test_only_one_response_at_a_time_turns_queue() -> None:
    state = ConversationState(None)
    assert len(sent_events(state.submit("one"))) == 2
    assert state.submit("two") == []  # queued: never a second response.create while one is active
    state.on_event(server({"type": "response.created", "response": {"id": "r1"}}))
    out = state.on_event(response_done("r1"))
    assert isinstance(out[0], Done)
    started = sent_events(out[1:])
    assert [e.type for e in started] == ["conversation.item.create", "response.create"]
    assert json_of(started[0])["item"]["content"][0]["text"] == "two"


@pytest.mark.parametrize(("status", "details", "code", "words"), [
    ("failed", {"type": "failed", "error": {"type": "tokens", "code": "rate_limit_exceeded", "message": "slow"}},
     "rate_limit_exceeded", "slow"),
    ("failed", {"type": "failed", "error": {"type": "insufficient_quota", "code": "insufficient_quota",
                                            "message": "quota"}}, "insufficient_quota", "quota"),
    ("failed", {}, "response_failed", "failed"),
    ("cancelled", {"type": "cancelled", "reason": "client_cancelled"}, "response_cancelled", "client_cancelled"),
    ("incomplete", {"type": "incomplete", "reason": "max_output_tokens"}, "response_incomplete", "max_output_tokens"),
])
def test_response_done_failures_map_to_reasons(status: str, details: dict, code: str, words: str) -> None:
    state = ConversationState(None)
    state.submit("hi")
    state.on_event(server({"type": "response.created", "response": {"id": "r1"}}))
    state.on_event(text_delta("r1", "partial"))
    out = state.on_event(response_done("r1", status, **details))
    assert len(out) == 1 and isinstance(out[0], Failed)
    assert out[0].code == code and words in out[0].message
    assert not state.history  # a failed turn is not history
    assert not state.busy


def test_failure_of_without_details() -> None:
    assert failure_of(ResponseObject(id="r", status="incomplete")) == Failed(
        "response_incomplete", "the response was incomplete")


def test_an_error_naming_our_response_create_fails_the_turn() -> None:
    state = ConversationState(None)
    create = sent_events(state.submit("hi"))[1]
    out = state.on_event(server({"type": "error", "error": {
        "type": "invalid_request_error", "code": "conversation_already_has_active_response",
        "message": "busy", "event_id": create.event_id}}))
    assert out == [Failed("conversation_already_has_active_response", "busy")]
    # An unrelated error does nothing.
    state.submit("again")
    assert state.on_event(server({"type": "error", "error": {"type": "x", "code": "y", "message": "z"}})) == []


def test_replay_items_user_input_text_then_assistant_output_text() -> None:
    state = ConversationState("sys", [Turn("u1", "q1", "a1"), Turn("u2", "q2", "")], max_turns=10)
    items = [json_of(e) for e in state.replay()]
    assert [i["item"]["role"] for i in items] == ["user", "assistant", "user"]
    assert items[0]["item"]["content"] == [{"type": "input_text", "text": "q1"}]
    assert items[1]["item"]["content"] == [{"type": "output_text", "text": "a1"}]
    assert all(i["type"] == "conversation.item.create" for i in items)  # no response.create
    update = json_of(state.session_update())
    assert update["session"] == {"type": "realtime", "output_modalities": ["text"], "instructions": "sys"}


def test_history_is_bounded_and_remember_adds() -> None:
    state = ConversationState(None, [Turn(f"u{i}", f"q{i}", f"a{i}") for i in range(5)], max_turns=3)
    state.remember(Turn("u9", "q9", "a9"))
    assert [t.utterance_id for t in state.history] == ["u3", "u4", "u9"]


def test_connection_lost_mid_response_then_resume_restarts_the_turn() -> None:
    state = ConversationState(None)
    state.submit("hi")
    state.on_event(server({"type": "response.created", "response": {"id": "r1"}}))
    state.on_event(text_delta("r1", "par"))
    turn = state.connection_lost()
    assert turn is not None and turn.parts == ["par"] and not state.busy
    assert state.on_event(text_delta("r1", "stale")) == []
    restarted = sent_events(state.resume(turn))
    assert [e.type for e in restarted] == ["conversation.item.create", "response.create"]
    state.on_event(server({"type": "response.created", "response": {"id": "r2"}}))
    state.on_event(text_delta("r2", "full"))
    assert state.on_event(response_done("r2")) == [Done("full", {"total_tokens": 9, "input_tokens": 5,
                                                                 "output_tokens": 4})]



def test_cancel_active_ends_the_turn_at_its_done_and_keeps_nothing_of_it() -> None:
    state = ConversationState(None)
    assert state.cancel_active() == []  # nothing active: nothing to cancel
    state.submit("hi")
    state.on_event(server({"type": "response.created", "response": {"id": "r1"}}))
    assert state.on_event(text_delta("r1", "par")) == [TextOut("par")]
    cancel = sent_events(state.cancel_active())
    assert [json_of(e) for e in cancel] == [{"type": "response.cancel", "event_id": cancel[0].event_id,
                                             "response_id": "r1"}]
    assert state.cancel_active() == []  # one cancel per turn
    assert state.busy  # one response at a time: the next turn waits for this one's end
    assert state.submit("next") == []
    assert state.on_event(text_delta("r1", "tial")) == []  # nobody reads a cancelled turn
    out = state.on_event(response_done("r1", "cancelled", type="cancelled", reason="client_cancelled"))
    assert out[0] == Settled("cancelled")
    assert [e.type for e in sent_events(out[1:])] == ["conversation.item.create", "response.create"]
    assert not state.history  # the caller remembers what it kept of a cancelled turn


def test_a_cancel_that_raced_the_end_settles_without_history() -> None:
    state = ConversationState(None)
    state.submit("hi")
    state.on_event(server({"type": "response.created", "response": {"id": "r1"}}))
    state.on_event(text_delta("r1", "all"))
    state.cancel_active()
    assert state.on_event(response_done("r1")) == [Settled("completed")]
    assert not state.history and not state.busy


def test_a_cancel_before_the_response_is_known_targets_the_active_one() -> None:
    state = ConversationState(None)
    state.submit("hi")
    cancel = sent_events(state.cancel_active())[0]
    assert "response_id" not in json_of(cancel)
    # A refusal other than "not active": the response runs on, its done ends the turn.
    other = {"type": "invalid_request_error", "code": "invalid_value", "message": "no", "event_id": cancel.event_id}
    assert state.on_event(server({"type": "error", "error": other})) == []
    assert state.busy
    gone = {**other, "code": "response_cancel_not_active"}
    assert state.on_event(server({"type": "error", "error": gone})) == [Settled("response_cancel_not_active")]
    assert not state.busy and not state.history

# --- retry policy ----------------------------------------------------------------


@pytest.mark.parametrize(("code", "reason", "last_error", "decision"), [
    (1001, "", None, "reconnect"),
    (1006, "", None, "reconnect"),
    (1011, "internal error", None, "reconnect"),
    (1012, "", None, "reconnect"),
    (1013, "", None, "reconnect"),
    (None, "", None, "reconnect"),
    (1001, "session_expired", None, "new_session"),
    (1001, "", "session_expired", "new_session"),
    (3000, "invalid_api_key", None, "fatal"),
    (1008, "invalid_api_key", None, "fatal"),
    (4000, "beta_api_shape_disabled", None, "fatal"),
    (1002, "", None, "fatal"),
])
def test_classify_close(code: int | None, reason: str, last_error: str | None, decision: str) -> None:
    assert classify_close(code, reason, last_error) == decision


@pytest.mark.parametrize(("status", "decision"), [
    (401, "fatal"), (403, "fatal"), (400, "fatal"), (404, "fatal"),
    (429, "reconnect"), (500, "reconnect"), (503, "reconnect"), (408, "reconnect"),
])
def test_classify_handshake(status: int, decision: str) -> None:
    assert classify_handshake(status) == decision


def test_every_realtime_module_but_the_connection_is_pure() -> None:
    """Sans-I/O: only shared/realtime/connection.py touches a socket, an event loop or a clock."""
    import ast
    from pathlib import Path

    import shared.realtime

    package = Path(str(shared.realtime.__file__)).parent
    pure = sorted(path for path in package.glob("*.py") if path.name != "connection.py")
    assert {p.name for p in pure} >= {
        "session_config.py", "client_events.py", "server_events.py",
        "session_common.py", "transcription_state.py", "conversation_state.py", "retry_policy.py",
    }
    for path in pure:
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"asyncio", "websockets", "redis", "time", "socket"}, path.name
