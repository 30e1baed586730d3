"""The pure Realtime state machines, driven by recorded event sequences:
no socket, no event loop."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from shared.history import Turn
from shared.realtime.client_events import ClientEvent, to_wire
from shared.realtime.conversation_state import ConversationState, Done, Failed, TextOut, failure_of
from shared.realtime.retry_policy import classify_close, classify_handshake
from shared.realtime.server_events import ResponseObject, ServerEvent, parse_server_event
from shared.realtime.session_common import sent_events
from shared.realtime.transcription_state import Delta, Final, Reject, Skip, TranscriptionState

CHUNK = base64.b64encode(b"\x01\x00" * 2400).decode()  # 100 ms of PCM16 at 24 kHz
CHUNK_BYTES = 4800


def server(frame: dict[str, Any]) -> ServerEvent:
    return parse_server_event(frame)


def committed(item: str, previous: str | None) -> ServerEvent:
    return server({"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": previous})


def completed(item: str, text: str) -> ServerEvent:
    return server({"type": "conversation.item.input_audio_transcription.completed", "item_id": item,
                   "content_index": 0, "transcript": text})


def failed(item: str) -> ServerEvent:
    return server({"type": "conversation.item.input_audio_transcription.failed", "item_id": item,
                   "content_index": 0, "error": {"type": "transcription_error", "code": "audio_unintelligible",
                                                 "message": "could not transcribe"}})


def types(actions: list) -> list[str]:
    return [e.type for e in sent_events(actions)]


def speak(state: TranscriptionState, uid: str, first_id: int, chunks: int = 2, sent_ms: int = 1000) -> list:
    """Feed ``chunks`` audio chunks and an audio.end; entry ids first_id, first_id+1, ..."""
    actions: list = []
    for k in range(chunks):
        actions += state.chunk(f"{first_id + k}-0", uid, CHUNK, CHUNK_BYTES)
    actions += state.end(f"{first_id + chunks}-0", uid, sent_ms)
    return actions


# --- transcription: client commits ----------------------------------------------------


def test_client_mode_appends_then_commits() -> None:
    state = TranscriptionState("client")
    actions = speak(state, "u1", 1)
    assert types(actions) == ["input_audio_buffer.append", "input_audio_buffer.append", "input_audio_buffer.commit"]
    assert state.outstanding == 1
    assert state.on_event(committed("item_a", None), 0) == []
    assert state.on_event(server({"type": "conversation.item.input_audio_transcription.delta", "item_id": "item_a",
                                  "delta": "hel"}), 0) == [Delta("u1", "hel")]
    assert state.on_event(completed("item_a", "hello"), 0) == [Final("u1", "hello", 1000, ("1-0", "2-0", "3-0"))]
    assert state.outstanding == 0


def test_out_of_order_completions_are_released_in_commit_order() -> None:
    state = TranscriptionState("client")
    for n, uid in enumerate(("u1", "u2", "u3")):
        speak(state, uid, 10 * n + 1, sent_ms=n)
    state.on_event(committed("i1", None), 0)
    state.on_event(committed("i2", "i1"), 0)
    state.on_event(committed("i3", "i2"), 0)
    # Completions arrive 3, 2, 1: nothing may be released before u1.
    assert state.on_event(completed("i3", "three"), 0) == []
    assert state.on_event(completed("i2", "two"), 0) == []
    released = state.on_event(completed("i1", "one"), 0)
    assert [(a.utterance_id, a.text) for a in released] == [("u1", "one"), ("u2", "two"), ("u3", "three")]
    assert released[1].entry_ids == ("11-0", "12-0", "13-0")


def test_completion_before_its_commit_event_waits_for_it() -> None:
    state = TranscriptionState("client")
    speak(state, "u1", 1)
    assert state.on_event(completed("i1", "early"), 0) == []
    assert [a.text for a in state.on_event(committed("i1", None), 0)] == ["early"]


def test_short_or_empty_audio_is_never_committed() -> None:
    state = TranscriptionState("client")
    actions = state.chunk("1-0", "u1", base64.b64encode(b"\x00\x01" * 100).decode(), 200)
    actions += state.end("2-0", "u1", 5)
    # 200 bytes ~ 4 ms: clear the stray audio, skip both entries, no commit.
    assert types(actions) == ["input_audio_buffer.append", "input_audio_buffer.clear"]
    skip = actions[-1]
    assert isinstance(skip, Skip) and skip.entry_ids == ("1-0", "2-0") and "100 ms" in skip.reason
    only_end = state.end("3-0", "u2", 6)
    assert only_end == [Skip(("3-0",), "empty audio buffer", "u2")]
    assert state.outstanding == 0


def test_failed_transcription_is_released_as_a_skip_and_never_stalls_the_order() -> None:
    state = TranscriptionState("client")
    speak(state, "u1", 1)
    speak(state, "u2", 10)
    state.on_event(committed("i1", None), 0)
    state.on_event(committed("i2", "i1"), 0)
    assert state.on_event(completed("i2", "second"), 0) == []
    released = state.on_event(failed("i1"), 0)
    assert isinstance(released[0], Skip) and released[0].failed and "audio_unintelligible" in released[0].reason
    assert released[0].entry_ids == ("1-0", "2-0", "3-0")
    assert isinstance(released[1], Final) and released[1].text == "second"


def test_a_refused_commit_skips_its_utterance() -> None:
    state = TranscriptionState("client")
    actions = speak(state, "u1", 1)
    commit = sent_events(actions)[-1]
    error = server({"type": "error", "error": {"type": "invalid_request_error",
                                               "code": "input_audio_buffer_commit_empty", "message": "too small",
                                               "event_id": commit.event_id}})
    out = state.on_event(error, 0)
    assert isinstance(out[0], Skip) and out[0].failed and "input_audio_buffer_commit_empty" in out[0].reason
    assert state.outstanding == 0


def test_an_utterance_over_the_audio_cap_is_refused_whole_up_to_its_end() -> None:
    state = TranscriptionState("client", max_utterance_bytes=3 * CHUNK_BYTES)
    actions: list = []
    for k in range(3):
        actions += state.chunk(f"{k + 1}-0", "u1", CHUNK, CHUNK_BYTES)
    assert types(actions) == ["input_audio_buffer.append"] * 3
    refused = state.chunk("4-0", "u1", CHUNK, CHUNK_BYTES)
    assert types(refused) == ["input_audio_buffer.clear"]
    (reject,) = [a for a in refused if isinstance(a, Reject)]
    assert (reject.entry_ids, reject.utterance_id, reject.first) == (("1-0", "2-0", "3-0", "4-0"), "u1", True)
    assert state.chunk("5-0", "u1", CHUNK, CHUNK_BYTES) == [Reject(("5-0",), reject.reason, "u1", first=False)]
    assert state.end("6-0", "u1", 1000) == [Reject(("6-0",), reject.reason, "u1", first=False)]
    assert not state.has_open_audio and state.outstanding == 0
    # The next utterance is a new one, sent and committed as usual.
    assert types(speak(state, "u2", 7)) == ["input_audio_buffer.append"] * 2 + ["input_audio_buffer.commit"]
    # A reconnect re-sends the audio kept for the outstanding utterance only: none of the refused one.
    assert types(state.on_reconnect()) == ["input_audio_buffer.append"] * 2 + ["input_audio_buffer.commit"]


def test_server_vad_an_utterance_over_the_audio_cap_is_refused_and_the_next_chunk_starts_afresh() -> None:
    state = TranscriptionState("server_vad", max_utterance_bytes=2 * CHUNK_BYTES)
    state.chunk("1-0", None, CHUNK, CHUNK_BYTES)
    state.chunk("2-0", None, CHUNK, CHUNK_BYTES)
    refused = state.chunk("3-0", None, CHUNK, CHUNK_BYTES)
    assert types(refused) == ["input_audio_buffer.clear"]
    assert [a.entry_ids for a in refused if isinstance(a, Reject)] == [("1-0", "2-0", "3-0")]
    assert types(state.chunk("4-0", None, CHUNK, CHUNK_BYTES)) == ["input_audio_buffer.append"]
    assert state.on_event(committed("item_a", None), 0) == []
    assert state.on_event(completed("item_a", "after"), 0) == [Final("item_a", "after", 0, ("4-0",))]


def test_typed_utterance_keeps_its_place_behind_spoken_ones() -> None:
    state = TranscriptionState("client")
    speak(state, "u1", 1)
    assert state.text("9-0", "t1", "typed", 7) == []  # waits for u1
    state.on_event(committed("i1", None), 0)
    released = state.on_event(completed("i1", "spoken"), 0)
    assert [(a.utterance_id, a.text) for a in released] == [("u1", "spoken"), ("t1", "typed")]
    assert state.text("10-0", "t2", "alone", 8) == [Final("t2", "alone", 8, ("10-0",))]


def test_empty_transcript_is_skipped_not_sent_as_a_final() -> None:
    state = TranscriptionState("client")
    speak(state, "u1", 1)
    state.on_event(committed("i1", None), 0)
    out = state.on_event(completed("i1", "  "), 0)
    assert isinstance(out[0], Skip) and not out[0].failed


def test_reconnect_resends_audio_of_every_utterance_without_a_final() -> None:
    state = TranscriptionState("client")
    speak(state, "u1", 1, chunks=2)
    speak(state, "u2", 10, chunks=1)
    state.on_event(committed("old1", None), 0)
    state.on_event(completed("old1", "first"), 0)  # released: not re-sent
    state.on_event(committed("old2", "old1"), 0)  # committed, transcript lost with the socket
    state.chunk("20-0", "u3", CHUNK, CHUNK_BYTES)  # open utterance, not ended yet
    actions = state.on_reconnect()
    assert types(actions) == ["input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.append"]
    # Old item ids mean nothing on the new session.
    assert state.on_event(completed("old2", "stale"), 0) == []
    state.on_event(committed("new1", None), 0)
    out = state.on_event(completed("new1", "second"), 0)
    assert out == [Final("u2", "second", 1000, ("10-0", "11-0"))]
    end = state.end("21-0", "u3", 3)
    assert types(end) == ["input_audio_buffer.commit"]


def test_flush_commits_an_open_utterance_and_abandon_skips_the_rest() -> None:
    state = TranscriptionState("client")
    state.chunk("1-0", "u1", CHUNK, CHUNK_BYTES)
    assert types(state.flush(now_ms=42)) == ["input_audio_buffer.commit"]
    state.text("2-0", "t1", "typed", 5)
    out = state.abandon("timed out")
    assert out == [Skip(("1-0",), "timed out", "u1", failed=True), Final("t1", "typed", 5, ("2-0",))]
    assert state.outstanding == 0


# --- transcription: server VAD ----------------------------------------------------------


def test_server_vad_commits_close_utterances_and_order_follows_previous_item_id() -> None:
    state = TranscriptionState("server_vad")
    state.chunk("1-0", None, CHUNK, CHUNK_BYTES)
    state.chunk("2-0", None, CHUNK, CHUNK_BYTES)
    assert state.end("3-0", "u1", 100) == []  # audio.end gives sent_ms; the server commits
    assert state.on_event(committed("A", None), 500) == []
    state.chunk("4-0", None, CHUNK, CHUNK_BYTES)
    state.on_event(committed("B", "A"), 600)
    state.end("5-0", None, 700)  # arrived after B's commit: belongs to B
    state.chunk("6-0", None, CHUNK, CHUNK_BYTES)
    state.on_event(committed("C", "B"), 800)
    out = state.on_event(completed("C", "c"), 0) + state.on_event(completed("B", "b"), 0)
    assert out == []
    out = state.on_event(completed("A", "a"), 0)
    assert [(a.utterance_id, a.text, a.sent_ms, a.entry_ids) for a in out] == [
        ("u1", "a", 100, ("1-0", "2-0", "3-0")),
        ("B", "b", 700, ("4-0", "5-0")),
        ("C", "c", 800, ("6-0",)),
    ]


def test_server_vad_places_an_item_after_its_previous_item() -> None:
    state = TranscriptionState("server_vad")
    state.chunk("1-0", "u1", CHUNK, CHUNK_BYTES)
    state.on_event(committed("A", None), 1)
    state.chunk("2-0", "u3", CHUNK, CHUNK_BYTES)
    state.on_event(committed("C", "B"), 3)  # B unknown yet: appended
    state.chunk("3-0", "u2", CHUNK, CHUNK_BYTES)
    state.on_event(committed("B", "A"), 2)  # goes right after A
    out = (state.on_event(completed("C", "c"), 0) + state.on_event(completed("B", "b"), 0)
           + state.on_event(completed("A", "a"), 0))
    assert [a.text for a in out] == ["a", "b", "c"]


def test_server_vad_reconnect_fails_committed_items_and_resends_open_audio() -> None:
    state = TranscriptionState("server_vad")
    state.chunk("1-0", "u1", CHUNK, CHUNK_BYTES)
    state.on_event(committed("A", None), 1)
    state.chunk("2-0", "u2", CHUNK, CHUNK_BYTES)
    actions = state.on_reconnect()
    assert types(actions) == ["input_audio_buffer.append"]
    skip = [a for a in actions if isinstance(a, Skip)]
    assert skip and skip[0].entry_ids == ("1-0",) and skip[0].failed


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
