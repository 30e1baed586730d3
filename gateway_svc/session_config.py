"""A Realtime session's configuration: GA defaults, ``session.update`` merging
with the API's validation errors, and the session object the server reports.

Pure module. Fields the API has and the pipeline does not use (tools, tracing,
noise reduction, ...) are accepted and reported back unchanged, as the API
does, but have no effect; an audio format other than 24 kHz PCM16 is refused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from gateway_svc.vad import ServerVadConfig, TurnDetectionError

SessionType = Literal["realtime", "transcription"]

PCM_FORMAT = {"type": "audio/pcm", "rate": 24000}

DEFAULT_TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
    "idle_timeout_ms": None, "create_response": True, "interrupt_response": True,
}

_MODALITIES = (["text"], ["audio"])
_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")


class ConfigError(ValueError):
    """A ``session.update`` the API would refuse: ``code`` and ``param`` go into the error event."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass(frozen=True)
class SessionConfig:
    type: SessionType
    model: str
    instructions: str
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    #: None: the client commits turns itself (``turn_detection: null``).
    turn_detection: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_TURN_DETECTION))
    transcription: dict[str, Any] | None = None
    voice: str = "marin"
    #: Accepted fields with no effect here, echoed back as given.
    passthrough: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def default(cls, type_: SessionType, model: str, instructions: str) -> SessionConfig:
        if type_ == "transcription":
            return cls(type="transcription", model=model, instructions="", output_modalities=["text"],
                       transcription={"model": model, "language": "en"})
        return cls(type="realtime", model=model, instructions=instructions)

    @property
    def audio_out(self) -> bool:
        return self.type == "realtime" and self.output_modalities == ["audio"]

    @property
    def server_vad(self) -> bool:
        return self.turn_detection is not None

    @property
    def interrupt_response(self) -> bool:
        """Speech during an answer cancels it."""
        td = self.turn_detection
        return self.type == "realtime" and td is not None and td.get("interrupt_response", True) is not False

    @property
    def create_response(self) -> bool:
        """Answer each turn the VAD commits, without a ``response.create``."""
        td = self.turn_detection
        return self.type == "realtime" and td is not None and td.get("create_response", True) is not False

    def update(self, session: Any, allow_instructions: bool) -> SessionConfig:
        """This config with ``session`` (a ``session.update``'s object) applied; raises ConfigError."""
        if not isinstance(session, dict):
            raise ConfigError("session must be an object", param="session")
        if "type" not in session:
            raise ConfigError("Missing required parameter: 'session.type'.", "missing_required_parameter",
                              "session.type")
        if session["type"] != self.type:
            raise ConfigError(f"session.type cannot change from {self.type!r} to {session['type']!r} "
                              f"(connect with{'' if session['type'] == 'transcription' else 'out'} "
                              "?intent=transcription)", param="session.type")
        new = self
        passthrough = dict(self.passthrough)
        for key, value in session.items():
            if key == "type":
                continue
            if key == "instructions":
                if not isinstance(value, str):
                    raise ConfigError("instructions must be a string", param="session.instructions")
                if allow_instructions:
                    new = replace(new, instructions=value[:8000])
                # else: the deployment's system prompt stays; session.updated shows it.
            elif key == "output_modalities":
                if value not in _MODALITIES:
                    raise ConfigError('output_modalities must be ["text"] or ["audio"]',
                                      param="session.output_modalities")
                if self.type == "transcription":
                    raise ConfigError("a transcription session has no output", param="session.output_modalities")
                new = replace(new, output_modalities=list(value))
            elif key == "audio":
                new = _apply_audio(new, value)
            elif key == "model":
                if not isinstance(value, str):
                    raise ConfigError("model must be a string", param="session.model")
            else:
                passthrough[key] = copy.deepcopy(value)
        return replace(new, passthrough=passthrough)

    def wire(self, session_id: str, conversation_id: str) -> dict[str, Any]:
        """The session object of ``session.created`` / ``session.updated``."""
        audio_in: dict[str, Any] = {"format": dict(PCM_FORMAT), "transcription": self.transcription,
                                    "turn_detection": self.turn_detection, "noise_reduction": None}
        base: dict[str, Any] = {**self.passthrough, "type": self.type, "id": session_id, "object":
                                "realtime.session" if self.type == "realtime" else "realtime.transcription_session",
                                "conversation_id": conversation_id}
        if self.type == "transcription":
            return {**base, "audio": {"input": audio_in}}
        return {**base, "model": self.model, "instructions": self.instructions,
                "output_modalities": self.output_modalities, "max_output_tokens": "inf",
                "audio": {"input": audio_in, "output": {"format": dict(PCM_FORMAT), "voice": self.voice,
                                                        "speed": 1.0}}}

    def to_json(self) -> dict[str, Any]:
        """What a resumed connection restores (see :meth:`from_json`)."""
        return {"type": self.type, "model": self.model, "instructions": self.instructions,
                "output_modalities": self.output_modalities, "turn_detection": self.turn_detection,
                "transcription": self.transcription, "voice": self.voice}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionConfig:
        return cls(type=data["type"], model=data["model"], instructions=data["instructions"],
                   output_modalities=list(data["output_modalities"]), turn_detection=data["turn_detection"],
                   transcription=data["transcription"], voice=data["voice"])


def _apply_audio(config: SessionConfig, audio: Any) -> SessionConfig:
    if not isinstance(audio, dict):
        raise ConfigError("audio must be an object", param="session.audio")
    new = config
    audio_in = audio.get("input")
    if audio_in is not None:
        if not isinstance(audio_in, dict):
            raise ConfigError("audio.input must be an object", param="session.audio.input")
        _check_format(audio_in.get("format"), "session.audio.input.format")
        if "turn_detection" in audio_in:
            new = replace(new, turn_detection=_turn_detection(audio_in["turn_detection"]))
        if "transcription" in audio_in:
            value = audio_in["transcription"]
            if value is not None and not isinstance(value, dict):
                raise ConfigError("transcription must be an object or null",
                                  param="session.audio.input.transcription")
            new = replace(new, transcription=value)
    audio_out = audio.get("output")
    if audio_out is not None:
        if not isinstance(audio_out, dict):
            raise ConfigError("audio.output must be an object", param="session.audio.output")
        _check_format(audio_out.get("format"), "session.audio.output.format")
        voice = audio_out.get("voice")
        if voice is not None:
            if voice not in _VOICES:
                raise ConfigError(f"voice must be one of {', '.join(_VOICES)}", param="session.audio.output.voice")
            new = replace(new, voice=voice)
    return new


def _check_format(fmt: Any, param: str) -> None:
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "audio/pcm" or fmt.get("rate", 24000) != 24000:
        raise ConfigError("only audio/pcm at 24000 Hz is supported here", "unsupported_audio_format", param)


def _turn_detection(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("server_vad", "semantic_vad"):
        raise ConfigError('turn_detection must be null or {"type": "server_vad", ...}',
                          param="session.audio.input.turn_detection")
    merged = {**DEFAULT_TURN_DETECTION, **value}
    # semantic_vad has no local model here: it runs as server_vad with its defaults.
    merged["type"] = "server_vad"
    merged.pop("eagerness", None)
    try:
        ServerVadConfig.from_turn_detection(merged)
    except TurnDetectionError as exc:
        raise ConfigError(str(exc), param=f"session.audio.input.turn_detection.{exc.param}") from None
    return merged
