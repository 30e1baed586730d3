"""Deterministic conversation engine for tests and benchmarks: answers
``I've received your transcription: "<text>"`` as several deltas, and counts
the turns it has seen (so a test can tell that history survived a takeover)."""

from __future__ import annotations

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
    def __init__(self, history: Sequence[Turn], words_per_delta: int) -> None:
        self.turns = len(history)
        self.words_per_delta = words_per_delta

    def remember(self, turn: Turn) -> None:
        self.turns += 1

    async def respond(self, user_text: str) -> AsyncIterator[ResponseEvent]:
        answer = self.answer_now(user_text)
        for piece in split_deltas(answer.text, self.words_per_delta):
            yield TextDelta(piece)
        yield Completed(answer.usage)

    def answer_now(self, user_text: str) -> Answer:
        # Echo never waits, so its deltas could never reach the stream before the
        # done (they would be coalesced): the worker takes the answer whole.
        self.turns += 1
        answer = echo_answer(user_text, self.turns)
        words, asked = len(answer.split()), len(user_text.split())
        return Answer(answer, {"input_tokens": asked, "output_tokens": words, "total_tokens": words + asked})


class EchoConversation(ConversationEngine):
    name = "echo"

    def __init__(self, words_per_delta: int = 3) -> None:
        self.words_per_delta = words_per_delta

    async def open_session(
        self, conversation_id: str, instructions: str, history: Sequence[Turn]
    ) -> ConversationSession:
        return _Session(history, self.words_per_delta)
