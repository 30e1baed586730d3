"""What the fake Realtime server does, scripted for tests: the knobs that
inject faults (:class:`Faults`), the "speech" it transcribes back to text
(:func:`speech_pcm`), the answer it gives (:func:`answer_text`), and the
record of what each connection did (:class:`SessionRecord`, for assertions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TEXT_MAGIC = b"TXT:"
RATE_HZ = 24_000
BYTES_PER_MS = RATE_HZ * 2 // 1000  # 48
MIN_COMMIT_BYTES = 100 * BYTES_PER_MS


def speech_pcm(text: str, duration_ms: int = 300) -> bytes:
    """PCM16 'speech' the fake transcribes back to ``text``: the text as
    non-silent samples, zero-padded to ``duration_ms``."""
    body = TEXT_MAGIC + text.encode() + b"\x00"
    if len(body) % 2:
        body += b"\x00"
    total = max(len(body), duration_ms * BYTES_PER_MS)
    total += total % 2
    return body + b"\x00" * (total - len(body))


def transcript_of(pcm: bytes) -> str:
    """The text :func:`speech_pcm` put into ``pcm`` (other audio: ``"<ms> ms of audio"``)."""
    start = pcm.find(TEXT_MAGIC)
    if start >= 0:
        end = pcm.find(b"\x00", start)
        return pcm[start + len(TEXT_MAGIC): end if end >= 0 else None].decode(errors="replace")
    return f"{len(pcm) // BYTES_PER_MS} ms of audio"


def answer_text(user_text: str, items: int) -> str:
    """The answer to ``user_text`` when the conversation holds ``items`` messages."""
    return f'echo: "{user_text}" (items {items})'


@dataclass
class Faults:
    """Test knobs. Budgets count across the whole server (so "expire one session")."""

    #: A conversation session that completed N responses gets ``session_expired`` + close 1001.
    expire_after_responses: int | None = None
    #: A transcription session that acknowledged N commits gets ``session_expired`` + close 1001.
    expire_after_commits: int | None = None
    expire_budget: int = 1
    #: A conversation session that completed N responses drops during the next one, after its first delta.
    drop_after_responses: int | None = None
    #: A transcription session drops right after acknowledging its Nth commit (before the transcript).
    drop_after_commits: int | None = None
    drop_budget: int = 1
    #: 1006: abort the TCP connection (no close frame); else close with this code (e.g. 1011).
    drop_code: int = 1006
    #: The next N response.create fail with status ``failed`` / ``rate_limit_exceeded``.
    rate_limit_responses: int = 0
    #: Accept the socket then close 3000 invalid_api_key (seen with a bad key).
    close_3000_on_open: bool = False
    #: Delay of the transcript of a session's k-th commit: delays[k % len] (e.g. [0.3, 0]: out of order).
    completion_delays_s: list[float] = field(default_factory=lambda: [0.0])
    #: Transcripts (texts) that fail with conversation.item.input_audio_transcription.failed.
    fail_transcripts: set[str] = field(default_factory=set)
    #: Pause between output_text deltas.
    delta_delay_s: float = 0.0
    #: The next N responses stop after their first delta and never end on their own (a cancel ends them).
    stall_responses: int = 0
    #: ``response.cancel`` gets no answer at all (the response runs on).
    ignore_cancels: bool = False


@dataclass
class SessionRecord:
    """What one connection did (for assertions)."""

    kind: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    responses: int = 0
    commits: int = 0
    closed_by_fault: str | None = None

    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.sent if e.get("type") == "error"]

    def received_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.received]
