"""The Realtime (GA) session configuration that ``session.update`` carries,
the one audio format this project sends, and the strict base of every
client-side model. Pure module: no I/O.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

#: The only input format this project sends: PCM16 little-endian mono at 24 kHz.
PCM_RATE_HZ = 24_000
PCM_SAMPLE_BYTES = 2
#: The API refuses to commit less than this much audio.
MIN_COMMIT_MS = 100
MIN_COMMIT_BYTES = PCM_RATE_HZ * PCM_SAMPLE_BYTES * MIN_COMMIT_MS // 1000  # 4800
#: Most audio one utterance may have. A session keeps every utterance's audio (as
#: base64, 4/3 of the PCM) until its transcript, to re-send it after a reconnect, so
#: this bounds that buffer: 7.7 MB of base64 per utterance. Two minutes is far over a
#: spoken turn to a voice assistant (the local engine cuts at 30 s); past it, a client
#: has lost its audio.end or streams without turns, and the utterance is refused.
MAX_UTTERANCE_MS = 120_000
MAX_UTTERANCE_BYTES = PCM_RATE_HZ * PCM_SAMPLE_BYTES * MAX_UTTERANCE_MS // 1000  # 5,760,000

Modality = Literal["text", "audio"]


def text_only() -> list[Modality]:
    """The default output modalities (a factory: each model gets its own list)."""
    return ["text"]


class ClientModel(BaseModel):
    """Client-side shapes: strict (a typo is a bug here, not at the API)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerVad(ClientModel):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


class AudioFormat(ClientModel):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = 24000


class TranscriptionConfig(ClientModel):
    model: str
    language: str | None = None
    prompt: str | None = None


class AudioInput(ClientModel):
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


class AudioConfig(ClientModel):
    input: AudioInput


class RealtimeSessionConfig(ClientModel):
    """A conversation session (``?model=...``). GA: ``type`` is required,
    ``output_modalities`` (not beta's ``modalities``), no ``temperature``."""

    type: Literal["realtime"] = "realtime"
    output_modalities: list[Modality] = Field(default_factory=text_only)
    instructions: str | None = None
    max_output_tokens: int | Literal["inf"] | None = None


class TranscriptionSessionConfig(ClientModel):
    """A transcription session (``?intent=transcription``, no model in the URL)."""

    type: Literal["transcription"] = "transcription"
    audio: AudioConfig

