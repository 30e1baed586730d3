"""Consumer groups: creating them, and the worker's non-blocking group read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.bus.nodes import RawCommand, RawLinks
from shared.bus.resp import StreamReply, pack_command, parse_stream_reply
from shared.keys import hash_tag


async def ensure_group(redis: aioredis.Redis, key: str, group: str) -> bool:
    """Create ``group`` on ``key`` from the stream's start; False if it existed."""
    try:
        await redis.xgroup_create(key, group, id="0", mkstream=True)
        return True
    except ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise


class PartialRead(Exception):
    """Some commands of a read failed (a cluster node away): ``reply`` holds what the
    others delivered (entries now pending for this consumer: handle them), ``cause``
    the first failure."""

    def __init__(self, reply: StreamReply, cause: Exception) -> None:
        super().__init__(str(cause))
        self.reply = reply
        self.cause = cause


def by_slot(keys: Sequence[str], cluster: bool) -> list[list[str]]:
    """``keys`` in groups one command may name: all of them on one Redis, one
    partition's (hash tag's) on a cluster."""
    if not cluster:
        return [list(keys)]
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(hash_tag(key), []).append(key)
    return list(groups.values())


def stream_replies(results: Sequence[list[Any]]) -> tuple[StreamReply, Exception | None]:
    """``RawLinks.send`` results of one-reply XREAD / XREADGROUP commands: the entries of
    those that answered, and the first failure (a node away) if any."""
    reply: StreamReply = []
    failure: Exception | None = None
    for (raw,) in results:
        if isinstance(raw, Exception):
            failure = failure or raw
        else:
            reply += parse_stream_reply(raw)
    return reply, failure


class GroupReader:
    """Non-blocking XREADGROUP ``>`` over many streams on connections of its own
    (the blocking wait is on the doorbells, see ``shared.bus.doorbell``).

    A sweep lists every owned stream, thousands for a busy worker; packing that
    command is most of a read's cost, so it is packed once per change of the
    stream set (``plan_key``) and sent as bytes. On a cluster a read is one
    XREADGROUP per partition, each sent to its partition's master.
    """

    def __init__(self, redis: aioredis.Redis, group: str, consumer: str) -> None:
        self._links = RawLinks(redis)
        self._group = group
        self._consumer = consumer
        self._plan_key: object = None
        self._packed: list[RawCommand] = []
        #: Reads sent and entries they returned (logged at shutdown: the mean batch size).
        self.reads = 0
        self.entries = 0

    async def read(self, plan_key: object, parts: Sequence[tuple[Sequence[str], int]]) -> StreamReply:
        """Read ``>`` on each part's streams with that part's COUNT (one XREADGROUP
        per non-empty part and partition, all in one round trip per node). The
        commands are packed once per ``plan_key`` (the full set of owned streams);
        ``plan_key`` None packs a one-off set. Raises ``PartialRead`` when some failed."""
        if plan_key is None or plan_key != self._plan_key:
            commands = [
                RawCommand(group[0], pack_command((
                    "XREADGROUP", "GROUP", self._group, self._consumer, "COUNT", count,
                    "STREAMS", *group, *([">"] * len(group)),
                )))
                for streams, count in parts if streams
                for group in by_slot(streams, self._links.cluster)
            ]
            if plan_key is not None:
                self._packed, self._plan_key = commands, plan_key
        else:
            commands = self._packed
        if not commands:
            return []
        reply, failure = stream_replies(await self._links.send(commands))
        self.reads += 1
        for _key, entries in reply:
            self.entries += len(entries)
        if failure is not None:
            raise PartialRead(reply, failure)
        return reply

    async def aclose(self) -> None:
        await self._links.aclose()
