"""The gateway's side of the streams: what a session writes, and one reader per
gateway process that follows every connected conversation's transcripts and
responses and hands each entry to its session.

Writes are a client's (``add_with_rings``: XADD then ring, one round trip).
Reads use the doorbells (``StreamFollower``): one blocking read for all the
sessions of a process, whatever their number.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway_svc import meters
from shared.bus.doorbell import add_with_rings
from shared.follow import StreamFollower
from shared.keys import Keys
from shared.models import (
    MAX_AUDIO_CHUNK_BYTES,
    MAX_TEXT_CHARS,
    AudioChunk,
    AudioEnd,
    ConversationEnded,
    ConversationStarted,
    Entry,
    EntryError,
    ResponseCancel,
    ResponseRequest,
    ResponseTruncate,
    UtteranceText,
    decode_fields,
    encode,
    now_ms,
)

log = logging.getLogger(__name__)

#: Approximate caps of the streams a gateway writes (as the workers' defaults).
INPUT_MAXLEN = 20_000
#: Audio is written in pieces of at most this many bytes (1 s; an entry holds up to 2 s).
AUDIO_PIECE_BYTES = min(48_000, MAX_AUDIO_CHUNK_BYTES)

#: ``handler(kind, entry_id, entry)``: kind is "transcripts" or "responses". It must not
#: block (it queues the entry for its session's sender): one reader serves every session.
EntryHandler = Callable[[str, str, Entry], None]


class PipelineUnavailable(RuntimeError):
    """Redis refused or did not answer a write: the client gets a ``server_error``."""


class PipelineWriter:
    """What one session puts on the streams."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, wait: tuple[int, int] = (0, 1000)) -> None:
        self.redis = redis
        self.keys = keys
        #: REDIS_WAIT_REPLICAS and its timeout: a write is done once that many replicas have it.
        self.wait = wait

    async def _write(self, writes: list[tuple[str, bytes, int | None]]) -> None:
        try:
            await add_with_rings(self.redis, self.keys, writes, wait_replicas=self.wait[0],
                                 wait_timeout_ms=self.wait[1])
        except (RedisError, OSError) as exc:
            meters.pipeline_error("write")
            raise PipelineUnavailable(f"the pipeline is unavailable ({type(exc).__name__}); retry") from exc

    async def start(self, conversation_id: str, instructions: str | None) -> None:
        started = ConversationStarted(conversation_id=conversation_id, mode="audio", instructions=instructions)
        await self._write([(self.keys.control_for(conversation_id), encode(started), None)])

    async def text(self, conversation_id: str, item_id: str, text: str, respond: bool) -> None:
        entry = UtteranceText(conversation_id=conversation_id, utterance_id=item_id, text=text,
                              sent_ms=now_ms(), respond=respond)
        await self._write([(self.keys.input(conversation_id), encode(entry), INPUT_MAXLEN)])

    async def audio(self, conversation_id: str, item_id: str, pcm: bytes, respond: bool,
                    ended_ms: int | None = None) -> None:
        """One committed turn: its audio in pieces, then ``audio.end``, in one round trip."""
        key = self.keys.input(conversation_id)
        writes: list[tuple[str, bytes, int | None]] = []
        for seq, start in enumerate(range(0, len(pcm), AUDIO_PIECE_BYTES)):
            piece = pcm[start : start + AUDIO_PIECE_BYTES]
            chunk = AudioChunk(conversation_id=conversation_id, utterance_id=item_id, seq=seq,
                               audio=base64.b64encode(piece).decode())
            writes.append((key, encode(chunk), INPUT_MAXLEN))
        end = AudioEnd(conversation_id=conversation_id, utterance_id=item_id,
                       sent_ms=ended_ms if ended_ms is not None else now_ms(), respond=respond)
        writes.append((key, encode(end), INPUT_MAXLEN))
        await self._write(writes)

    async def request_response(self, conversation_id: str, request_id: str) -> None:
        entry = ResponseRequest(conversation_id=conversation_id, request_id=request_id, sent_ms=now_ms())
        await self._write([(self.keys.input(conversation_id), encode(entry), INPUT_MAXLEN)])

    async def cancel(self, conversation_id: str, target_id: str) -> None:
        entry = ResponseCancel(conversation_id=conversation_id, target_id=target_id, sent_ms=now_ms())
        await self._write([(self.keys.input(conversation_id), encode(entry), INPUT_MAXLEN)])

    async def truncate(self, conversation_id: str, target_id: str, heard: str) -> None:
        entry = ResponseTruncate(conversation_id=conversation_id, target_id=target_id, text=heard[:MAX_TEXT_CHARS])
        await self._write([(self.keys.input(conversation_id), encode(entry), INPUT_MAXLEN)])

    async def end(self, conversation_id: str, reason: str) -> None:
        entry = ConversationEnded(conversation_id=conversation_id, reason=reason[:200])
        await self._write([(self.keys.input(conversation_id), encode(entry), INPUT_MAXLEN)])


class PipelineReader:
    """Follows the transcripts and responses of every conversation a session of
    this process serves, and calls that session's handler for each entry, in
    stream order. Entries that do not parse are skipped (the workers wrote them;
    a bad one is logged, never shown)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, block_ms: int = 200) -> None:
        self.keys = keys
        self.block_ms = block_ms
        self._follower = StreamFollower(redis, keys, sweep_s=1.0)
        self._handlers: dict[str, tuple[str, str, EntryHandler]] = {}
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, conversation_id: str, handler: EntryHandler, transcripts_since: str,
                  responses_since: str) -> None:
        for kind, since in (("transcripts", transcripts_since), ("responses", responses_since)):
            key = self.keys.conv_prefix(conversation_id) + ":" + kind
            self._handlers[key] = (kind, conversation_id, handler)
            self._follower.follow(key, since)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway-reader")

    def unsubscribe(self, conversation_id: str) -> None:
        for kind in ("transcripts", "responses"):
            key = self.keys.conv_prefix(conversation_id) + ":" + kind
            self._handlers.pop(key, None)
            self._follower.unfollow(key, forget=True)

    async def _run(self) -> None:
        while True:
            try:
                read = await self._follower.read(self.block_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: retry, and sweep once it is back
                meters.pipeline_error("read")
                log.warning("reading the pipeline failed (%s); retrying", exc)
                self._follower.resync()
                await asyncio.sleep(0.5)
                continue
            for key_b, rows in read:
                target = self._handlers.get(key_b.decode())
                if target is None:
                    continue
                kind, cid, handler = target
                for entry_id_b, fields in rows:
                    try:
                        entry = decode_fields(fields)
                    except EntryError as exc:
                        log.warning("skipping an unreadable %s entry: %s", kind, exc.reason,
                                    extra={"conversation_id": cid})
                        continue
                    try:
                        handler(kind, entry_id_b.decode(), entry)
                    except Exception:  # noqa: BLE001 - one session's bug must not stop the others
                        log.exception("session handler failed", extra={"conversation_id": cid})

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self._follower.aclose()

