"""Conversation turn history: kept by the conversation owner, rebuilt from the
durable streams by a new owner after a takeover. Pure module.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from shared.models import Entry, ResponseDone, TranscriptFinal


@dataclass(frozen=True, slots=True)
class Turn:
    utterance_id: str
    user_text: str
    assistant_text: str


#: Answered utterance ids remembered per conversation. A replay (after a takeover,
#: or a client's retried write) concerns recent utterances; memory stays bounded.
ANSWERED_MEMORY = 2048


class History:
    """The last ``max_turns`` answered turns, oldest first, plus which recent
    utterances have been answered (so a replayed transcript is not answered twice)."""

    def __init__(self, max_turns: int, turns: Iterable[Turn] = (), answered: Iterable[str] = ()) -> None:
        self.turns: deque[Turn] = deque(turns, maxlen=max_turns if max_turns > 0 else 0)
        self._answered: dict[str, None] = {}
        for utterance_id in answered:
            self.mark_answered(utterance_id)

    def add(self, turn: Turn) -> None:
        self.turns.append(turn)
        self.mark_answered(turn.utterance_id)

    def mark_answered(self, utterance_id: str) -> None:
        self._answered[utterance_id] = None
        if len(self._answered) > ANSWERED_MEMORY:
            del self._answered[next(iter(self._answered))]

    def is_answered(self, utterance_id: str) -> bool:
        return utterance_id in self._answered


def rebuild(
    transcripts: Iterable[Entry], responses: Iterable[Entry], max_turns: int
) -> History:
    """Pair each final transcript with its ``response.done``, in transcript order.

    Finals with no done yet are not turns: they are still pending in the
    group and the new owner answers them itself.
    """
    answers: dict[str, str] = {}
    for entry in responses:
        if isinstance(entry, ResponseDone):
            answers.setdefault(entry.utterance_id, entry.text)
    turns: list[Turn] = []
    seen: set[str] = set()
    for entry in transcripts:
        if isinstance(entry, TranscriptFinal) and entry.utterance_id not in seen:
            seen.add(entry.utterance_id)
            if entry.utterance_id in answers:
                turns.append(Turn(entry.utterance_id, entry.text, answers[entry.utterance_id]))
    return History(max_turns, turns, answered=answers.keys())
