"""What the transcription state machine asks its I/O edge to do (pure data):
send a client event, or hand the sink a delta, a final, a skip or a refusal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.realtime.session_common import Send

TurnDetection = Literal["client", "server_vad"]


@dataclass(frozen=True, slots=True)
class Delta:
    """A partial transcript of an utterance (for clients; order is not guaranteed)."""

    utterance_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Final:
    """A finished utterance, released in commit order with every input entry it consumed."""

    utterance_id: str
    text: str
    sent_ms: int
    entry_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Skip:
    """Input entries that produce no transcript. ``failed``: the API failed to
    transcribe them (worth a warning), rather than there being nothing to send."""

    entry_ids: tuple[str, ...]
    reason: str
    utterance_id: str | None = None
    failed: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    """Input entries refused (an utterance over MAX_UTTERANCE_MS of audio): they go
    to the dead-letter stream with the reason. ``first``: the refusal of the
    utterance, rather than one of its later entries (worth a warning once)."""

    entry_ids: tuple[str, ...]
    reason: str
    utterance_id: str | None = None
    first: bool = True


TranscriptionAction = Send | Delta | Final | Skip | Reject
