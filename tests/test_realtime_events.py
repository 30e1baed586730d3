"""The Realtime wire models: GA client shapes, tolerant server parsing."""

from __future__ import annotations

import json

import pytest

from shared.realtime.client_events import (
    ClientEvent,
    InputAudioBufferAppend,
    InputAudioBufferClear,
    InputAudioBufferCommit,
    ResponseCreate,
    ResponseParams,
    SessionUpdate,
    assistant_text_item,
    to_wire,
    user_text_item,
)
from shared.realtime.server_events import (
    ConversationItemAdded,
    ConversationItemDone,
    ErrorEvent,
    InputAudioBufferCommitted,
    InputAudioBufferSpeechStarted,
    InputAudioBufferSpeechStopped,
    RateLimitsUpdated,
    ResponseCreated,
    ResponseDone,
    ResponseOutputTextDelta,
    ResponseOutputTextDone,
    SessionCreated,
    SessionUpdated,
    TranscriptionCompleted,
    TranscriptionDelta,
    TranscriptionFailed,
    UnknownServerEvent,
    parse_server_event,
)
from shared.realtime.session_config import (
    MIN_COMMIT_BYTES,
    AudioConfig,
    AudioInput,
    RealtimeSessionConfig,
    ServerVad,
    TranscriptionConfig,
    TranscriptionSessionConfig,
)


def wire(event: ClientEvent) -> dict:
    return json.loads(to_wire(event))


def test_conversation_session_update_is_ga() -> None:
    update = SessionUpdate(session=RealtimeSessionConfig(instructions="Be brief."))
    assert wire(update) == {
        "type": "session.update",
        "session": {"type": "realtime", "output_modalities": ["text"], "instructions": "Be brief."},
    }


def test_transcription_session_update_client_commits_sends_null_turn_detection() -> None:
    audio_input = AudioInput(transcription=TranscriptionConfig(model="gpt-4o-transcribe", language="en"))
    update = SessionUpdate(session=TranscriptionSessionConfig(audio=AudioConfig(input=audio_input)))
    assert wire(update) == {
        "type": "session.update",
        "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
            "turn_detection": None,
        }}},
    }


def test_transcription_session_update_server_vad() -> None:
    audio_input = AudioInput(transcription=TranscriptionConfig(model="gpt-4o-transcribe"),
                             turn_detection=ServerVad())
    update = SessionUpdate(session=TranscriptionSessionConfig(audio=AudioConfig(input=audio_input)))
    assert wire(update)["session"]["audio"]["input"]["turn_detection"] == {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
    }


def test_items_and_response_create_are_ga() -> None:
    assert wire(user_text_item("hi", event_id="e1")) == {
        "type": "conversation.item.create", "event_id": "e1",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    }
    # GA assistant content is output_text (beta's "text" is rejected by the API).
    assert wire(assistant_text_item("hello"))["item"] == {
        "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}],
    }
    create = ResponseCreate(response=ResponseParams(max_output_tokens=256))
    assert wire(create) == {"type": "response.create",
                            "response": {"output_modalities": ["text"], "max_output_tokens": 256}}
    assert wire(InputAudioBufferAppend(audio="AAAA")) == {"type": "input_audio_buffer.append", "audio": "AAAA"}
    assert wire(InputAudioBufferCommit()) == {"type": "input_audio_buffer.commit"}
    assert wire(InputAudioBufferClear()) == {"type": "input_audio_buffer.clear"}


def test_client_models_refuse_beta_fields() -> None:
    with pytest.raises(ValueError):
        RealtimeSessionConfig(modalities=["text"])  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        RealtimeSessionConfig(temperature=0.8)  # type: ignore[call-arg]


@pytest.mark.parametrize(("frame", "model"), [
    ({"type": "session.created", "event_id": "e", "session": {"type": "realtime"}}, SessionCreated),
    ({"type": "session.updated", "session": {}}, SessionUpdated),
    ({"type": "input_audio_buffer.committed", "item_id": "i2", "previous_item_id": "i1"},
     InputAudioBufferCommitted),
    ({"type": "input_audio_buffer.committed", "item_id": "i1", "previous_item_id": None}, InputAudioBufferCommitted),
    ({"type": "input_audio_buffer.speech_started", "item_id": "i", "audio_start_ms": 10},
     InputAudioBufferSpeechStarted),
    ({"type": "input_audio_buffer.speech_stopped", "item_id": "i", "audio_end_ms": 900},
     InputAudioBufferSpeechStopped),
    ({"type": "conversation.item.input_audio_transcription.delta", "item_id": "i", "content_index": 0,
      "delta": "he"}, TranscriptionDelta),
    ({"type": "conversation.item.input_audio_transcription.completed", "item_id": "i", "content_index": 0,
      "transcript": "hello", "usage": {"type": "tokens", "total_tokens": 3}}, TranscriptionCompleted),
    ({"type": "conversation.item.input_audio_transcription.failed", "item_id": "i", "content_index": 0,
      "error": {"type": "transcription_error", "code": "audio_unintelligible", "message": "x", "param": None}},
     TranscriptionFailed),
    ({"type": "conversation.item.added", "previous_item_id": None, "item": {"id": "i"}}, ConversationItemAdded),
    ({"type": "conversation.item.done", "item": {"id": "i"}}, ConversationItemDone),
    ({"type": "response.created", "response": {"id": "r", "status": "in_progress"}}, ResponseCreated),
    ({"type": "response.output_text.delta", "response_id": "r", "item_id": "i", "output_index": 0,
      "content_index": 0, "delta": "Hi"}, ResponseOutputTextDelta),
    ({"type": "response.output_text.done", "response_id": "r", "item_id": "i", "text": "Hi"},
     ResponseOutputTextDone),
    ({"type": "rate_limits.updated", "rate_limits": [{"name": "tokens", "limit": 10, "remaining": 9,
                                                      "reset_seconds": 1.5}]}, RateLimitsUpdated),
])
def test_known_server_events_parse(frame: dict, model: type) -> None:
    parsed = parse_server_event(json.dumps(frame))
    assert isinstance(parsed, model)
    assert parsed.type == frame["type"]


def test_error_event_names_the_client_event() -> None:
    parsed = parse_server_event(json.dumps({
        "type": "error", "event_id": "event_1",
        "error": {"type": "invalid_request_error", "code": "conversation_already_has_active_response",
                  "message": "Conversation already has an active response", "param": None, "event_id": "evt_9"},
    }))
    assert isinstance(parsed, ErrorEvent)
    assert parsed.error.code == "conversation_already_has_active_response"
    assert parsed.error.event_id == "evt_9"


@pytest.mark.parametrize("status", ["completed", "cancelled", "failed", "incomplete"])
def test_response_done_statuses(status: str) -> None:
    frame = {"type": "response.done", "response": {
        "id": "r", "status": status, "output": [],
        "status_details": {"type": status, "reason": "turn_detected" if status == "cancelled" else None,
                           "error": {"type": "tokens", "code": "rate_limit_exceeded", "message": "slow down"}},
        "usage": {"total_tokens": 5, "input_tokens": 3, "output_tokens": 2,
                  "input_token_details": {"text_tokens": 3}},
    }}
    parsed = parse_server_event(json.dumps(frame).encode())
    assert isinstance(parsed, ResponseDone)
    assert parsed.response.status == status
    assert parsed.response.status_details is not None
    assert parsed.response.status_details.error is not None
    assert parsed.response.status_details.error.code == "rate_limit_exceeded"


def test_unknown_event_types_are_tolerated() -> None:
    frame = {"type": "response.output_audio_transcript.delta", "response_id": "r", "delta": "x"}
    parsed = parse_server_event(json.dumps(frame))
    assert isinstance(parsed, UnknownServerEvent)
    assert parsed.type == "response.output_audio_transcript.delta"
    assert parsed.raw == frame
    assert parsed.problem is None


def test_extra_fields_on_known_events_are_tolerated() -> None:
    parsed = parse_server_event({"type": "input_audio_buffer.committed", "item_id": "i", "brand_new": 1})
    assert isinstance(parsed, InputAudioBufferCommitted)


@pytest.mark.parametrize("frame", [
    "not json", b"\xff\xfe", "[1, 2]", "{}", '{"type": 7}',
    '{"type": "response.done"}',  # known type, wrong shape
    '{"type": "response.output_text.delta", "response_id": "r"}',
])
def test_malformed_frames_never_raise(frame: str | bytes) -> None:
    parsed = parse_server_event(frame)
    assert isinstance(parsed, UnknownServerEvent)


def test_min_commit_is_100ms_of_pcm16_24khz() -> None:
    assert MIN_COMMIT_BYTES == 4800
