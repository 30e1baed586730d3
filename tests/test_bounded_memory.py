"""Bounded memory: what a worker holds for a conversation does not grow with
what is written to it. Dead letters carry a truncated copy of a big entry."""

from __future__ import annotations

import base64
import io

import redis.asyncio as aioredis

from shared.bus.groups import ensure_group
from shared.bus.program import Scripts
from shared.bus.writer import BatchWriter
from shared.keys import Keys
from shared.models import MAX_AUDIO_CHUNK_BYTES, AudioChunk, DeadLetter, encode
from shared.service import DEAD_RAW_MAX_BYTES, dead_letter
from shared.settings import CommonSettings
from simulator_svc import admin
from tests.conftest import running

# --- dead letters -----------------------------------------------------------------------------


def _chunk(cid: str, seq: int, n_bytes: int = MAX_AUDIO_CHUNK_BYTES) -> bytes:
    audio = base64.b64encode(bytes(n_bytes)).decode()
    return encode(AudioChunk(conversation_id=cid, utterance_id="u1", seq=seq, audio=audio))


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
    raw = _chunk("c", 1)
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
    raw = _chunk("c", 1, n_bytes=4800)
    _, letter = await _dead_letter_of(redis, prefix, raw)
    assert not letter.raw_truncated and letter.raw_bytes == len(raw) and letter.raw.encode() == raw
