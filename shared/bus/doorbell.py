"""Doorbells: hints that streams have new entries, so readers need not block on thousands of streams.

Whoever writes to a conversation's stream also adds one entry per write batch
to its partition's bell for that stream kind (``<prefix>:bell:{p}:<kind>``,
field = the kind, value = the conversation ids). Readers block on the bells of
the kinds they read (a few keys), then read just the streams that rang.

A bell is a hint, never data: nothing is consumed from it. A forged, stale or
repeated ring costs at most one read that finds nothing new; a lost ring is
caught by the readers' periodic sweep. Workers consume only what their group
delivers; clients show only what they read from the streams themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from shared.backoff import backoff
from shared.bus.nodes import REPLICA_ACKS, RawCommand, RawLinks, is_cluster
from shared.bus.resp import pack_command, xrange_entries
from shared.keys import CONTROL_KIND, Keys, hash_tag, partition_of_tag, ring_target
from shared.models import ENTRY_FIELD

#: Ring fields longer than this are not believed (a ring names at most a batch's conversations).
MAX_RING_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Ring:
    """One doorbell entry: these conversations' ``kind`` streams may have new entries."""

    kind: str
    conversation_ids: list[str]


def parse_ring(flat: Sequence[bytes]) -> list[Ring]:
    """A doorbell entry's flat field list -> its rings (``kind`` -> space-separated ids).
    Anything malformed is ignored: a ring is only a hint."""
    rings: list[Ring] = []
    for i in range(0, len(flat) - 1, 2):
        name, value = flat[i], flat[i + 1]
        if len(value) > MAX_RING_BYTES:
            continue
        try:
            rings.append(Ring(name.decode(), value.decode().split()))
        except UnicodeDecodeError:
            continue
    return rings


class Doorbell:
    """Blocks on a few doorbell streams of one slot and returns what rang since the last call."""

    def __init__(self, redis: aioredis.Redis, keys: Sequence[str]) -> None:
        self._redis = redis
        self._links = RawLinks(redis)
        self._keys = list(keys)
        self._last: dict[str, str] = {}

    async def start(self) -> None:
        """Listen from now on (what rang before is covered by the reader's first sweep)."""
        for key in self._keys:
            newest = await xrange_entries(self._redis, key, count=1, reverse=True)
            self._last[key] = newest[0][0].decode() if newest else "0-0"

    async def wait(self, block_ms: int, count: int = 1000) -> list[Ring]:
        """The rings since the last call, oldest first; [] after ``block_ms`` of quiet."""
        packed = pack_command((
            "XREAD", "COUNT", count, "BLOCK", max(1, block_ms), "STREAMS", *self._keys,
            *(self._last[k] for k in self._keys),
        ))
        (raw,) = (await self._links.send([RawCommand(self._keys[0], packed)]))[0]
        if isinstance(raw, Exception):
            raise raw
        if not raw:
            return []
        rings: list[Ring] = []
        pairs = raw.items() if isinstance(raw, dict) else raw
        for key, entries in cast(list[tuple[bytes, list[tuple[bytes, list[bytes]]]]], pairs):
            for _entry_id, fields in entries:
                rings.extend(parse_ring(fields or []))
            self._last[key.decode()] = entries[-1][0].decode()
        return rings

    async def aclose(self) -> None:
        await self._links.aclose()


class BellSet:
    """Doorbells of any number of partitions behind one ``wait``.

    One XREAD may only name keys of one slot on Redis Cluster. On one Redis every
    bell is in one read (as ``Doorbell``); on a cluster each partition's bells are
    waited on by a listener of their own (a connection each, to the node of that
    partition), and ``wait`` returns what any of them heard. A listener's failure is
    raised from the next ``wait`` (rings may have been missed: the caller sweeps)."""

    #: Longest block of a partition's listener: how soon it notices ``aclose``.
    LISTEN_MS = 1000

    def __init__(self, redis: aioredis.Redis, keys: Sequence[str]) -> None:
        groups: dict[str, list[str]] = {}
        for key in keys:
            groups.setdefault(hash_tag(key) if is_cluster(redis) else "", []).append(key)
        self._bells = [Doorbell(redis, group) for group in groups.values()]
        self._heard: list[Ring] = []
        self._failure: Exception | None = None
        self._event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for bell in self._bells:
            await bell.start()
        if len(self._bells) > 1:
            self._tasks = [asyncio.create_task(self._listen(bell), name="bell") for bell in self._bells]

    async def wait(self, block_ms: int) -> list[Ring]:
        if len(self._bells) == 1:
            return await self._bells[0].wait(block_ms)
        if not self._heard and self._failure is None:
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(block_ms / 1000):
                    await self._event.wait()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        heard, self._heard = self._heard, []
        return heard

    async def _listen(self, bell: Doorbell) -> None:
        delays = backoff()
        while True:
            try:
                rings = await bell.wait(self.LISTEN_MS)
                delays = backoff()
            except Exception as exc:
                self._failure = exc
                self._event.set()
                await asyncio.sleep(next(delays))
                continue
            if rings:
                self._heard.extend(rings)
                self._event.set()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for bell in self._bells:
            await bell.aclose()


def ring_ops(keys: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """Doorbell rings for writes to ``keys``: {partition tag: {kind: [conversation ids]}}."""
    rings: dict[str, dict[str, dict[str, None]]] = {}
    for key in keys:
        target = ring_target(key)
        if target is not None:
            tag, kind, cid = target
            rings.setdefault(tag, {}).setdefault(kind, {})[cid] = None
    return {tag: {kind: list(ids) for kind, ids in kinds.items()} for tag, kinds in rings.items()}


def add_rings(pipe: Any, keys: Keys, written: Sequence[str], maxlen: int = 10_000) -> None:
    """Queue on ``pipe`` the doorbell entries for writes to ``written``
    (conversation streams and control streams)."""
    controls = set(keys.controls())
    for key in {k for k in written if k in controls}:
        pipe.xadd(keys.bell_for_key(key), {CONTROL_KIND: "1"}, maxlen=maxlen, approximate=True)
    for tag, kinds in ring_ops([k for k in written if k not in controls]).items():
        for kind, ids in kinds.items():
            pipe.xadd(keys.bell(partition_of_tag(tag), kind), {kind: " ".join(ids)}, maxlen=maxlen, approximate=True)


async def add_with_rings(
    redis: aioredis.Redis,
    keys: Keys,
    writes: Sequence[tuple[str, bytes | str, int | None]],
    bell_maxlen: int = 10_000,
    wait_replicas: int = 0,
    wait_timeout_ms: int = 1000,
) -> list[bytes]:
    """A client's writes: XADD each (key, payload, maxlen; None = uncapped, as a
    control stream must be), then ring their doorbells, in one pipelined round
    trip. Returns the new entry ids in the order of ``writes``. ``wait_replicas``: then
    wait until that many replicas have them (REDIS_WAIT_REPLICAS, durability)."""
    pipe = redis.pipeline(transaction=False)
    for key, payload, maxlen in writes:
        if maxlen is None:
            pipe.xadd(key, {ENTRY_FIELD: payload})
        else:
            pipe.xadd(key, {ENTRY_FIELD: payload}, maxlen=maxlen, approximate=True)
    add_rings(pipe, keys, [key for key, _, _ in writes], bell_maxlen)
    waited: list[str] = []
    if wait_replicas:
        # WAIT counts the writes of its own connection: on a cluster, one per node
        # written to, which the pipeline sends on the connection that node's writes took.
        if isinstance(redis, RedisCluster):
            nodes = {node.name: node for node in (redis.get_node_from_key(key) for key, _, _ in writes)}
            for name, node in nodes.items():
                if REPLICA_ACKS.worth_waiting(name):
                    pipe.execute_command("WAIT", wait_replicas, wait_timeout_ms, target_nodes=node)
                    waited.append(name)
        elif REPLICA_ACKS.worth_waiting(""):
            pipe.execute_command("WAIT", wait_replicas, wait_timeout_ms)
            waited.append("")
    replies = await pipe.execute()
    for name, acked in zip(waited, replies[len(replies) - len(waited):], strict=True):
        if int(acked) < wait_replicas:
            REPLICA_ACKS.short(name, acked, wait_replicas)
    return cast(list[bytes], replies[: len(writes)])
