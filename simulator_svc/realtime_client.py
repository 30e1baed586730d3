"""The simulator's side of the Realtime protocol (GA shapes), as pure helpers:
the gateway's WebSocket address, the client events the simulator sends, what
it reads out of a ``response.done``, and the two ways server events are tied
back to the utterance that caused them. Pure module: no I/O.

Tying events to utterances:

- a response names no input item, so :class:`ResponseMatcher` gives each new
  response id to the oldest utterance still waiting for one (a conversation's
  answers come in order); a response nobody waits for is a second answer, and
  goes to the utterance answered last (the tracker counts it as a duplicate);
- a server-VAD turn is found in the audio, so :class:`AudioTimeline` places a
  ``speech_stopped``'s ``audio_end_ms`` in the stretch of appended audio that
  each utterance occupied (the reader may see the event after the sender has
  moved on to the next utterance: wall-clock order would misplace it).
"""

from __future__ import annotations

import base64
import bisect
from collections import deque
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

Event = dict[str, Any]

REALTIME_PATH = "/v1/realtime"
#: PCM16 mono at 24 kHz, as the gateway counts it (``len(pcm) // 48`` ms per append).
BYTES_PER_MS = 48

_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def realtime_url(gateway: str, model: str = "local") -> str:
    """``http://HOST:PORT`` (or ws://, https://, wss://) -> ``ws://HOST:PORT/v1/realtime?model=...``.

    A path in ``gateway`` is kept as a prefix (a gateway behind a proxy at ``/voice``).
    Raises ValueError for anything else.
    """
    parts = urlsplit(gateway.strip())
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ValueError(f"--gateway wants http://HOST:PORT (or ws://, https://, wss://), not {gateway!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(REALTIME_PATH):
        path += REALTIME_PATH
    return urlunsplit((scheme, parts.netloc, path, urlencode({"model": model}), ""))


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The handshake's headers: a bearer key, or none for an anonymous gateway."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# --- client events ----------------------------------------------------------------------


def text_session_update(audio_out: bool) -> Event:
    """Text turns and no VAD (the client says when to answer); text answers unless ``audio_out``."""
    session: Event = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    if not audio_out:
        session["output_modalities"] = ["text"]
    return {"type": "session.update", "session": session}


def audio_session_update(audio_out: bool) -> Event:
    """The default server VAD, with input transcription asked for (the API sends
    transcripts only then); text answers unless ``audio_out``."""
    session: Event = {"type": "realtime", "audio": {"input": {"transcription": {"model": "local"}}}}
    if not audio_out:
        session["output_modalities"] = ["text"]
    return {"type": "session.update", "session": session}


def user_text(text: str, event_id: str) -> Event:
    return {"type": "conversation.item.create", "event_id": event_id, "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}


def response_create(event_id: str) -> Event:
    return {"type": "response.create", "event_id": event_id}


def response_cancel(event_id: str) -> Event:
    """Cancel the answer in progress (the gateway picks it: the one the client is getting)."""
    return {"type": "response.cancel", "event_id": event_id}


def audio_append(pcm: bytes, event_id: str) -> Event:
    return {"type": "input_audio_buffer.append", "event_id": event_id, "audio": base64.b64encode(pcm).decode()}


# --- reading server events ------------------------------------------------------------------


def response_text(response: Event) -> str:
    """The answer's text: its output message's text, or its audio's transcript."""
    parts = []
    for item in response.get("output") or []:
        for part in (item.get("content") or []) if isinstance(item, dict) else []:
            if isinstance(part, dict):
                text = part.get("text") if part.get("text") is not None else part.get("transcript")
                if isinstance(text, str):
                    parts.append(text)
    return "".join(parts)


def failure_reason(response: Event) -> str | None:
    """None for a completed response; else why not (``failed``, ``cancelled``, ``incomplete``)."""
    status = response.get("status")
    if status == "completed":
        return None
    details = response.get("status_details") or {}
    error = details.get("error") if isinstance(details, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return f"{status}: {error.get('code') or error.get('type')}: {error['message']}"
    reason = details.get("reason") if isinstance(details, dict) else None
    return f"{status}: {reason}" if reason else str(status)


def is_cancelled(response: Event) -> bool:
    """The response was cut off by an interruption (speech over it, or response.cancel)."""
    return response.get("status") == "cancelled"


def error_text(event: Event) -> str:
    """``code: message`` of an ``error`` event."""
    error = event.get("error") or {}
    return f"{error.get('code') or error.get('type')}: {error.get('message')}"


class ResponseMatcher:
    """Response id -> the utterance it answers, for one conversation (see the module's doc)."""

    def __init__(self) -> None:
        self._waiting: deque[str] = deque()
        self._answers: dict[str, str] = {}
        self._last: str | None = None

    def expect(self, utterance_id: str) -> None:
        """``utterance_id`` asked for one answer (a response.create, or a committed turn)."""
        self._waiting.append(utterance_id)

    def withdraw(self, utterance_id: str) -> None:
        """``utterance_id``'s request was refused: no answer will come for it."""
        if utterance_id in self._waiting:
            self._waiting.remove(utterance_id)

    def utterance_of(self, response_id: str) -> str | None:
        """The utterance ``response_id`` answers (None: no utterance was ever sent)."""
        known = self._answers.get(response_id)
        if known is not None:
            return known
        utterance_id = self._waiting.popleft() if self._waiting else self._last
        if utterance_id is not None:
            self._answers[response_id] = utterance_id
            self._last = utterance_id
        return utterance_id


class AudioTimeline:
    """Which utterance each stretch of appended audio belongs to, in the gateway's
    audio time (ms since the session's first append)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._utterances: list[str] = []
        self.ms = 0

    def begin(self, utterance_id: str) -> None:
        """What is appended from now on is ``utterance_id``'s (its speech and trailing silence)."""
        self._starts.append(self.ms)
        self._utterances.append(utterance_id)

    def appended(self, pcm: bytes) -> None:
        self.ms += len(pcm) // BYTES_PER_MS

    def utterance_at(self, audio_ms: int) -> str | None:
        index = bisect.bisect_right(self._starts, audio_ms) - 1
        return self._utterances[index] if index >= 0 else None
