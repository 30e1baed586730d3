"""Conversation turn history: kept by the conversation owner, rebuilt from the
durable streams by a new owner after a takeover. Pure module.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from shared.models import Entry, ResponseDone, ResponseRequest, ResponseTruncate, TranscriptFinal


@dataclass(frozen=True, slots=True)
class Turn:
    utterance_id: str
    user_text: str
    assistant_text: str


#: User turns kept while they wait for a ``response.request`` (older ones are dropped):
#: a client that sends messages and never asks for an answer cannot grow a worker.
MAX_UNANSWERED = 64

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

    def amend(self, utterance_id: str, assistant_text: str) -> bool:
        """Only ``assistant_text`` of that turn's answer was heard (a truncation);
        False when the turn is no longer kept."""
        for i, turn in enumerate(self.turns):
            if turn.utterance_id == utterance_id:
                self.turns[i] = Turn(utterance_id, turn.user_text, assistant_text)
                return True
        return False

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


class NewestTurns:
    """The newest ``max_turns`` turns, rebuilt from the two streams read from
    their newest end, page by page: the cost is that of the turns kept, not of
    the streams' length (``rebuild`` needs the whole streams).

    Feed ``add_responses`` pages of the responses stream, newest first, until it
    returns True (it has ``max_turns`` answers, or was given one page when
    ``max_turns`` is 0), or the stream ends; then ``add_transcripts`` pages of
    the transcripts stream, newest first, until it returns True (it has the
    final transcript of each of those answers) or the stream ends.
    ``history()`` is then what ``rebuild`` gives for the whole streams, as long
    as answers follow their transcripts' order (one turn at a time, as the
    conversation owner answers) and an utterance's duplicate finals lie within
    the pages read (the earliest one read is the turn, as ``rebuild`` keeps the
    first). Every answer read counts as answered, so a replayed transcript of a
    recent utterance is not answered twice.
    """

    def __init__(self, max_turns: int) -> None:
        self.max_turns = max(0, max_turns)
        #: utterance id -> answer, newest first (walking back, an earlier done of
        #: the same utterance replaces the text: ``rebuild`` keeps the first).
        self._answers: dict[str, str] = {}
        #: utterance id -> (position, user text); positions fall as the walk goes back.
        self._finals: dict[str, tuple[int, str]] = {}
        #: utterance id -> the user text of an answer that carried it (``response.done.prompt``).
        self._prompts: dict[str, str] = {}
        #: utterance id -> the part of its answer that was heard (the newest truncation).
        self._heard: dict[str, str] = {}
        self._position = 0

    def add_responses(self, newest_first: Iterable[Entry]) -> bool:
        """One page of the responses stream, newest first; True once that is enough."""
        for entry in newest_first:
            if isinstance(entry, ResponseDone):
                self._answers[entry.utterance_id] = entry.text
                if entry.prompt is not None:  # the answer of a request: its turn needs no final
                    self._prompts[entry.utterance_id] = entry.prompt
        return len(self._answers) >= self.max_turns

    def add_transcripts(self, newest_first: Iterable[Entry]) -> bool:
        """One page of the transcripts stream, newest first; True once every
        wanted final was found."""
        wanted = self._wanted_ids()
        for entry in newest_first:
            self._position -= 1
            if isinstance(entry, ResponseTruncate):
                self._heard.setdefault(entry.target_id, entry.text)
            if isinstance(entry, TranscriptFinal | ResponseRequest):
                uid = entry.utterance_id if isinstance(entry, TranscriptFinal) else entry.request_id
                if uid in self._answers:
                    text = self._prompts.get(uid, entry.text if isinstance(entry, TranscriptFinal) else "")
                    self._finals[uid] = (self._position, text)
        return wanted <= self._finals.keys()

    @property
    def needs_transcripts(self) -> bool:
        """False when no final has to be looked for (no answers, or no turns kept)."""
        return bool(self._wanted_ids())

    def history(self) -> History:
        found = sorted((pos, uid, text) for uid, (pos, text) in self._finals.items())
        turns = [Turn(uid, text, self._heard.get(uid, self._answers[uid])) for _, uid, text in found]
        return History(self.max_turns, turns[-self.max_turns:] if self.max_turns else (),
                       answered=reversed(list(self._answers)))

    def _wanted_ids(self) -> set[str]:
        """The newest ``max_turns`` answers: their finals (or requests) are the turns."""
        return set(itertools.islice(self._answers, self.max_turns))


class UnansweredTail:
    """The user turns that wait for an answer (``respond: false`` finals since the
    last answered turn), rebuilt after a takeover from the transcripts stream read
    from its newest end, page by page.

    Feed ``add`` pages, newest first, until it returns True (it reached a final or
    request that was answered: everything older was answered with it) or the
    stream ends; ``turns()`` are then (utterance id, text), oldest first. Entries
    still pending in the group are in it too: the session drops their replay by id.
    """

    def __init__(self, answered: History) -> None:
        self._answered = answered
        self._newest_first: list[tuple[str, str]] = []

    def add(self, newest_first: Iterable[Entry]) -> bool:
        for entry in newest_first:
            if isinstance(entry, TranscriptFinal):
                if not entry.respond:
                    self._newest_first.append((entry.utterance_id, entry.text))
                    if len(self._newest_first) >= MAX_UNANSWERED:
                        return True
                elif self._answered.is_answered(entry.utterance_id):
                    return True
            elif isinstance(entry, ResponseRequest) and self._answered.is_answered(entry.request_id):
                return True
        return False

    def turns(self) -> list[tuple[str, str]]:
        return list(reversed(self._newest_first))
