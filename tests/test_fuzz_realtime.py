"""Fuzzing the Realtime wire models and the session state machines.

Properties: :func:`parse_server_event` never raises (its documented contract:
what it cannot model comes back as :class:`UnknownServerEvent` with a
``problem``), whatever the frame; an event parsed off the wire is valid
Unicode (its text goes into stream entries); server events and client events
survive their own JSON round trip; the state machines, fed valid-shaped server
events in any order between their other calls, never raise (they document no
error) and what they emit can be sent and written. Case counts: the
hypothesis profiles in conftest.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any, get_args

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from shared.history import Turn
from shared.models import encode_response_delta, encode_response_done, encode_transcript_final
from shared.realtime import server_events as se
from shared.realtime.client_events import (
    AssistantMessage,
    ConversationItemCreate,
    InputAudioBufferAppend,
    InputAudioBufferClear,
    InputAudioBufferCommit,
    InputText,
    OutputText,
    ResponseCancel,
    ResponseCreate,
    ResponseParams,
    SessionUpdate,
    UserMessage,
    to_wire,
)
from shared.realtime.conversation_state import ConversationState, Done, Failed, TextOut
from shared.realtime.server_events import KNOWN_SERVER_TYPES, UnknownServerEvent, parse_server_event
from shared.realtime.session_common import Send
from shared.realtime.session_config import (
    AudioConfig,
    AudioFormat,
    AudioInput,
    RealtimeSessionConfig,
    ServerVad,
    TranscriptionConfig,
    TranscriptionSessionConfig,
)
from shared.realtime.transcription_actions import Delta, Final, Skip
from shared.realtime.transcription_state import TranscriptionState
from tests.fuzz_helpers import any_text, deep_json, edited, finite, json_values, lone_surrogate_text, plain_json

pytestmark = pytest.mark.fuzz


# --- strategies -----------------------------------------------------------------------
json_objects = st.dictionaries(st.text(max_size=8), plain_json, max_size=3)


def server_event_strategies(
    ids: st.SearchStrategy[str], text: st.SearchStrategy[str], objects: st.SearchStrategy[Any] = json_objects,
) -> dict[type[BaseModel], st.SearchStrategy[BaseModel]]:
    """Every server event model, valid-shaped: ids from ``ids``, free text from ``text``,
    the free-form objects (session, item, usage, ...) from ``objects``."""
    opt_ids, opt_text = st.none() | ids, st.none() | text
    detail = st.builds(se.ErrorDetail, type=text, code=opt_text, message=text, param=opt_text, event_id=opt_ids)
    status = st.builds(se.StatusDetails, type=opt_text, reason=opt_text,
                       error=st.none() | st.builds(se.StatusError, type=opt_text, code=opt_text, message=opt_text))
    statuses = st.sampled_from(get_args(se.ResponseObject.model_fields["status"].annotation))
    response = st.builds(
        se.ResponseObject, id=ids, status=statuses, status_details=st.none() | status,
        output=st.lists(objects, max_size=2), usage=st.none() | objects)
    limit = st.builds(se.RateLimit, name=text, limit=st.none() | st.integers(), remaining=st.none() | st.integers(),
                      reset_seconds=st.none() | finite)
    n = st.integers()
    fields: dict[type[BaseModel], dict[str, st.SearchStrategy[Any]]] = {
        se.SessionCreated: {"session": objects},
        se.SessionUpdated: {"session": objects},
        se.ErrorEvent: {"error": detail},
        se.InputAudioBufferCommitted: {"item_id": ids, "previous_item_id": opt_ids},
        se.InputAudioBufferCleared: {},
        se.InputAudioBufferSpeechStarted: {"item_id": ids, "audio_start_ms": n},
        se.InputAudioBufferSpeechStopped: {"item_id": ids, "audio_end_ms": n},
        se.InputAudioBufferTimeoutTriggered: {"item_id": opt_ids},
        se.TranscriptionDelta: {"item_id": ids, "content_index": n, "delta": text},
        se.TranscriptionCompleted: {"item_id": ids, "content_index": n, "transcript": text,
                                    "usage": st.none() | objects},
        se.TranscriptionFailed: {"item_id": ids, "content_index": n, "error": detail},
        se.ConversationItemAdded: {"previous_item_id": opt_ids, "item": objects},
        se.ConversationItemDone: {"previous_item_id": opt_ids, "item": objects},
        se.ResponseCreated: {"response": response},
        se.ResponseOutputTextDelta: {"response_id": ids, "item_id": opt_ids, "output_index": n, "content_index": n,
                                     "delta": text},
        se.ResponseOutputTextDone: {"response_id": ids, "item_id": opt_ids, "output_index": n, "content_index": n,
                                    "text": text},
        se.ResponseDone: {"response": response},
        se.RateLimitsUpdated: {"rate_limits": st.lists(limit, max_size=3)},
    }
    strategies: dict[type[BaseModel], st.SearchStrategy[BaseModel]] = {
        model: st.builds(model, type=st.just(_type_of(model)), event_id=opt_ids, **kw) for model, kw in fields.items()
    }
    strategies[UnknownServerEvent] = st.builds(UnknownServerEvent, type=text, raw=objects)
    return strategies


def _type_of(model: type[BaseModel]) -> str:
    kind: str = get_args(model.model_fields["type"].annotation)[0]
    return kind


SERVER_EVENT_TYPES = tuple(server_event_strategies(st.just("i"), st.just("t")))


def _is_valid_unicode(event: BaseModel) -> bool:
    try:
        event.model_dump_json()
    except ValueError:  # PydanticSerializationError: a lone surrogate cannot be UTF-8
        return False
    return True


def _wire(event: BaseModel) -> str:
    """How the server would send it (json.dumps escapes any lone surrogate as \\uXXXX)."""
    return json.dumps(event.model_dump())


# --- parse_server_event: never raises -------------------------------------------------


@given(st.binary() | any_text | deep_json | deep_json.map(str.encode))
@example(b"\xff")
@example(b"[" * 5000)
@example("\ud800")
@example('{"a":' * 5000)
def test_parse_anything(frame: bytes | str) -> None:
    event = parse_server_event(frame)
    assert isinstance(event, SERVER_EVENT_TYPES)
    # What a websocket frame can hold (a text frame is valid UTF-8): valid Unicode comes out.
    if isinstance(frame, bytes) or not any(0xD800 <= ord(c) <= 0xDFFF for c in frame):
        assert _is_valid_unicode(event)


@given(json_values(any_text))
@example({"type": "response.output_text.delta", "response_id": "r", "delta": "\ud83d"})
def test_parse_any_json(value: Any) -> None:
    """Any JSON a server could send, lone surrogate escapes (\\ud800) included: the
    parsed event's text is valid Unicode, or the frame is an UnknownServerEvent."""
    event = parse_server_event(json.dumps(value))
    assert isinstance(event, SERVER_EVENT_TYPES)
    assert _is_valid_unicode(event)


# One event of each known type, optional fields set, for `edited` to damage.
SERVER_BASES: list[dict[str, Any]] = [
    {"type": "session.created", "event_id": "e1", "session": {"id": "s", "type": "transcription"}},
    {"type": "session.updated", "event_id": "e2", "session": {}},
    {"type": "error", "error": {"type": "invalid_request_error", "code": "c", "message": "m", "param": "p",
                                "event_id": "evt_commit_1"}},
    {"type": "input_audio_buffer.committed", "item_id": "i2", "previous_item_id": "i1"},
    {"type": "input_audio_buffer.cleared"},
    {"type": "input_audio_buffer.speech_started", "item_id": "i", "audio_start_ms": 5},
    {"type": "input_audio_buffer.speech_stopped", "item_id": "i", "audio_end_ms": 9},
    {"type": "input_audio_buffer.timeout_triggered", "item_id": "i"},
    {"type": "conversation.item.input_audio_transcription.delta", "item_id": "i", "content_index": 0, "delta": "he"},
    {"type": "conversation.item.input_audio_transcription.completed", "item_id": "i", "content_index": 0,
     "transcript": "hello", "usage": {"type": "tokens", "total_tokens": 3}},
    {"type": "conversation.item.input_audio_transcription.failed", "item_id": "i", "content_index": 0,
     "error": {"type": "transcription_error", "code": "c", "message": "m"}},
    {"type": "conversation.item.added", "previous_item_id": "p", "item": {"id": "i", "type": "message"}},
    {"type": "conversation.item.done", "previous_item_id": None, "item": {"id": "i"}},
    {"type": "response.created", "response": {"id": "r", "status": "in_progress", "output": []}},
    {"type": "response.output_text.delta", "response_id": "r", "item_id": "i", "output_index": 0, "content_index": 0,
     "delta": "x"},
    {"type": "response.output_text.done", "response_id": "r", "item_id": "i", "text": "x"},
    {"type": "response.done", "response": {"id": "r", "status": "failed", "output": [{"id": "o"}], "usage": {
        "total_tokens": 3}, "status_details": {"type": "failed", "reason": "x", "error": {"code": "c"}}}},
    {"type": "rate_limits.updated", "rate_limits": [{"name": "rq", "limit": 1, "remaining": 0, "reset_seconds": 1.5}]},
]


def test_every_known_server_event_has_a_strategy_and_a_base() -> None:
    assert {_type_of(m) for m in SERVER_EVENT_TYPES if m is not UnknownServerEvent} == KNOWN_SERVER_TYPES
    parsed = [parse_server_event(b) for b in SERVER_BASES]
    assert {e.type for e in parsed if not isinstance(e, UnknownServerEvent)} == KNOWN_SERVER_TYPES


@given(edited(SERVER_BASES, sorted(KNOWN_SERVER_TYPES)))
def test_parse_edited_events(obj: Any) -> None:
    frame = json.dumps(obj)
    event = parse_server_event(frame)
    assert isinstance(event, SERVER_EVENT_TYPES)
    assert parse_server_event(frame.encode()) == event
    if not isinstance(obj, dict):
        assert isinstance(event, UnknownServerEvent) and event.problem == "not a JSON object"
        return
    assert parse_server_event(obj) == event  # a frame and its dict parse alike
    if isinstance(event, UnknownServerEvent):
        assert event.raw == obj
        known = isinstance(obj.get("type"), str) and obj["type"] in KNOWN_SERVER_TYPES
        assert event.problem or not known
    else:
        assert event.type == obj["type"]


@given(st.one_of(*server_event_strategies(st.text(max_size=10), st.text(max_size=30)).values()))
def test_server_event_round_trip(event: BaseModel) -> None:
    """A server event, written as JSON and parsed back, is the same event (an unknown
    type's comes back as its raw object: not compared)."""
    back = parse_server_event(event.model_dump_json())
    if not isinstance(event, UnknownServerEvent):
        assert type(back) is type(event)
        assert back == event


# --- client events: to_wire and back --------------------------------------------------

opt_text = st.none() | st.text(max_size=30)
modalities = st.lists(st.sampled_from(["text", "audio"]), max_size=2)
max_tokens = st.none() | st.integers() | st.just("inf")
audio_input = st.builds(
    AudioInput, format=st.just(AudioFormat()),
    transcription=st.none() | st.builds(TranscriptionConfig, model=st.text(max_size=20), language=opt_text,
                                        prompt=opt_text),
    turn_detection=st.none() | st.builds(ServerVad, threshold=finite, prefix_padding_ms=st.integers(),
                                         silence_duration_ms=st.integers()))
sessions = st.builds(RealtimeSessionConfig, output_modalities=modalities, instructions=opt_text,
                     max_output_tokens=max_tokens) | st.builds(TranscriptionSessionConfig,
                                                               audio=st.builds(AudioConfig, input=audio_input))
event_ids = st.none() | st.text(max_size=20)
client_events = st.one_of(
    st.builds(SessionUpdate, event_id=event_ids, session=sessions),
    st.builds(InputAudioBufferAppend, event_id=event_ids,
              audio=st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode())),
    st.builds(InputAudioBufferCommit, event_id=event_ids),
    st.builds(InputAudioBufferClear, event_id=event_ids),
    st.builds(ConversationItemCreate, event_id=event_ids, previous_item_id=opt_text,
              item=st.builds(UserMessage, content=st.lists(st.builds(InputText, text=st.text()), max_size=3))
              | st.builds(AssistantMessage, content=st.lists(st.builds(OutputText, text=st.text()), max_size=3))),
    st.builds(ResponseCreate, event_id=event_ids, response=st.builds(
        ResponseParams, output_modalities=modalities, instructions=opt_text, max_output_tokens=max_tokens)),
    st.builds(ResponseCancel, event_id=event_ids),
)


@given(client_events)
def test_client_event_round_trip(event: BaseModel) -> None:
    wire = to_wire(event)  # type: ignore[arg-type]
    assert type(event).model_validate_json(wire) == event
    data = json.loads(wire)
    assert data["type"] == event.type  # type: ignore[attr-defined]
    if isinstance(event, SessionUpdate) and isinstance(event.session, TranscriptionSessionConfig):
        assert "turn_detection" in data["session"]["audio"]["input"]  # null is sent, not left out


# --- the state machines: any order of events and calls --------------------------------

ITEMS = st.sampled_from(["item_a", "item_b", "item_c", "item_d"])
UIDS = st.none() | st.sampled_from(["u1", "u2", "u3"])
PCM_SIZES = st.sampled_from([0, 2, 2400, 4800, 9600])


def wire_events(ids: st.SearchStrategy[str], *only: type[BaseModel]) -> st.SearchStrategy[Any]:
    """Valid-shaped events (of the ``only`` models, else of all) as they come off the wire:
    text with lone surrogates escaped, parsed by parse_server_event as the connection does."""
    # The state machines read no free-form object but `usage`'s ints: small flat ones will do.
    objects = st.dictionaries(st.sampled_from(["total_tokens", "input_tokens", "id"]), st.integers() | st.booleans(),
                              max_size=2)
    text = st.one_of(st.text(), st.text(), st.text(), lone_surrogate_text)  # a quarter with a lone surrogate
    models = server_event_strategies(ids, text, objects)
    return st.one_of(*(models[m] for m in only or models)).map(lambda e: parse_server_event(_wire(e)))


# Ops in any order; the events a machine acts on drawn more often than the rest (one_of picks
# its branches evenly), their ids from small pools so that they meet their items and turns.
COMMIT_IDS = ITEMS | st.sampled_from([f"evt_commit_{n}" for n in range(1, 7)])
transcription_events = wire_events(COMMIT_IDS, se.InputAudioBufferCommitted, se.TranscriptionDelta,
                                   se.TranscriptionCompleted, se.TranscriptionFailed, se.ErrorEvent)
transcription_ops = st.lists(st.one_of(
    st.tuples(st.just("text"), st.sampled_from(["u1", "u2", "u9"]), st.text(max_size=20), st.integers()),
    st.tuples(st.just("chunk"), UIDS, PCM_SIZES),
    st.tuples(st.just("chunk"), UIDS, PCM_SIZES),
    st.tuples(st.just("end"), UIDS, st.integers()),
    st.tuples(st.just("event"), transcription_events),
    st.tuples(st.just("event"), transcription_events),
    st.tuples(st.just("event"), wire_events(COMMIT_IDS)),
    st.tuples(st.sampled_from(["reconnect", "flush", "abandon"]), st.integers(), st.text(max_size=10)),
), max_size=20)


def _sendable(action: object) -> None:
    if isinstance(action, Send):
        json.loads(to_wire(action.event))


@given(st.sampled_from(["client", "server_vad"]), st.sampled_from([0, 4800]), transcription_ops)
@example("client", 4800, [("chunk", "u1", 4800), ("end", "u1", 1),  # a transcript with a lone surrogate escape
                          ("event", parse_server_event('{"type": "input_audio_buffer.committed", "item_id": "i"}')),
                          ("event", parse_server_event('{"type": "conversation.item.input_audio_transcription.'
                                                       'completed", "item_id": "i", "transcript": "\\ud800"}'))])
def test_transcription_state_any_order(mode: Any, min_commit: int, ops: list[tuple[Any, ...]]) -> None:
    state = TranscriptionState(mode, min_commit_bytes=min_commit)
    fed = 0
    released: list[str] = []
    for op in ops:
        kind = op[0]
        if kind == "text":
            fed += 1
            actions = state.text(f"{fed}-0", op[1], op[2], op[3])
        elif kind == "chunk":
            fed += 1
            audio = base64.b64encode(bytes(op[2])).decode()
            actions = state.chunk(f"{fed}-0", op[1], audio, op[2])
        elif kind == "end":
            fed += 1
            actions = state.end(f"{fed}-0", op[1], op[2])
        elif kind == "event":
            actions = state.on_event(op[1], 0)
        elif kind == "reconnect":
            actions = state.on_reconnect()
        elif kind == "flush":
            actions = state.flush(op[1])
        else:
            actions = state.abandon(op[2])
        for action in actions:
            assert isinstance(action, Send | Delta | Final | Skip)
            _sendable(action)
            if isinstance(action, Final | Skip):
                released.extend(action.entry_ids)
            if isinstance(action, Final):
                # What the transcriber's sink writes: it must encode.
                encode_transcript_final("c", action.utterance_id, action.text, action.sent_ms, 0)
    # Each input entry is released (written or skipped, then acked) once at most.
    assert len(released) == len(set(released))
    assert set(released) <= {f"{n}-0" for n in range(1, fed + 1)}


TURN_IDS = st.sampled_from(["resp_1", "resp_2"] + [f"evt_{k}_{n}" for k in ("item", "response") for n in range(1, 9)])
conversation_events = wire_events(TURN_IDS, se.ResponseCreated, se.ResponseOutputTextDelta, se.ResponseDone,
                                  se.ErrorEvent)
conversation_ops = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.text(max_size=20), st.none() | st.sampled_from(["u1", "u2"])),
    st.tuples(st.just("event"), conversation_events),
    st.tuples(st.just("event"), conversation_events),
    st.tuples(st.just("event"), wire_events(TURN_IDS)),
    st.tuples(st.sampled_from(["lost", "resume", "replay", "session"])),
), max_size=20)


@given(st.none() | st.text(max_size=10), st.integers(0, 3), st.none() | st.integers(), conversation_ops)
@example(None, 0, None, [("submit", "hi", None),  # a text delta with a lone surrogate escape
                         ("event", parse_server_event('{"type": "response.output_text.delta", "response_id": "r",'
                                                      ' "delta": "\\ud800"}'))])
def test_conversation_state_any_order(
    instructions: str | None, max_turns: int, max_tokens: int | None, ops: list[tuple[Any, ...]],
) -> None:
    state = ConversationState(instructions, [Turn("h1", "hi", "hello")], max_turns=max_turns,
                              max_output_tokens=max_tokens)
    interrupted: list[Any] = []
    for op in ops:
        kind = op[0]
        outs: list[Any] = []
        if kind == "submit":
            outs = state.submit(op[1], op[2])
        elif kind == "event":
            outs = state.on_event(op[1])
        elif kind == "lost":
            turn = state.connection_lost()
            interrupted += [turn] if turn is not None else []
        elif kind == "resume" and interrupted:
            outs = state.resume(interrupted.pop())
        elif kind == "replay":
            outs = [Send(e) for e in state.replay()]
        elif kind == "session":
            outs = [Send(state.session_update())]
        for out in outs:
            assert isinstance(out, Send | TextOut | Done | Failed)
            _sendable(out)
            # What the conversation worker writes: it must encode.
            if isinstance(out, TextOut):
                encode_response_delta("c", "u", "r", 0, out.text)
            if isinstance(out, Done):
                encode_response_done("c", "u", "r", out.text, out.usage, 0, 0, None, 0)
