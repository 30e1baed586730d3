"""The client events the fake refuses the way the real GA API does: each check
returns the :class:`Refusal` (the ``error`` event's code, message and param)
for the first thing wrong, or None. Beta shapes are refused here: a missing
``session.type``, ``session.modalities``, ``session.temperature``,
``response.modalities``, assistant content ``text`` instead of ``output_text``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from tests.fake_realtime_script import BYTES_PER_MS, MIN_COMMIT_BYTES

_REALTIME_SESSION_KEYS = {
    "type", "output_modalities", "instructions", "max_output_tokens", "audio", "tools", "tool_choice",
    "model", "tracing", "truncation", "prompt", "include",
}
_TRANSCRIPTION_SESSION_KEYS = {"type", "audio", "include"}
_RESPONSE_KEYS = {
    "output_modalities", "instructions", "max_output_tokens", "conversation", "metadata", "input",
    "tools", "tool_choice", "audio", "prompt",
}


class Refusal(NamedTuple):
    """What the API answers a refused client event: an ``error`` event with these."""

    code: str
    message: str
    param: str | None = None


def check_session_update(session: Any, kind: str) -> Refusal | None:
    """A ``session.update`` on a session of ``kind`` (``realtime`` or ``transcription``)."""
    if not isinstance(session, dict):
        return Refusal("invalid_type", "Invalid type for 'session': expected an object.", "session")
    if "type" not in session:
        return Refusal("missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type")
    if session["type"] not in ("realtime", "transcription"):
        return Refusal("invalid_value", f"Invalid value: '{session['type']}'. Supported values are: "
                       "'realtime' and 'transcription'.", "session.type")
    if session["type"] != kind:
        return Refusal("invalid_value", f"Passing a {session['type']} session update event to a "
                       f"{kind} session is not allowed.", "session.type")
    allowed = _REALTIME_SESSION_KEYS if kind == "realtime" else _TRANSCRIPTION_SESSION_KEYS
    for key in session:
        if key not in allowed:
            return Refusal("unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}")
    for mod in session.get("output_modalities", []):
        if mod not in ("text", "audio"):
            return Refusal("invalid_value", f"Invalid value: '{mod}'.", "session.output_modalities")
    audio_input = (session.get("audio") or {}).get("input") or {}
    fmt = audio_input.get("format")
    if fmt is not None and fmt != {"type": "audio/pcm", "rate": 24000}:
        return Refusal("invalid_value", f"Invalid audio format {fmt!r}.", "session.audio.input.format")
    if kind == "transcription":
        td = audio_input.get("turn_detection", "absent")
        if td not in (None, "absent") and (not isinstance(td, dict) or td.get("type") not in ("server_vad",
                                                                                          "semantic_vad")):
            return Refusal("invalid_value", "Invalid turn_detection.", "session.audio.input.turn_detection")
    return None


def check_commit(buffered_bytes: int) -> Refusal | None:
    """An ``input_audio_buffer.commit`` of ``buffered_bytes`` of audio (at least 100 ms)."""
    if buffered_bytes < MIN_COMMIT_BYTES:
        ms = buffered_bytes / BYTES_PER_MS
        return Refusal("input_audio_buffer_commit_empty",
                       "Error committing input audio buffer: buffer too small. Expected at least 100ms of "
                       f"audio, but buffer only has {ms:.2f}ms of audio.")
    return None


def check_item(item: Any) -> Refusal | None:
    """The item of a ``conversation.item.create``: a message whose content parts suit its role."""
    if not isinstance(item, dict):
        return Refusal("missing_required_parameter", "Missing required parameter: 'item'.", "item")
    if item.get("type") != "message" or item.get("role") not in ("user", "assistant", "system"):
        return Refusal("invalid_value", "Invalid item.", "item")
    allowed = {"user": ("input_text", "input_audio", "input_image"), "system": ("input_text",),
               "assistant": ("output_text", "output_audio")}[item["role"]]
    content = item.get("content")
    if not isinstance(content, list) or not content:
        return Refusal("missing_required_parameter", "Missing required parameter: 'item.content'.", "item.content")
    for i, part in enumerate(content):
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype not in allowed:
            return Refusal("invalid_value", f"Invalid value: '{ptype}'. Supported values are: "
                           + " and ".join(f"'{a}'" for a in allowed) + ".", f"item.content[{i}].type")
    return None


def check_response_create(kind: str, params: dict[str, Any]) -> Refusal | None:
    """A ``response.create`` with ``params`` on a session of ``kind``."""
    if kind != "realtime":
        return Refusal("invalid_request_error", "Transcription sessions do not create responses.")
    for key in params:
        if key not in _RESPONSE_KEYS:
            return Refusal("unknown_parameter", f"Unknown parameter: 'response.{key}'.", f"response.{key}")
    return None
