"""Realtime API (GA) events as pydantic models. Pure module: no I/O.

Client events are built with the models below and serialised with
:func:`to_wire` (``None`` fields are left out, except where ``null`` means
something on the wire: ``audio.input.turn_detection``).

Server events are parsed with :func:`parse_server_event` through one
discriminated union. The API adds event types over time, so an unknown type,
a known type with an unexpected shape, or a frame that is not JSON never
raises: it parses to :class:`UnknownServerEvent` (the raw payload kept) that
callers log and ignore. Server models allow extra fields for the same reason.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    TypeAdapter,
    ValidationError,
    model_serializer,
)

#: The only input format this project sends: PCM16 little-endian mono at 24 kHz.
PCM_RATE_HZ = 24_000
PCM_SAMPLE_BYTES = 2
#: The API refuses to commit less than this much audio.
MIN_COMMIT_MS = 100
MIN_COMMIT_BYTES = PCM_RATE_HZ * PCM_SAMPLE_BYTES * MIN_COMMIT_MS // 1000  # 4800


# --- client events ------------------------------------------------------------------


Modality = Literal["text", "audio"]


def _text_only() -> list[Modality]:
    return ["text"]


class _Wire(BaseModel):
    """Client-side shapes: strict (a typo is a bug here, not at the API)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerVad(_Wire):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


class AudioFormat(_Wire):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = 24000


class TranscriptionConfig(_Wire):
    model: str
    language: str | None = None
    prompt: str | None = None


class AudioInput(_Wire):
    format: AudioFormat = AudioFormat()
    transcription: TranscriptionConfig | None = None
    #: ``None`` is sent as ``null``: the client commits turns itself.
    turn_detection: ServerVad | None = None

    @model_serializer(mode="wrap")
    def _keep_null_turn_detection(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        # exclude_none would drop it, and an absent turn_detection means the
        # server default (server VAD), not "the client commits".
        data.setdefault("turn_detection", None)
        return data


class AudioConfig(_Wire):
    input: AudioInput


class RealtimeSessionConfig(_Wire):
    """A conversation session (``?model=...``). GA: ``type`` is required,
    ``output_modalities`` (not beta's ``modalities``), no ``temperature``."""

    type: Literal["realtime"] = "realtime"
    output_modalities: list[Modality] = Field(default_factory=_text_only)
    instructions: str | None = None
    max_output_tokens: int | Literal["inf"] | None = None


class TranscriptionSessionConfig(_Wire):
    """A transcription session (``?intent=transcription``, no model in the URL)."""

    type: Literal["transcription"] = "transcription"
    audio: AudioConfig


class _ClientEvent(_Wire):
    event_id: str | None = None


class SessionUpdate(_ClientEvent):
    type: Literal["session.update"] = "session.update"
    session: RealtimeSessionConfig | TranscriptionSessionConfig


class InputAudioBufferAppend(_ClientEvent):
    type: Literal["input_audio_buffer.append"] = "input_audio_buffer.append"
    #: Base64 of PCM16 LE mono 24 kHz.
    audio: str


class InputAudioBufferCommit(_ClientEvent):
    type: Literal["input_audio_buffer.commit"] = "input_audio_buffer.commit"


class InputAudioBufferClear(_ClientEvent):
    type: Literal["input_audio_buffer.clear"] = "input_audio_buffer.clear"


class InputText(_Wire):
    type: Literal["input_text"] = "input_text"
    text: str


class OutputText(_Wire):
    """GA spelling of assistant text content (beta's ``text`` is rejected)."""

    type: Literal["output_text"] = "output_text"
    text: str


class UserMessage(_Wire):
    type: Literal["message"] = "message"
    role: Literal["user"] = "user"
    content: list[InputText]


class AssistantMessage(_Wire):
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class ConversationItemCreate(_ClientEvent):
    type: Literal["conversation.item.create"] = "conversation.item.create"
    previous_item_id: str | None = None
    item: UserMessage | AssistantMessage


class ResponseParams(_Wire):
    output_modalities: list[Modality] = Field(default_factory=_text_only)
    instructions: str | None = None
    max_output_tokens: int | Literal["inf"] | None = None


class ResponseCreate(_ClientEvent):
    type: Literal["response.create"] = "response.create"
    response: ResponseParams = ResponseParams()


class ResponseCancel(_ClientEvent):
    type: Literal["response.cancel"] = "response.cancel"


ClientEvent = (
    SessionUpdate
    | InputAudioBufferAppend
    | InputAudioBufferCommit
    | InputAudioBufferClear
    | ConversationItemCreate
    | ResponseCreate
    | ResponseCancel
)


def user_text_item(text: str, event_id: str | None = None) -> ConversationItemCreate:
    return ConversationItemCreate(event_id=event_id, item=UserMessage(content=[InputText(text=text)]))


def assistant_text_item(text: str, event_id: str | None = None) -> ConversationItemCreate:
    return ConversationItemCreate(event_id=event_id, item=AssistantMessage(content=[OutputText(text=text)]))


def to_wire(event: ClientEvent) -> str:
    """The JSON text frame for a client event."""
    return event.model_dump_json(exclude_none=True)


# --- server events ------------------------------------------------------------------


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
            data = json.loads(frame)
        except (ValueError, UnicodeDecodeError) as exc:
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
