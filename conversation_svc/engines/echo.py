"""Deterministic conversation engine for tests and benchmarks: answers
``I've received your transcription: "<text>" (turn N)`` as several deltas, and
counts the turns it has seen (so a test can tell that history survived a takeover).

Its knobs make it useful for testing interruptions and load:

- ``delta_delay_ms`` > 0 streams the deltas that far apart (0: the whole
  answer at once), so a cancel can land in the middle of an answer;
- a user turn that starts with ``/recall`` is answered with the last answer
  the engine's context holds (``I said: "<answer>" (turn N)``), so a test can
  see what the context kept of a cancelled or truncated answer (or what a
  conversation moved to another worker still remembers);
- ``block_ms`` > 0 holds the worker's event loop that long per answer (a
  blocking pause, as a CPU-bound engine would), so a test can saturate a worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from shared.engines.base import (
    Answer,
    Completed,
    ConversationEngine,
    ConversationSession,
    ResponseEvent,
    TextDelta,
)
from shared.history import Turn

RECALL = "/recall"


def echo_answer(user_text: str, turn_number: int) -> str:
    return f'I\'ve received your transcription: "{user_text}" (turn {turn_number})'


def split_deltas(text: str, words_per_delta: int) -> list[str]:
    words = text.split(" ")
    if len(words) <= words_per_delta:
        return [text]
    return [
        " ".join(words[i : i + words_per_delta]) + (" " if i + words_per_delta < len(words) else "")
        for i in range(0, len(words), words_per_delta)
    ]


class _Session(ConversationSession):
    def __init__(self, history: Sequence[Turn], words_per_delta: int, delta_delay_ms: int, block_ms: int = 0) -> None:
        self.turns = len(history)
        self.last_answer = history[-1].assistant_text if history else ""
        self.words_per_delta = words_per_delta
        self.delta_delay_ms = delta_delay_ms
        self.block_ms = block_ms
        #: A streamed answer was started and not finished (it was cancelled): its turn is counted.
        self._unfinished = False

    def remember(self, turn: Turn) -> None:
        if not self._unfinished:  # a turn answered elsewhere; a cancelled one of ours already counts
            self.turns += 1
        self._unfinished = False
        self.last_answer = turn.assistant_text

    async def amend_last_answer(self, text: str) -> None:
        self.last_answer = text

    def _answer(self, user_text: str) -> Answer:
        if self.block_ms:
            time.sleep(self.block_ms / 1000)  # on purpose: the whole worker waits, as for a CPU-bound engine
        self.turns += 1
        if user_text.lstrip().startswith(RECALL):
            answer = f'I said: "{self.last_answer}" (turn {self.turns})'
        else:
            answer = echo_answer(user_text, self.turns)
        words, asked = len(answer.split()), len(user_text.split())
        return Answer(answer, {"input_tokens": asked, "output_tokens": words, "total_tokens": words + asked})

    async def respond(self, user_text: str) -> AsyncIterator[ResponseEvent]:
        answer = self._answer(user_text)
        self._unfinished = True
        streamed: list[str] = []
        for piece in split_deltas(answer.text, self.words_per_delta):
            if self.delta_delay_ms:
                await asyncio.sleep(self.delta_delay_ms / 1000)
            streamed.append(piece)
            yield TextDelta(piece)
        self.last_answer = "".join(streamed)
        self._unfinished = False
        yield Completed(answer.usage)

    def answer_now(self, user_text: str) -> Answer | None:
        # Undelayed, echo never waits, so its deltas could never reach the stream before
        # the done (they would be coalesced): the worker takes the answer whole.
        if self.delta_delay_ms:
            return None
        answer = self._answer(user_text)
        self.last_answer = answer.text
        return answer


class EchoConversation(ConversationEngine):
    name = "echo"

    def __init__(self, words_per_delta: int = 3, delta_delay_ms: int = 0, block_ms: int = 0) -> None:
        self.words_per_delta = words_per_delta
        self.delta_delay_ms = delta_delay_ms
        self.block_ms = block_ms

    async def open_session(
        self, conversation_id: str, instructions: str, history: Sequence[Turn]
    ) -> ConversationSession:
        return _Session(history, self.words_per_delta, self.delta_delay_ms, self.block_ms)
