"""The conversations a worker owns, as the runtime's parts share them (no I/O)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from shared.models import Entry, EntryError
from shared.ownership import Claim, OwnershipTable
from shared.service import ServiceSession, SessionContext

#: One queued data entry: its id (None: synthetic, e.g. the idle timeout's end),
#: the decoded entry or why it could not be decoded, and its raw payload.
QueuedEntry = tuple[str | None, Entry | EntryError, bytes | None]


@dataclass
class Live:
    """One owned conversation: its session, and its entries waiting to be handled in order."""

    ctx: SessionContext
    claim: Claim
    session: ServiceSession | None = None
    queue: deque[QueuedEntry] = field(default_factory=deque)
    #: The drain task, while the conversation has work (see drain.py).
    task: asyncio.Task[None] | None = None
    failures: dict[str, int] = field(default_factory=dict)
    last_seen_s: float = field(default_factory=time.monotonic)
    closed: bool = False

    @property
    def conversation_id(self) -> str:
        return self.ctx.conversation_id


class Owned:
    """Owned conversations by id and by data stream, with the claims table.

    ``data_keys()`` is the list of owned data streams, rebuilt only when the set
    changed; ``version`` changes with it (the reader packs its sweep once per version).
    """

    def __init__(self, capacity: int) -> None:
        self.table = OwnershipTable(capacity=capacity)
        self.live: dict[str, Live] = {}
        self._by_key: dict[bytes, Live] = {}
        self._data_keys: list[str] | None = None
        self.version = 0

    def __len__(self) -> int:
        return len(self.live)

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

    def data_keys(self) -> list[str]:
        if self._data_keys is None:
            self._data_keys = [live.ctx.data_key for live in self.live.values() if not live.closed]
        return self._data_keys

    def _changed(self) -> None:
        self.version += 1
        self._data_keys = None
