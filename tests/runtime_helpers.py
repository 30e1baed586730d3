"""In-process runtimes for tests: both session services (simulated transcription,
echo answers) as OwnershipRuntimes in the test's event loop, against a real Redis,
and small helpers to drive and observe a conversation."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis

from conversation_svc.engines import load_engine as load_conversation_engine
from conversation_svc.worker import ConversationService
from shared.bus.doorbell import add_with_rings
from shared.bus.resp import connect_to
from shared.keys import Keys
from shared.models import (
    MAX_AUDIO_CHUNK_BYTES,
    AudioChunk,
    Entry,
    ResponseDone,
    UtteranceText,
    decode_fields,
    encode,
    now_ms,
)
from shared.runtime import OwnershipRuntime
from shared.service import Service
from shared.settings import (
    CommonSettings,
    ConversationSettings,
    LocalEngineSettings,
    OpenAISettings,
    TranscriberSettings,
)
from transcriber_svc.engines import load_engine as load_transcription_engine
from transcriber_svc.worker import TranscriberService

FAST = {"lease_s": 1.0, "read_block_ms": 100, "sweep_ms": 200, "drain_timeout_s": 2.0, "metrics_enabled": False}


async def transcriber_service(settings: TranscriberSettings) -> Service:
    engine = load_transcription_engine(settings, OpenAISettings(api_key=None), LocalEngineSettings())
    await engine.start()
    return TranscriberService(settings, engine)


async def conversation_service(settings: ConversationSettings) -> Service:
    engine = load_conversation_engine(settings, OpenAISettings(api_key=None), LocalEngineSettings())
    await engine.start()
    return ConversationService(settings, engine)


@contextlib.asynccontextmanager
async def running(settings: CommonSettings, service: Service) -> AsyncIterator[OwnershipRuntime]:
    redis = connect_to(settings)
    runtime = OwnershipRuntime(settings, service, redis)
    task = asyncio.create_task(runtime.run())
    try:
        await asyncio.wait_for(runtime.started.wait(), 10)
        yield runtime
    finally:
        runtime.stop()
        await asyncio.wait_for(task, 15)
        await redis.aclose()


@contextlib.asynccontextmanager
async def pipeline(
    redis_url: str, prefix: str, transcriber: dict[str, Any] | None = None,
    conversation: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[tuple[OwnershipRuntime, OwnershipRuntime]]:
    """Both services in this loop; ``transcriber`` / ``conversation``: settings of one only
    (e.g. its own Redis user)."""
    common: dict[str, Any] = {"redis_url": redis_url, "key_prefix": prefix, **FAST, **overrides}
    t_settings = TranscriberSettings(**{"transcriber_engine": "simulated", **common, **(transcriber or {})})
    c_settings = ConversationSettings(**{"conversation_engine": "echo", **common, **(conversation or {})})
    async with (
        running(t_settings, await transcriber_service(t_settings)) as transcriber,
        running(c_settings, await conversation_service(c_settings)) as conversation,
    ):
        yield transcriber, conversation


async def entries(redis: aioredis.Redis, key: str) -> list[Entry]:
    return [decode_fields(fields) for _, fields in await redis.xrange(key)]


async def until(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def say(redis: aioredis.Redis, keys: Keys, cid: str, uid: str, text: str) -> None:
    utterance = UtteranceText(conversation_id=cid, utterance_id=uid, text=text, sent_ms=now_ms())
    await add_with_rings(redis, keys, [(keys.input(cid), encode(utterance), 1000)])


async def answered_ids(redis: aioredis.Redis, keys: Keys, cid: str) -> list[str]:
    return [e.utterance_id for e in await entries(redis, keys.responses(cid)) if isinstance(e, ResponseDone)]




def audio_chunk_entry(cid: str, seq: int, n_bytes: int = MAX_AUDIO_CHUNK_BYTES) -> bytes:
    """An encoded ``audio.chunk`` of ``n_bytes`` of silence (the largest valid one by default)."""
    audio = base64.b64encode(bytes(n_bytes)).decode()
    return encode(AudioChunk(conversation_id=cid, utterance_id="u1", seq=seq, audio=audio))
