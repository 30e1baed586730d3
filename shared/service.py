"""What a session service implements (``Service``, ``ServiceSession``) and what
its sessions may use (``SessionContext``), for the ownership runtime in
``shared/runtime/`` to run. Both session services implement these; neither
sees the runtime's internals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from pydantic import BaseModel

from shared.bus.writer import BatchWriter, FencedWriter
from shared.keys import Keys, conversation_of_key
from shared.logs import scrub
from shared.models import ConversationStarted, DeadLetter, Entry, now_ms
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

#: Most bytes of the original entry a dead letter carries. A letter is for an operator
#: to read and fix; the whole entry stays on its stream until the stream is trimmed or
#: expires, and ``dead replay`` takes it from there when the letter's copy is truncated.
DEAD_RAW_MAX_BYTES = 16 * 1024


@dataclass
class SessionContext:
    """What a session may use: its keys, the writer, and facts about its claim.

    ``writer`` fences every write by the conversation's claim: once a peer has
    taken the conversation over, nothing this session queues is written."""

    conversation_id: str
    started: ConversationStarted
    took_over: bool
    data_key: str
    group: str
    worker_id: str
    keys: Keys
    settings: CommonSettings
    writer: FencedWriter
    redis: aioredis.Redis

    def dead_letter(self, entry_id: str, raw: bytes | None, reason: str, deliveries: int = 1) -> None:
        """Ack ``entry_id`` on this conversation's data stream into the dead-letter stream."""
        dead_letter(
            self.writer, self.settings, self.data_key, self.group, self.worker_id, entry_id, raw, reason, deliveries
        )


class ServiceSession(Protocol):
    async def handle(self, entry_id: str | None, entry: Entry) -> bool:
        """Process one entry of the data stream, in order. Write its effect with
        the entry's ack through ``ctx.writer.gate``. Return True once the
        conversation has ended (the runtime then closes and releases it).
        ``entry_id`` is None for a synthetic entry (idle timeout)."""
        ...

    async def close(self) -> None:
        """Release the session's resources; called once, also on hand-back."""
        ...


class Service(Protocol):
    name: str
    group: str
    #: Entry types this service accepts on its data stream.
    data_types: tuple[type[BaseModel], ...]

    def data_key(self, keys: Keys, conversation_id: str) -> str: ...

    async def open_session(self, ctx: SessionContext) -> ServiceSession: ...

    #: Where a control-stream ``conversation.ended`` is relayed (None: only ack it).
    def ended_relay_key(self, keys: Keys, conversation_id: str) -> str | None: ...

    #: Keys to expire once this service is done with a conversation.
    def keys_to_expire(self, keys: Keys, conversation_id: str) -> list[str]: ...

    def on_dead_letter(self, ctx: SessionContext, entry: Entry | None, reason: str) -> None:
        """Hook for a dead-lettered data entry (e.g. tell the client its answer failed)."""
        ...

    # Optional: ``on_queued(ctx, entry)``, called as each data entry is read, before its
    # turn comes: what must act at once (a cancel of the answer under way) acts there;
    # the entry is still handled in order later.


def dead_letter(
    writer: BatchWriter | FencedWriter,
    settings: CommonSettings,
    stream: str,
    group: str,
    worker_id: str,
    entry_id: str,
    raw: bytes | None,
    reason: str,
    deliveries: int = 1,
) -> None:
    raw = raw or b""
    letter = DeadLetter(
        stream=stream,
        entry_id=entry_id,
        group=group,
        worker_id=worker_id,
        reason=scrub(reason)[:4000],  # an upstream error text may quote a credential
        deliveries=deliveries,
        # A cut inside a UTF-8 sequence decodes to one replacement character.
        raw=raw[:DEAD_RAW_MAX_BYTES].decode("utf-8", errors="replace"),
        dead_ms=now_ms(),
        raw_truncated=len(raw) > DEAD_RAW_MAX_BYTES,
        raw_bytes=len(raw),
    )
    log.warning("dead-lettered %s %s: %s", stream, entry_id, reason,
                extra={"conversation_id": conversation_of_key(stream), "entry_id": entry_id})
    keys = settings.keys
    dead_key = keys.dead(keys.partition_of_key(stream))
    writer.gate(stream, group, entry_id, dead_key, letter.model_dump_json().encode(), maxlen=settings.dead_maxlen)


