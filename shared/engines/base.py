"""The two engine interfaces: transcription sessions and conversation sessions.

An engine is loaded once per worker (``start``) and opens one session per
conversation the worker owns. Engines raise :class:`EngineError` for a failure
the client should hear about (``retryable=False``: the turn gets a
``response.failed``) or that may pass (``retryable=True``: the runtime retries
the entry, then dead-letters it).

Exceptions::

    EngineError
    └── EngineUnavailable   (start-up: a missing package, key or model)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shared.history import Turn
from shared.models import AudioChunk, AudioEnd, UtteranceText

InputEntry = UtteranceText | AudioChunk | AudioEnd


class EngineError(Exception):
    def __init__(self, message: str, code: str = "engine_error", retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class EngineUnavailable(EngineError):
    """The engine cannot run here; the message says exactly what to install or set."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="engine_unavailable", retryable=False)


# --- transcription ---------------------------------------------------------------


class TranscriptSink(Protocol):
    """Where a transcription session puts its results (the worker writes them)."""

    def delta(self, utterance_id: str, text: str) -> None: ...

    def final(self, utterance_id: str, text: str, sent_ms: int, consumed_ids: Sequence[str]) -> None:
        """A finished utterance. ``consumed_ids``: every input entry id it used,
        in stream order; they are acked together with the transcript."""
        ...

    def skip(self, consumed_ids: Sequence[str], reason: str, utterance_id: str | None = None) -> None:
        """Input entries that produced no transcript (silence, too short). With the
        ``utterance_id`` of a client's turn, the client hears that it gave none."""
        ...

    def dead(self, consumed_ids: Sequence[str], reason: str, utterance_id: str | None = None) -> None:
        """Input entries that could not be transcribed (an upstream failure): they
        go to the dead-letter stream with the reason, so an operator can replay them
        (and the client hears of it, as for ``skip``)."""
        ...


class TranscriptionSession(ABC):
    @abstractmethod
    async def feed(self, entry_id: str, entry: InputEntry) -> None:
        """Take one input entry, in stream order. Results go to the sink."""

    @abstractmethod
    async def flush(self) -> None:
        """The conversation is ending: finish (or skip) whatever is buffered."""

    async def settle(self) -> None:  # noqa: B027 - optional hook
        """Return once every utterance fed so far has had its final, skip or dead
        (or a timeout passed): a ``response.request`` is relayed behind them. The
        default suits engines whose ``feed`` reports a finished utterance before
        it returns."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release upstream resources."""


class TranscriptionEngine(ABC):
    name: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load models / check credentials once per worker."""

    @abstractmethod
    async def open_session(self, conversation_id: str, sink: TranscriptSink) -> TranscriptionSession: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what start() loaded."""


# --- conversation -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Completed:
    """The response is complete; ``usage`` uses the Realtime API's token field names."""

    usage: dict[str, int] = field(default_factory=dict)


ResponseEvent = TextDelta | Completed


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer, for an engine that has it at once (see ``answer_now``)."""

    text: str
    usage: dict[str, int] = field(default_factory=dict)


class ConversationSession(ABC):
    @abstractmethod
    def respond(self, user_text: str) -> AsyncIterator[ResponseEvent]:
        """Add the user's turn and stream the answer: TextDelta..., then Completed.
        Raises EngineError when the answer fails."""

    def answer_now(self, user_text: str) -> Answer | None:
        """The whole answer when the engine has it without waiting (no I/O, no
        model run), having added the user's turn; None (the default) to stream it
        with :meth:`respond`. The worker then writes the answer as its one
        ``response.done``, skipping the per-delta machinery that a streamed answer
        needs: deltas produced within one flush are coalesced into the done anyway."""
        return None

    def remember(self, turn: Turn) -> None:  # noqa: B027 - optional hook
        """A turn answered elsewhere (before a takeover), or an answer cancelled
        part-way (``respond`` was abandoned, so the engine kept nothing of it): add
        it to the context."""

    async def amend_last_answer(self, text: str) -> None:  # noqa: B027 - optional hook
        """Only ``text`` of the last answer was heard (a truncation): the context
        holds that from now on, not the whole answer."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release upstream resources."""


class ConversationEngine(ABC):
    name: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load models / check credentials once per worker."""

    @abstractmethod
    async def open_session(
        self, conversation_id: str, instructions: str, history: Sequence[Turn]
    ) -> ConversationSession:
        """Open a session primed with ``history`` (oldest first)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what start() loaded."""
