"""Consumer groups: creating them, and the worker's non-blocking group read."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.bus.resp import RawConnection, StreamReply, pack_command, parse_stream_reply


async def ensure_group(redis: aioredis.Redis, key: str, group: str) -> bool:
    """Create ``group`` on ``key`` from the stream's start; False if it existed."""
    try:
        await redis.xgroup_create(key, group, id="0", mkstream=True)
        return True
    except ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise


class GroupReader:
    """Non-blocking XREADGROUP ``>`` over many streams on a connection of its own
    (the blocking wait is on the doorbells, see ``shared.bus.doorbell``).

    A sweep lists every owned stream, thousands for a busy worker; packing that
    command is most of a read's cost, so it is packed once per change of the
    stream set (``plan_key``) and sent as bytes.
    """

    def __init__(self, redis: aioredis.Redis, group: str, consumer: str) -> None:
        self._conn = RawConnection(redis)
        self._group = group
        self._consumer = consumer
        self._plan_key: object = None
        self._packed = b""
        #: Reads sent and entries they returned (logged at shutdown: the mean batch size).
        self.reads = 0
        self.entries = 0

    async def read(self, plan_key: object, parts: Sequence[tuple[Sequence[str], int]]) -> StreamReply:
        """Read ``>`` on each part's streams with that part's COUNT (one XREADGROUP
        per non-empty part, all in one round trip). The commands are packed once per
        ``plan_key`` (the full set of owned streams); ``plan_key`` None packs a one-off set."""
        commands = [(streams, count) for streams, count in parts if streams]
        if not commands:
            return []
        if plan_key is None or plan_key != self._plan_key:
            packed = b"".join(pack_command((
                "XREADGROUP", "GROUP", self._group, self._consumer, "COUNT", count,
                "STREAMS", *streams, *([">"] * len(streams)),
            )) for streams, count in commands)
            if plan_key is not None:
                self._packed, self._plan_key = packed, plan_key
        else:
            packed = self._packed
        reply: StreamReply = []
        for raw in await self._conn.roundtrip(packed, len(commands)):
            reply += parse_stream_reply(raw)
        self.reads += 1
        for _key, entries in reply:
            self.entries += len(entries)
        return reply

    async def aclose(self) -> None:
        await self._conn.aclose()
