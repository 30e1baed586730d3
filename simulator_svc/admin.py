"""Operator commands, reading (and for replay, writing) Redis directly:

    python -m simulator_svc dialogue CONVERSATION_ID
    python -m simulator_svc dead list [--limit N]
    python -m simulator_svc dead replay DEAD_ENTRY_ID [--raw JSON]
    python -m simulator_svc owners
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import redis.asyncio as aioredis

from shared.bus.doorbell import add_rings
from shared.bus.resp import xrange_entries
from shared.keys import Keys
from shared.models import (
    AudioChunk,
    AudioEnd,
    DeadLetter,
    Entry,
    EntryError,
    ResponseDelta,
    ResponseDone,
    ResponseFailed,
    TranscriptFinal,
    UtteranceText,
    decode,
    decode_fields,
)
from simulator_svc.observe import dead_letters, owners

# KEYS[1]=dead stream, KEYS[2]=target stream; ARGV: dead entry id, payload.
# The dead entry is deleted and the payload added in one step: a replay runs once,
# however often the command is repeated.
REPLAY_SCRIPT = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  return redis.call('XADD', KEYS[2], '*', 'd', ARGV[2])
end
return false
"""


class AdminError(Exception):
    pass


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


@dataclass
class UtteranceView:
    utterance_id: str
    said: str | None = None
    audio_chunks: int = 0
    transcript: str | None = None
    answer: str | None = None
    failed: str | None = None
    sent_ms: int | None = None
    transcript_ms: int | None = None
    first_delta_ms: int | None = None
    done_ms: int | None = None
    deltas: int = 0
    extras: list[str] = field(default_factory=list)


def build_dialogue(inputs: list[Entry], transcripts: list[Entry], responses: list[Entry]) -> list[UtteranceView]:
    """Merge a conversation's three streams into one view per utterance (pure)."""
    views: dict[str, UtteranceView] = {}

    def view(uid: str | None) -> UtteranceView:
        key = uid or "(no utterance id)"
        return views.setdefault(key, UtteranceView(key))

    for e in inputs:
        if isinstance(e, UtteranceText):
            v = view(e.utterance_id)
            v.said, v.sent_ms = e.text, e.sent_ms
        elif isinstance(e, AudioChunk):
            view(e.utterance_id).audio_chunks += 1
        elif isinstance(e, AudioEnd):
            v = view(e.utterance_id)
            v.sent_ms = e.sent_ms
            v.said = v.said or (f"(audio) {e.reference_text}" if e.reference_text else "(audio)")
    for e in transcripts:
        if isinstance(e, TranscriptFinal):
            v = view(e.utterance_id)
            v.transcript, v.transcript_ms = e.text, e.final_ms
            v.sent_ms = v.sent_ms or e.sent_ms
    for e in responses:
        if isinstance(e, ResponseDelta):
            view(e.utterance_id).deltas += 1
        elif isinstance(e, ResponseDone):
            v = view(e.utterance_id)
            if v.answer is not None:
                v.extras.append("DUPLICATE response.done")
            v.answer, v.done_ms, v.first_delta_ms = e.text, e.timings.done_ms, e.timings.first_delta_ms
        elif isinstance(e, ResponseFailed):
            view(e.utterance_id).failed = f"{e.code}: {e.reason}"
    return list(views.values())


async def _read_stream(redis: aioredis.Redis, key: str) -> list[Entry]:
    out: list[Entry] = []
    for _, fields in await xrange_entries(redis, key):
        try:
            out.append(decode_fields(fields))
        except EntryError:
            continue
    return out


async def print_dialogue(redis: aioredis.Redis, keys: Keys, conversation_id: str, out: TextIO = sys.stdout) -> int:
    inputs = await _read_stream(redis, keys.input(conversation_id))
    transcripts = await _read_stream(redis, keys.transcripts(conversation_id))
    responses = await _read_stream(redis, keys.responses(conversation_id))
    if not (inputs or transcripts or responses):
        out.write(f"no streams for conversation {conversation_id!r} (never started, or expired)\n")
        return 1
    for v in build_dialogue(inputs, transcripts, responses):
        out.write(f"[{v.utterance_id}] sent {_time(v.sent_ms)}\n")
        if v.said is not None:
            chunks = f"  ({v.audio_chunks} audio chunks)" if v.audio_chunks else ""
            out.write(f"  said:        {v.said}{chunks}\n")
        out.write(f"  transcript:  {v.transcript if v.transcript is not None else '(none yet)'}"
                  f"  [{_delay(v.sent_ms, v.transcript_ms)}]\n")
        if v.failed:
            out.write(f"  FAILED:      {v.failed}\n")
        out.write(f"  answer:      {v.answer if v.answer is not None else '(none yet)'}"
                  f"  [first delta {_delay(v.sent_ms, v.first_delta_ms)}, done {_delay(v.sent_ms, v.done_ms)},"
                  f" {v.deltas} deltas]\n")
        for extra in v.extras:
            out.write(f"  !! {extra}\n")
    return 0


def _delay(start: int | None, end: int | None) -> str:
    if start is None or end is None:
        return "-"
    return f"+{end - start} ms"


async def list_dead(redis: aioredis.Redis, keys: Keys, limit: int, out: TextIO = sys.stdout) -> int:
    letters = await dead_letters(redis, keys, limit)
    if not letters:
        out.write("no dead letters\n")
        return 0
    for _, dead_id, letter in letters:
        raw = letter.raw if len(letter.raw) <= 160 else letter.raw[:157] + "..."
        if letter.raw_truncated:
            raw += f"  (the letter keeps the start of a {letter.raw_bytes}-byte entry)"
        out.write(f"{dead_id}  {_time(letter.dead_ms)}  from {letter.stream} ({letter.group}, "
                  f"{letter.deliveries} deliveries)\n    reason: {letter.reason}\n    entry:  {raw}\n")
    return 0


async def replay_dead(
    redis: aioredis.Redis, keys: Keys, dead_id: str, raw: str | None, out: TextIO = sys.stdout
) -> str:
    """Put a dead letter (fixed by ``raw`` when given) back on its stream, once."""
    found: tuple[str, DeadLetter] | None = None
    for key in keys.deads():
        rows = await xrange_entries(redis, key, dead_id, dead_id)
        if rows:
            found = (key, DeadLetter.model_validate_json(rows[0][1][b"d"]))
            break
    if found is None:
        raise AdminError(f"no dead letter {dead_id} (already replayed, or trimmed)")
    dead_key, letter = found
    payload = raw if raw is not None else letter.raw
    if raw is None and (not payload or letter.raw_truncated):
        # Dead-lettered by an engine after it parsed fine, or too big for the letter to
        # carry whole: the entry is still on its stream (unless trimmed or expired).
        original = await xrange_entries(redis, letter.stream, letter.entry_id, letter.entry_id)
        if not original:
            what = "the letter keeps only its start" if letter.raw_truncated else "the letter has no copy"
            raise AdminError(f"the original entry {letter.entry_id} is gone from {letter.stream} and {what}; "
                             "pass --raw")
        payload = original[0][1].get(b"d", b"").decode("utf-8", errors="replace")
    try:
        decode(payload)
    except EntryError as exc:
        raise AdminError(f"the entry is still invalid, not replayed: {exc.reason} (fix it with --raw)") from None
    new_id: Any = await redis.eval(REPLAY_SCRIPT, 2, dead_key, letter.stream, dead_id, payload)
    if new_id is not None:
        pipe = redis.pipeline(transaction=False)
        add_rings(pipe, keys, [letter.stream])
        await pipe.execute()
    if new_id is None:
        raise AdminError(f"dead letter {dead_id} was replayed by someone else just now")
    entry_id = new_id.decode() if isinstance(new_id, bytes) else str(new_id)
    out.write(f"replayed {dead_id} into {letter.stream} as {entry_id}\n")
    return entry_id


async def print_owners(redis: aioredis.Redis, keys: Keys, out: TextIO = sys.stdout) -> int:
    rows = await owners(redis, keys)
    if not rows:
        out.write("no live conversations\n")
        return 0
    out.write(f"{'conversation':<32} {'group':<13} {'worker':<40} {'idle ms':>8} {'deliveries':>10}\n")
    for o in sorted(rows, key=lambda o: (o.conversation_id, o.group)):
        out.write(f"{o.conversation_id:<32} {o.group:<13} {o.worker_id:<40} {o.idle_ms:>8} {o.deliveries:>10}\n")
    return 0
