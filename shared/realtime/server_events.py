"""Realtime (GA) server events as pydantic models, parsed through one
discriminated union. Pure module: no I/O.

Server events are parsed with :func:`parse_server_event`. The API adds event
types over time, so an unknown type, a known type with an unexpected shape,
or a frame that is not JSON never raises: it parses to
:class:`UnknownServerEvent` (the raw payload kept) that callers log and
ignore. Server models allow extra fields for the same reason.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError
from pydantic_core import from_json


class _Server(BaseModel):
    """Server-side shapes: tolerant (the API adds fields)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class ErrorDetail(_Server):
    type: str = "unknown"
    code: str | None = None
    message: str = ""
    param: str | None = None
    #: The client event that caused the error, when it carried an ``event_id``.
    event_id: str | None = None


class _ServerEvent(_Server):
    event_id: str | None = None


class SessionCreated(_ServerEvent):
    type: Literal["session.created"]
    session: dict[str, Any] = Field(default_factory=dict)


class SessionUpdated(_ServerEvent):
    type: Literal["session.updated"]
    session: dict[str, Any] = Field(default_factory=dict)


class ErrorEvent(_ServerEvent):
    type: Literal["error"]
    error: ErrorDetail


class InputAudioBufferCommitted(_ServerEvent):
    type: Literal["input_audio_buffer.committed"]
    item_id: str
    previous_item_id: str | None = None


class InputAudioBufferCleared(_ServerEvent):
    type: Literal["input_audio_buffer.cleared"]


class InputAudioBufferSpeechStarted(_ServerEvent):
    type: Literal["input_audio_buffer.speech_started"]
    item_id: str
    audio_start_ms: int = 0


class InputAudioBufferSpeechStopped(_ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"]
    item_id: str
    audio_end_ms: int = 0


class InputAudioBufferTimeoutTriggered(_ServerEvent):
    type: Literal["input_audio_buffer.timeout_triggered"]
    item_id: str | None = None


class TranscriptionDelta(_ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.delta"]
    item_id: str
    content_index: int = 0
    delta: str = ""


class TranscriptionCompleted(_ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"]
    item_id: str
    content_index: int = 0
    transcript: str
    usage: dict[str, Any] | None = None


class TranscriptionFailed(_ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"]
    item_id: str
    content_index: int = 0
    error: ErrorDetail = ErrorDetail()


class ConversationItemAdded(_ServerEvent):
    type: Literal["conversation.item.added"]
    previous_item_id: str | None = None
    item: dict[str, Any] = Field(default_factory=dict)


class ConversationItemDone(_ServerEvent):
    type: Literal["conversation.item.done"]
    previous_item_id: str | None = None
    item: dict[str, Any] = Field(default_factory=dict)


class StatusError(_Server):
    type: str | None = None
    code: str | None = None
    message: str | None = None


class StatusDetails(_Server):
    type: str | None = None
    reason: str | None = None
    error: StatusError | None = None


class ResponseObject(_Server):
    id: str
    status: Literal["in_progress", "completed", "cancelled", "failed", "incomplete"] = "in_progress"
    status_details: StatusDetails | None = None
    output: list[dict[str, Any]] = Field(default_factory=list)
    usage: dict[str, Any] | None = None


class ResponseCreated(_ServerEvent):
    type: Literal["response.created"]
    response: ResponseObject


class ResponseOutputTextDelta(_ServerEvent):
    type: Literal["response.output_text.delta"]
    response_id: str
    item_id: str | None = None
    output_index: int = 0
    content_index: int = 0
    delta: str


class ResponseOutputTextDone(_ServerEvent):
    type: Literal["response.output_text.done"]
    response_id: str
    item_id: str | None = None
    output_index: int = 0
    content_index: int = 0
    text: str = ""


class ResponseDone(_ServerEvent):
    type: Literal["response.done"]
    response: ResponseObject


class RateLimit(_Server):
    name: str
    limit: int | None = None
    remaining: int | None = None
    reset_seconds: float | None = None


class RateLimitsUpdated(_ServerEvent):
    type: Literal["rate_limits.updated"]
    rate_limits: list[RateLimit] = Field(default_factory=list)


class UnknownServerEvent(_Server):
    """Anything this client does not model (or that did not validate): log, ignore."""

    type: str = ""
    raw: dict[str, Any] = Field(default_factory=dict)
    #: Why a known type fell back here (its validation error), else None.
    problem: str | None = None


_KNOWN: tuple[type[_ServerEvent], ...] = (
    SessionCreated,
    SessionUpdated,
    ErrorEvent,
    InputAudioBufferCommitted,
    InputAudioBufferCleared,
    InputAudioBufferSpeechStarted,
    InputAudioBufferSpeechStopped,
    InputAudioBufferTimeoutTriggered,
    TranscriptionDelta,
    TranscriptionCompleted,
    TranscriptionFailed,
    ConversationItemAdded,
    ConversationItemDone,
    ResponseCreated,
    ResponseOutputTextDelta,
    ResponseOutputTextDone,
    ResponseDone,
    RateLimitsUpdated,
)
KNOWN_SERVER_TYPES: frozenset[str] = frozenset(get_args(m.model_fields["type"].annotation)[0] for m in _KNOWN)

_UNKNOWN_TAG = "__unknown__"


def _tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if isinstance(kind, str) and kind in KNOWN_SERVER_TYPES else _UNKNOWN_TAG


ServerEvent = Annotated[
    Annotated[SessionCreated, Tag("session.created")]
    | Annotated[SessionUpdated, Tag("session.updated")]
    | Annotated[ErrorEvent, Tag("error")]
    | Annotated[InputAudioBufferCommitted, Tag("input_audio_buffer.committed")]
    | Annotated[InputAudioBufferCleared, Tag("input_audio_buffer.cleared")]
    | Annotated[InputAudioBufferSpeechStarted, Tag("input_audio_buffer.speech_started")]
    | Annotated[InputAudioBufferSpeechStopped, Tag("input_audio_buffer.speech_stopped")]
    | Annotated[InputAudioBufferTimeoutTriggered, Tag("input_audio_buffer.timeout_triggered")]
    | Annotated[TranscriptionDelta, Tag("conversation.item.input_audio_transcription.delta")]
    | Annotated[TranscriptionCompleted, Tag("conversation.item.input_audio_transcription.completed")]
    | Annotated[TranscriptionFailed, Tag("conversation.item.input_audio_transcription.failed")]
    | Annotated[ConversationItemAdded, Tag("conversation.item.added")]
    | Annotated[ConversationItemDone, Tag("conversation.item.done")]
    | Annotated[ResponseCreated, Tag("response.created")]
    | Annotated[ResponseOutputTextDelta, Tag("response.output_text.delta")]
    | Annotated[ResponseOutputTextDone, Tag("response.output_text.done")]
    | Annotated[ResponseDone, Tag("response.done")]
    | Annotated[RateLimitsUpdated, Tag("rate_limits.updated")]
    | Annotated[UnknownServerEvent, Tag(_UNKNOWN_TAG)],
    Discriminator(_tag),
]

_SERVER_ADAPTER: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)


def parse_server_event(frame: str | bytes | dict[str, Any]) -> ServerEvent:
    """Parse one server frame. Never raises: what cannot be modelled comes
    back as :class:`UnknownServerEvent` with the raw payload."""
    if isinstance(frame, dict):
        data: Any = frame
    else:
        try:
            # pydantic's JSON parser, not json.loads: it refuses nesting past a depth (json.loads
            # raises RecursionError) and lone surrogate escapes ("\\ud800": text that could not
            # be written as UTF-8 into a stream entry). A str is read as its UTF-8.
            data = from_json(frame.encode() if isinstance(frame, str) else frame)
        except ValueError as exc:
            text = frame.decode(errors="replace") if isinstance(frame, bytes) else frame
            return UnknownServerEvent(raw={"frame": text[:2000]}, problem=f"not JSON: {exc}")
    if not isinstance(data, dict):
        return UnknownServerEvent(raw={"frame": data}, problem="not a JSON object")
    if _tag(data) == _UNKNOWN_TAG:
        kind = data.get("type")
        return UnknownServerEvent(type=kind if isinstance(kind, str) else "", raw=data)
    try:
        return _SERVER_ADAPTER.validate_python(data)
    except ValidationError as exc:
        return UnknownServerEvent(type=str(data.get("type")), raw=data, problem=_summarise(exc))


def _summarise(exc: ValidationError) -> str:
    errs = exc.errors(include_url=False)[:3]
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in errs)
