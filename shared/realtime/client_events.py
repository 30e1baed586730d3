"""Realtime (GA) client events as pydantic models, and their wire form. Pure
module: no I/O.

Client events are built with the models below and serialised with
:func:`to_wire` (``None`` fields are left out, except where ``null`` means
something on the wire: ``audio.input.turn_detection``, see
:class:`shared.realtime.session_config.AudioInput`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.realtime.session_config import (
    ClientModel,
    Modality,
    RealtimeSessionConfig,
    TranscriptionSessionConfig,
    text_only,
)


class _ClientEvent(ClientModel):
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


class InputText(ClientModel):
    type: Literal["input_text"] = "input_text"
    text: str


class OutputText(ClientModel):
    """GA spelling of assistant text content (beta's ``text`` is rejected)."""

    type: Literal["output_text"] = "output_text"
    text: str


class UserMessage(ClientModel):
    type: Literal["message"] = "message"
    role: Literal["user"] = "user"
    content: list[InputText]


class AssistantMessage(ClientModel):
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class ConversationItemCreate(_ClientEvent):
    type: Literal["conversation.item.create"] = "conversation.item.create"
    previous_item_id: str | None = None
    item: UserMessage | AssistantMessage


class ResponseParams(ClientModel):
    output_modalities: list[Modality] = Field(default_factory=text_only)
    instructions: str | None = None
    max_output_tokens: int | Literal["inf"] | None = None


class ResponseCreate(_ClientEvent):
    type: Literal["response.create"] = "response.create"
    response: ResponseParams = ResponseParams()


class ResponseCancel(_ClientEvent):
    type: Literal["response.cancel"] = "response.cancel"
    #: The response to cancel; without it, whichever response is active.
    response_id: str | None = None


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
