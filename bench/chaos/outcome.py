"""What became of every utterance, read from the streams themselves at the end
(not from what the client happened to see): the input streams say what Redis
kept of the client's writes, the responses streams say how each was answered.
The simulator's tracker does the per-utterance bookkeeping."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from shared.bus.resp import StreamEntries, xrange_entries
from shared.keys import Keys
from shared.models import (
    DeadLetter,
    EntryError,
    ResponseDelta,
    ResponseDone,
    ResponseFailed,
    ResponseStarted,
    UtteranceText,
    decode_fields,
)
from simulator_svc.tracker import Tracker, UtteranceRecord, summarise

Utterance = tuple[str, str]
PAGE = 1000


@dataclass
class StreamsRead:
    #: (conversation, utterance) of every utterance.text entry in an input stream.
    kept: set[Utterance] = field(default_factory=set)
    #: Per conversation, in stream order: (stream id time in ms, done or failed entry).
    answers: dict[str, list[tuple[int, ResponseDone | ResponseFailed]]] = field(default_factory=dict)
    #: Per conversation, every response entry: (stream id time in ms, response id).
    response_writes: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    #: Dead letters counted by the stream kind they came from and their reason, numbers masked.
    dead_letters: Counter[str] = field(default_factory=Counter)


def _id_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


async def _scan(redis: aioredis.Redis, key: str) -> StreamEntries:
    """A whole stream, a page at a time."""
    rows: StreamEntries = []
    start = "-"
    while True:
        page = await xrange_entries(redis, key, min=start, count=PAGE)
        rows += page
        if len(page) < PAGE:
            return rows
        start = "(" + page[-1][0].decode()


def dead_letter_kind(letter: DeadLetter) -> str:
    """A dead letter's class: the kind of stream it came from and its reason, with
    numbers and ids masked so that letters of one cause count together."""
    reason = re.sub(r"\d+", "N", letter.reason)
    reason = re.sub(r"sim-\S+", "<conversation>", reason)
    return f"{letter.stream.rsplit(':', 1)[-1]}: {reason[:160]}"


async def read_streams(redis: aioredis.Redis, keys: Keys, conversations: Iterable[str]) -> StreamsRead:
    out = StreamsRead()
    for cid in conversations:
        for _, fields in await _scan(redis, keys.input(cid)):
            try:
                entry = decode_fields(fields)
            except EntryError:
                continue
            if isinstance(entry, UtteranceText):
                out.kept.add((cid, entry.utterance_id))
        answers = out.answers.setdefault(cid, [])
        writes = out.response_writes.setdefault(cid, [])
        for entry_id, fields in await _scan(redis, keys.responses(cid)):
            response = decode_fields(fields)
            at_ms = _id_ms(entry_id)
            if isinstance(response, ResponseStarted | ResponseDelta | ResponseDone | ResponseFailed):
                writes.append((at_ms, response.response_id))
            if isinstance(response, ResponseDone | ResponseFailed):
                answers.append((at_ms, response))
    for dead in keys.deads():
        for _, fields in await _scan(redis, dead):
            out.dead_letters[dead_letter_kind(DeadLetter.model_validate_json(fields[b"d"]))] += 1
    return out


@dataclass
class ConversationOutcome:
    """One conversation's utterances against what its streams hold."""

    utterances: int = 0
    done: int = 0
    #: Failed and never done: each with its code and reason (numbers masked).
    failed: list[str] = field(default_factory=list)
    #: Kept by Redis and never answered, neither done nor failed: must be 0.
    lost: list[str] = field(default_factory=list)
    #: The client's write was acknowledged and Redis did not keep it (its client must send it again).
    lost_by_redis: list[str] = field(default_factory=list)
    #: Answers beyond the first of an utterance (a second done, a second failed, a done and a failed).
    duplicates: int = 0
    out_of_order: int = 0
    #: Answers to utterances that were never sent.
    unknown: int = 0
    #: Client's send to Redis's write of the done, per utterance done.
    latencies_ms: list[float] = field(default_factory=list)

    def clean(self) -> bool:
        return not (self.failed or self.lost or self.lost_by_redis or self.duplicates or self.out_of_order
                    or self.unknown)

    def figures(self) -> dict[str, Any]:
        return {"utterances": self.utterances, "done": self.done, "failed": len(self.failed), "lost": self.lost,
                "lost_by_redis": self.lost_by_redis, "duplicates": self.duplicates,
                "out_of_order": self.out_of_order, "unknown_answers": self.unknown}


def account_conversation(
    cid: str, sent: Iterable[UtteranceRecord], kept: set[Utterance],
    answers: Iterable[tuple[int, ResponseDone | ResponseFailed]],
) -> ConversationOutcome:
    """Answers are taken in the conversation's stream order (that is what out of order
    counts); their time is their stream id's."""
    tracker = Tracker()
    for rec in sent:
        tracker.sent(rec.conversation_id, rec.utterance_id, rec.index, rec.text, rec.sent_ms)
    failures: Counter[str] = Counter()
    reasons: dict[str, str] = {}
    for at_ms, answer in answers:
        if isinstance(answer, ResponseDone):
            tracker.done(cid, answer.utterance_id, answer.text, at_ms)
        elif tracker.failed(cid, answer.utterance_id, answer.reason) is not None:
            failures[answer.utterance_id] += 1
            reasons.setdefault(answer.utterance_id, f"{answer.code}: {re.sub(r'[0-9]+', 'N', answer.reason)[:160]}")
    records = {uid: r for (_, uid), r in tracker.records.items()}
    return ConversationOutcome(
        utterances=len(records),
        done=sum(1 for r in records.values() if r.dones),
        failed=[reasons[uid] for uid in failures if not records[uid].dones],
        lost=[uid for uid, r in records.items() if (cid, uid) in kept and not r.dones and uid not in failures],
        lost_by_redis=[uid for uid in records if (cid, uid) not in kept],
        duplicates=(sum(r.dones - 1 for r in records.values() if r.dones > 1)
                    + sum(n - 1 for n in failures.values())
                    + sum(1 for uid in failures if records[uid].dones)),
        out_of_order=tracker.out_of_order,
        unknown=tracker.unknown,
        latencies_ms=[r.done_ms - r.sent_ms for r in records.values() if r.done_ms is not None],
    )


@dataclass
class Outcome:
    conversations: dict[str, ConversationOutcome]

    def total(self, name: str) -> int:
        return sum(len(v) if isinstance(v := getattr(c, name), list) else int(v)
                   for c in self.conversations.values())

    @property
    def lost(self) -> list[Utterance]:
        return [(cid, uid) for cid, c in self.conversations.items() for uid in c.lost]

    @property
    def lost_by_redis(self) -> list[Utterance]:
        return [(cid, uid) for cid, c in self.conversations.items() for uid in c.lost_by_redis]

    def figures(self) -> dict[str, Any]:
        failed = Counter(reason for c in self.conversations.values() for reason in c.failed)
        unclean = {cid: c.figures() for cid, c in self.conversations.items() if not c.clean()}
        return {
            **{name: self.total(name) for name in ("utterances", "done", "failed", "lost", "lost_by_redis",
                                                   "duplicates", "out_of_order")},
            "unknown_answers": self.total("unknown"),
            "failed_by_reason": dict(failed.most_common()),
            "latency_ms": summarise([ms for c in self.conversations.values() for ms in c.latencies_ms]),
            "conversations": len(self.conversations),
            "conversations_clean": len(self.conversations) - len(unclean),
            # Every conversation with anything but done answers, with what it had.
            "conversations_not_clean": unclean,
        }


def account(sent: Iterable[UtteranceRecord], read: StreamsRead) -> Outcome:
    """Each conversation's utterances against what its streams hold."""
    by_conversation: dict[str, list[UtteranceRecord]] = {}
    for rec in sent:
        by_conversation.setdefault(rec.conversation_id, []).append(rec)
    return Outcome({cid: account_conversation(cid, recs, read.kept, read.answers.get(cid, []))
                    for cid, recs in by_conversation.items()})
