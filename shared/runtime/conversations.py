"""The conversations a worker owns, as the runtime's parts share them (no I/O)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from shared.models import MAX_ENTRY_BYTES, Entry, EntryError
from shared.ownership import Claim, OwnershipTable
from shared.service import ServiceSession, SessionContext
from shared.settings import CommonSettings

#: One queued data entry: its id (None: synthetic, e.g. the idle timeout's end),
#: the decoded entry or why it could not be decoded, and its raw payload.
QueuedEntry = tuple[str | None, Entry | EntryError, bytes | None]


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """How much of one conversation a worker holds in memory: at most
    ``max_entries`` queued entries and ``max_bytes`` of their payloads.

    A conversation is read only while its queue is at or below the low-water
    mark, half of each cap, and a read of it takes at most ``read_count()``
    entries: the room above the mark, counting every entry as large as the
    largest valid one (``MAX_ENTRY_BYTES``). So a read never takes a queue past
    either cap (an entry larger than any valid one, padded or junk, could pass
    the byte cap by its excess, once). A conversation over the mark is left out
    of every read (rings, sweeps): its entries wait in Redis, undelivered, and
    it is read again once its queue drains to the mark. Pure.
    """

    max_entries: int
    max_bytes: int

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> QueueLimits:
        return cls(settings.queue_max_entries, settings.queue_max_bytes)

    @property
    def low_entries(self) -> int:
        return self.max_entries // 2

    @property
    def low_bytes(self) -> int:
        return self.max_bytes // 2

    def has_room(self, entries: int, queued_bytes: int) -> bool:
        """May a conversation with this queue be read?"""
        return entries <= self.low_entries and queued_bytes <= self.low_bytes

    def read_count(self, read_count: int) -> int:
        """The COUNT of a read of conversations that have room (at least 1)."""
        by_bytes = (self.max_bytes - self.low_bytes) // MAX_ENTRY_BYTES
        return max(1, min(read_count, self.max_entries - self.low_entries, by_bytes))


@dataclass
class Live:
    """One owned conversation: its session, and its entries waiting to be handled in order."""

    ctx: SessionContext
    claim: Claim
    session: ServiceSession | None = None
    #: Entries read and not handled yet; change it with push/pop (they count its bytes).
    queue: deque[QueuedEntry] = field(default_factory=deque)
    #: Payload bytes of the entries in ``queue``.
    queued_bytes: int = 0
    #: After a takeover: where the listing of the previous owner's pending entries
    #: goes on (an XPENDING start; "-" at first), None once all were claimed. While
    #: set, the conversation is not read: its pending entries come first.
    replay: str | None = None
    #: Pending entries claimed so far by that replay (logged when it is done).
    replayed: int = 0
    #: The drain task, while the conversation has work (see drain.py).
    task: asyncio.Task[None] | None = None
    failures: dict[str, int] = field(default_factory=dict)
    last_seen_s: float = field(default_factory=time.monotonic)
    closed: bool = False
    #: When this worker adopted it (monotonic): one just moved here is moved on last.
    adopted_s: float = field(default_factory=time.monotonic)
    #: An entry is being handled (from its first attempt until it is done): mid-turn.
    handling: bool = False
    #: Being looked at for a hand-back to rebalance: no entry is started meanwhile (what is
    #: read waits in its queue), so it stays between turns until it goes or stays.
    moving: bool = False

    @property
    def conversation_id(self) -> str:
        return self.ctx.conversation_id

    def push(self, entry: QueuedEntry) -> None:
        self.queue.append(entry)
        self.queued_bytes += len(entry[2] or b"")

    def pop(self) -> QueuedEntry:
        entry = self.queue.popleft()
        self.queued_bytes -= len(entry[2] or b"")
        return entry

    def has_room(self, limits: QueueLimits) -> bool:
        return limits.has_room(len(self.queue), self.queued_bytes)

    def clear(self) -> None:
        """Forget what is queued, and any replay under way."""
        self.queue.clear()
        self.queued_bytes = 0
        self.failures.clear()
        self.replay, self.replayed = None, 0


class Owned:
    """Owned conversations by id and by data stream, with the claims table.

    ``data_keys()`` is the list of owned data streams, rebuilt only when the set
    changed; ``version`` changes with it (the reader packs its sweep once per version).
    """

    def __init__(self, capacity: int, limits: QueueLimits) -> None:
        self.table = OwnershipTable(capacity=capacity)
        self.limits = limits
        self.live: dict[str, Live] = {}
        self._by_key: dict[bytes, Live] = {}
        self._data_keys: list[str] | None = None
        self.version = 0

    def add(self, live: Live) -> None:
        self.table.add(live.claim)
        self.live[live.conversation_id] = live
        self._by_key[live.ctx.data_key.encode()] = live
        self._changed()

    def remove(self, conversation_id: str) -> tuple[Live | None, Claim | None]:
        """Forget a conversation: its live state (marked closed) and its claim."""
        claim = self.table.remove(conversation_id)
        live = self.live.pop(conversation_id, None)
        if live is not None:
            live.closed = True
            self._by_key.pop(live.ctx.data_key.encode(), None)
            self._changed()
        return live, claim

    def get(self, conversation_id: str) -> Live | None:
        live = self.live.get(conversation_id)
        return None if live is None or live.closed else live

    def by_data_key(self, key: bytes) -> Live | None:
        live = self._by_key.get(key)
        return None if live is None or live.closed else live

    def readable(self, key: str) -> bool:
        """Is this an owned stream to read now: not replaying its pending entries,
        and its queue at or below the low-water mark (see QueueLimits)?"""
        live = self._by_key.get(key.encode())
        return live is not None and not live.closed and live.replay is None and live.has_room(self.limits)

    def data_keys(self) -> list[str]:
        if self._data_keys is None:
            self._data_keys = [live.ctx.data_key for live in self.live.values() if not live.closed]
        return self._data_keys

    def _changed(self) -> None:
        self.version += 1
        self._data_keys = None
