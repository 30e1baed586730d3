"""The client's side of the doorbells: follow conversation streams with XREAD.

A client (the simulator, a gateway, the benchmark's driver) follows the
transcripts and responses of many conversations. Blocking on all of them
costs Redis more with every stream; instead it waits on the doorbells, reads
only the followed streams that rang, and every ``sweep_s`` reads all of them
(for writers that do not ring, and after a Redis outage). What it returns
was read from the streams themselves: a ring only says where to look.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import redis.asyncio as aioredis

from shared.bus.doorbell import BellSet, Ring
from shared.bus.groups import by_slot, stream_replies
from shared.bus.nodes import RawCommand, RawLinks
from shared.bus.resp import StreamReply, pack_command
from shared.keys import Keys


class StreamFollower:
    """Call :meth:`read` in a loop; it returns what the followed streams got."""

    def __init__(
        self, redis: aioredis.Redis, keys: Keys, sweep_s: float = 1.0, count: int = 1000,
        kinds: Sequence[str] = ("transcripts", "responses"),
    ) -> None:
        self._redis = redis
        self._keys = keys
        #: Stream kinds followed: only their doorbells are listened to.
        self._kinds = tuple(kinds)
        self._sweep_s = sweep_s
        self._count = count
        self._bell: BellSet | None = None
        #: Reads go pre-packed over connections of their own (no redis-py reply callbacks),
        #: one XREAD per partition on a cluster.
        self._links: RawLinks | None = None
        #: Last id read of every stream ever followed (a re-followed stream resumes there).
        self._last: dict[str, str] = {}
        self._followed: set[str] = set()
        self._dirty: set[str] = set()
        self._next_sweep = 0.0

    def follow(self, key: str, since: str | None = None) -> None:
        """Read ``key`` from after ``since`` (default: where it was left, else its start)."""
        if since is not None:
            self._last[key] = since
        else:
            self._last.setdefault(key, "0-0")
        self._followed.add(key)
        self._dirty.add(key)  # read it next: what it already holds is not announced by a ring

    def unfollow(self, key: str, forget: bool = False) -> None:
        """Stop reading ``key``; ``forget`` also drops its last id (a long-lived
        follower of short-lived streams, like a gateway, keeps no memory of them)."""
        self._followed.discard(key)
        self._dirty.discard(key)
        if forget:
            self._last.pop(key, None)

    def resync(self) -> None:
        """Rings may have been missed (Redis was away): sweep on the next read."""
        self._next_sweep = 0.0

    async def read(self, block_ms: int) -> StreamReply:
        """One step: the sweep when due, else the streams that rang (waiting up to
        ``block_ms`` on the doorbells). ``[]`` when nothing came."""
        if not self._followed:
            await asyncio.sleep(block_ms / 1000)
            return []
        if self._bell is None:
            self._bell = BellSet(self._redis, self._keys.bells(self._kinds))
            await self._bell.start()
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_s
            targets = set(self._followed)
        else:
            if not self._dirty:
                wait_ms = int(min(block_ms, (self._next_sweep - now) * 1000))
                self._mark_rung(await self._bell.wait(wait_ms))
            targets = self._dirty & self._followed
        self._dirty.clear()
        if not targets:
            return []
        if self._links is None:
            self._links = RawLinks(self._redis)
        commands = [
            RawCommand(group[0], pack_command(("XREAD", "COUNT", self._count, "STREAMS", *group,
                                               *(self._last[k] for k in group))))
            for group in by_slot(list(targets), self._links.cluster)
        ]
        read, failure = stream_replies(await self._links.send(commands))
        if failure is not None:
            # Read again at the next step; what the other partitions gave is kept below.
            self._dirty |= targets
            if not read:
                raise failure
        for key_b, entries in read:
            key = key_b.decode()
            self._last[key] = entries[-1][0].decode()
            if len(entries) >= self._count:
                self._dirty.add(key)  # more may be waiting
        return read

    def _mark_rung(self, rings: list[Ring]) -> None:
        """Followed streams that rang are read next (a ring is a hint: a forged one
        costs a read that finds nothing new)."""
        for ring in rings:
            if ring.kind not in self._kinds:
                continue
            suffix = f":{ring.kind}"
            for cid in ring.conversation_ids:
                key = self._keys.conv_prefix(cid) + suffix
                if key in self._followed:
                    self._dirty.add(key)

    async def aclose(self) -> None:
        if self._bell is not None:
            await self._bell.aclose()
        if self._links is not None:
            await self._links.aclose()
