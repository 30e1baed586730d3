"""Bounded memory, the parts that are not the queue: the history a new owner
rebuilds from the streams' newest end (the same turns as a whole rebuild, at a
cost bounded by the turns kept), and dead letters that carry a truncated copy of
a big entry yet still replay it whole."""

from __future__ import annotations

import io
import random
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis

import conversation_svc.rebuild as rebuild_module
from shared.bus.groups import ensure_group
from shared.bus.program import Scripts
from shared.bus.writer import BatchWriter
from shared.history import NewestTurns, Turn, rebuild
from shared.keys import Keys
from shared.models import (
    DeadLetter,
    Entry,
    ResponseDelta,
    ResponseDone,
    ResponseFailed,
    ResponseStarted,
    Timings,
    TranscriptDelta,
    TranscriptFinal,
    encode,
)
from shared.service import DEAD_RAW_MAX_BYTES, dead_letter
from shared.settings import CommonSettings
from simulator_svc import admin
from tests.conftest import running
from tests.runtime_helpers import audio_chunk_entry

# --- dead letters -----------------------------------------------------------------------------


async def _dead_letter_of(redis: aioredis.Redis, prefix: str, raw: bytes) -> tuple[str, DeadLetter]:
    keys = Keys(prefix)
    settings = CommonSettings(key_prefix=prefix)
    stream = keys.input("c")
    await ensure_group(redis, stream, "g")
    await redis.xadd(stream, {"d": raw})
    ((_, [(entry_id, _fields)]),) = await redis.xreadgroup("g", "w", {stream: ">"}, count=1)
    async with running(BatchWriter(redis, Scripts())) as writer:
        dead_letter(writer, settings, stream, "g", "w", entry_id.decode(), raw, "a reason")
        await writer.flushed()
    ((dead_id, fields),) = await redis.xrange(keys.dead(0))
    return dead_id.decode(), DeadLetter.model_validate_json(fields[b"d"])


async def test_a_big_entry_makes_a_small_dead_letter_that_still_replays_whole(
    redis: aioredis.Redis, prefix: str
) -> None:
    raw = audio_chunk_entry("c", 1)
    assert len(raw) > 128_000
    dead_id, letter = await _dead_letter_of(redis, prefix, raw)
    assert letter.raw_truncated and letter.raw_bytes == len(raw)
    assert letter.raw.encode() == raw[:DEAD_RAW_MAX_BYTES]
    ((_, fields),) = await redis.xrange(Keys(prefix).dead(0))
    assert len(fields[b"d"]) < DEAD_RAW_MAX_BYTES + 1024
    out = io.StringIO()
    await admin.list_dead(redis, Keys(prefix), 10, out)
    assert f"start of a {len(raw)}-byte entry" in out.getvalue()
    # The replay takes the whole entry from its stream, not the letter's truncated copy.
    new_id = await admin.replay_dead(redis, Keys(prefix), dead_id, None, out)
    ((_, replayed),) = await redis.xrange(Keys(prefix).input("c"), new_id, new_id)
    assert replayed[b"d"] == raw


async def test_a_small_entry_is_dead_lettered_whole(redis: aioredis.Redis, prefix: str) -> None:
    raw = audio_chunk_entry("c", 1, n_bytes=4800)
    _, letter = await _dead_letter_of(redis, prefix, raw)
    assert not letter.raw_truncated and letter.raw_bytes == len(raw) and letter.raw.encode() == raw


# --- history rebuilt from the newest end ------------------------------------------------------


def _streams(turns: int, rng: random.Random) -> tuple[list[Entry], list[Entry]]:
    """A conversation's transcripts and responses, answered one turn at a time: deltas,
    finals, a failed answer now and then, an unanswered last final, a duplicate final."""
    transcripts: list[Entry] = []
    responses: list[Entry] = []
    for i in range(turns):
        uid = f"u{i}"
        transcripts += [TranscriptDelta(conversation_id="c", utterance_id=uid, text="par")
                        for _ in range(rng.randrange(3))]
        transcripts.append(TranscriptFinal(conversation_id="c", utterance_id=uid, text=f"q{i}", sent_ms=1,
                                           final_ms=2))
        if i and rng.random() < 0.05:  # a client's retried write of the previous utterance
            transcripts.append(TranscriptFinal(conversation_id="c", utterance_id=f"u{i - 1}", text="again",
                                               sent_ms=1, final_ms=2))
        if i == turns - 1:
            break  # the last one is still pending: no answer yet
        rid = f"r{i}"
        if rng.random() < 0.1:
            responses.append(ResponseFailed(conversation_id="c", utterance_id=uid, response_id=rid, code="x",
                                            reason="y"))
            continue
        responses.append(ResponseStarted(conversation_id="c", utterance_id=uid, response_id=rid))
        responses += [ResponseDelta(conversation_id="c", utterance_id=uid, response_id=rid, index=k, delta="a")
                      for k in range(rng.randrange(4))]
        responses.append(ResponseDone(conversation_id="c", utterance_id=uid, response_id=rid, text=f"a{i}",
                                      timings=Timings(sent_ms=1, transcript_final_ms=2, done_ms=3)))
    return transcripts, responses


def _walk(entries: list[Entry], add: Any, page: int) -> int:
    """Feed ``entries`` newest first, a page at a time, as the worker does; entries read."""
    newest_first = entries[::-1]
    read = 0
    for start in range(0, len(newest_first), page):
        chunk = newest_first[start : start + page]
        read += len(chunk)
        if add(chunk):
            break
    return read


@pytest.mark.parametrize("max_turns", [0, 1, 5, 20])
@pytest.mark.parametrize("seed", range(5))
def test_the_newest_turns_are_the_turns_a_whole_rebuild_keeps(max_turns: int, seed: int) -> None:
    rng = random.Random(seed)
    transcripts, responses = _streams(300, rng)
    whole = rebuild(transcripts, responses, max_turns)
    newest = NewestTurns(max_turns)
    read = _walk(responses, newest.add_responses, page=20)
    if newest.needs_transcripts:
        read += _walk(transcripts, newest.add_transcripts, page=20)
    got = newest.history()
    assert list(got.turns) == list(whole.turns)
    # Bounded by the turns kept (a few entries per turn, plus a page per stream), not by 300 turns.
    assert read <= 2 * (8 * max_turns + 20 + 20)
    for turn in whole.turns:
        assert got.is_answered(turn.utterance_id)


async def test_a_takeover_rebuilds_the_history_from_the_newest_end(
    redis: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(prefix)
    transcripts, responses = _streams(2000, random.Random(7))
    pipe = redis.pipeline(transaction=False)
    for key, entries in ((keys.transcripts("c"), transcripts), (keys.responses("c"), responses)):
        for entry in entries:
            pipe.xadd(key, {"d": encode(entry)})
    await pipe.execute()
    read: list[int] = []
    real = rebuild_module.xrange_entries

    async def counting(*args: Any, **kwargs: Any) -> Any:
        rows = await real(*args, **kwargs)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(rebuild_module, "xrange_entries", counting)
    ctx = SimpleNamespace(keys=keys, redis=redis, conversation_id="c")
    history = await rebuild_module.rebuild_history(ctx, 20)  # type: ignore[arg-type]
    assert list(history.turns) == list(rebuild(transcripts, responses, 20).turns)
    assert len(history.turns) == 20 and history.turns[-1] == Turn("u1998", "q1998", "a1998")
    assert sum(read) <= 4 * rebuild_module.REBUILD_PAGE < len(transcripts) + len(responses)


# --- the per-conversation queue's bound ---------------------------------------------------------


