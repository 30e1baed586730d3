"""Pre-packed commands routed to the Redis node that holds their keys.

The hot path (group reads, doorbell waits, the writer's flushes) sends packed
commands on raw connections of its own (``shared.bus.resp``). On one Redis
every command goes to that server, in one round trip. On Redis Cluster each
command touches the keys of one slot (one partition: see ``shared.keys``) and
goes to the master of that slot: ``RawLinks`` keeps one raw connection per node,
sends each node its commands in one round trip, the nodes concurrently, and
follows the cluster's redirections itself:

- ``MOVED`` (the slot has a new master: a failover, or a finished migration):
  refresh the slot map, send the command again to the new master. Nothing of a
  redirected command ran, so sending it again is safe.
- ``ASK`` (the slot is being migrated and this key is already on the target):
  send the command once more, to the target, behind ``ASKING``.
- A node that does not answer (killed, cut off): its commands get the error
  (the caller retries them, as after any connection error) and the slot map is
  refreshed, so that once a replica is promoted the retry goes there.

A command's result is its list of replies, an exception in place of each error
reply: one failing command (or node) leaves the others' results usable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, MovedError, RedisError

from shared.bus.resp import RawConnection, pack_command
from shared.metrics import REDIRECTS, UNREPLICATED

log = logging.getLogger(__name__)

#: Redirections followed for one command before its last error is its result.
MAX_REDIRECTS = 5
#: Slot-map refreshes are at most this often (a failover makes every command fail at once).
REFRESH_MIN_INTERVAL_S = 0.1
#: A node whose WAIT fell short is not waited on for this long (then tried again).
SHORT_OF_REPLICAS_S = 5.0
#: ``ASKING``, packed: sent before a command redirected by ``ASK``.
_ASKING = b"*1\r\n$6\r\nASKING\r\n"


@dataclass(frozen=True, slots=True)
class RawCommand:
    """Packed command(s) whose keys share ``route_key``'s slot, and how many replies they give."""

    route_key: str
    packed: bytes
    replies: int = 1


class ReplicaAcks:
    """Which nodes are short of replicas (REDIS_WAIT_REPLICAS), for every writer of a process.

    WAIT blocks for its whole timeout when the master has fewer replicas than asked:
    after a failover the promoted replica has none until the old master comes back (or
    an operator adds one). Waiting on every write then would make every flush take the
    timeout (measured by ``python -m bench.failover``: answers took seconds). So a node
    whose WAIT fell short is noted, loudly, and written to without WAIT for
    SHORT_OF_REPLICAS_S; then WAIT is tried again. Its writes meanwhile are as durable as
    without the setting: run two replicas per master to keep the guarantee through a
    failover."""

    def __init__(self) -> None:
        self._short_until: dict[str, float] = {}

    def worth_waiting(self, node: str) -> bool:
        until = self._short_until.get(node)
        if until is None:
            return True
        if time.monotonic() < until:
            return False
        del self._short_until[node]
        return True

    def short(self, node: str, acked: Any, wanted: int) -> None:
        self._short_until[node] = time.monotonic() + SHORT_OF_REPLICAS_S
        UNREPLICATED.inc()
        log.error("writes to %s reached %s of %d replicas within REDIS_WAIT_TIMEOUT_MS: writing to it without "
                  "WAIT for %.0fs (no replica since a failover? run two replicas per master)",
                  node or "redis", acked, wanted, SHORT_OF_REPLICAS_S)


#: One per process: every writer of it learns from the others' short WAITs.
REPLICA_ACKS = ReplicaAcks()


def is_cluster(redis: aioredis.Redis) -> bool:
    return isinstance(redis, RedisCluster)


class RawLinks:
    """Raw connections to the nodes of one Redis (or cluster), one per node, owned by
    one reader or writer (its commands are never interleaved with anyone else's)."""

    def __init__(self, redis: aioredis.Redis, wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self._redis = redis
        self._cluster: RedisCluster | None = redis if isinstance(redis, RedisCluster) else None
        self._conns: dict[str, RawConnection] = {}
        self._refreshed_at = 0.0
        #: Durability (REDIS_WAIT_REPLICAS): every round trip ends with WAIT, and returns
        #: only once that many replicas have its writes (or the WAIT timed out).
        self._wait = pack_command(("WAIT", wait_replicas, wait_timeout_ms)) if wait_replicas else b""
        self._wait_replicas = wait_replicas
        #: Round trips whose writes no replica confirmed in time (a lagging or missing replica).
        self.unconfirmed = 0

    @property
    def cluster(self) -> bool:
        return self._cluster is not None

    def node_of(self, key: str) -> str:
        """The node (``host:port``) that serves ``key``'s slot; ``""`` on one Redis."""
        if self._cluster is None:
            return ""
        node = self._cluster.get_node_from_key(key)
        if node is None:  # pragma: no cover - only a replica lookup returns None
            raise RedisError(f"no node serves the slot of {key}")
        return str(node.name)

    def _conn(self, node: str) -> RawConnection:
        conn = self._conns.get(node)
        if conn is None:
            if self._cluster is None:
                conn = RawConnection(self._redis)
            else:
                host, port = node.rsplit(":", 1)
                known = self._cluster.get_node(node_name=node)
                if known is None:  # an ASK target not yet in the slot map
                    known = ClusterNode(host, int(port), **self._cluster.nodes_manager.connection_kwargs)
                conn = RawConnection.to_node(known)
            self._conns[node] = conn
        return conn

    async def refresh(self) -> None:
        """Ask the cluster again who serves which slot (after MOVED, or a node that failed)."""
        if self._cluster is None or time.monotonic() - self._refreshed_at < REFRESH_MIN_INTERVAL_S:
            return
        self._refreshed_at = time.monotonic()
        try:
            await self._cluster.nodes_manager.initialize()
        except Exception as exc:  # every known node failed: the callers' retries come back here
            log.warning("could not refresh the cluster's slot map: %s", exc)

    async def send(self, commands: Sequence[RawCommand]) -> list[list[Any]]:
        """Every command's replies, in order (see the module's docstring)."""
        results: list[list[Any] | None] = [None] * len(commands)
        asking: dict[int, str] = {}
        todo = list(range(len(commands)))
        for _ in range(MAX_REDIRECTS + 1):
            by_node: dict[str, list[int]] = {}
            for i in todo:
                node = asking.get(i) or self.node_of(commands[i].route_key)
                by_node.setdefault(node, []).append(i)
            trips = [self._roundtrip(node, [(commands[i], i in asking) for i in idxs])
                     for node, idxs in by_node.items()]
            outcomes: list[list[list[Any]] | BaseException]
            if len(trips) == 1:
                # One node (always so on one Redis): no task for it, as before clusters were served.
                try:
                    outcomes = [await trips[0]]
                except Exception as exc:
                    outcomes = [exc]
            else:
                outcomes = await asyncio.gather(*trips, return_exceptions=True)
            asking.clear()
            redo: list[int] = []
            refresh = False
            for idxs, outcome in zip(by_node.values(), outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, Exception):
                        raise outcome  # cancelled: the caller is stopping
                    for i in idxs:
                        results[i] = [outcome] * commands[i].replies
                    refresh = True
                    continue
                for i, replies in zip(idxs, outcome, strict=True):
                    results[i] = replies
                    redirect = next((r for r in replies if isinstance(r, AskError)), None)
                    if isinstance(redirect, MovedError):
                        REDIRECTS.labels("moved").inc()
                        if not refresh:
                            log.info("MOVED: slot %d is served by %s:%s now; refreshing the slot map",
                                     redirect.slot_id, redirect.host, redirect.port)
                        refresh = True
                        redo.append(i)
                    elif redirect is not None:
                        REDIRECTS.labels("ask").inc()
                        asking[i] = f"{redirect.host}:{redirect.port}"
                        redo.append(i)
            if refresh:
                await self.refresh()
            if not redo:
                break
            todo = redo
        return [r if r is not None else [] for r in results]

    async def _roundtrip(self, node: str, batch: list[tuple[RawCommand, bool]]) -> list[list[Any]]:
        """One node's commands in one round trip; ``True`` beside a command sends it behind ASKING."""
        wait = self._wait if self._wait and REPLICA_ACKS.worth_waiting(node) else b""
        packed = b"".join((_ASKING + cmd.packed) if ask else cmd.packed for cmd, ask in batch) + wait
        count = sum(cmd.replies + ask for cmd, ask in batch) + bool(wait)
        conn = self._conn(node)
        try:
            flat = await conn.roundtrip(packed, count, raise_errors=False)
            if wait:
                self._confirm(node, flat.pop())
            elif self._wait:
                self.unconfirmed += 1
        except Exception:
            # The connection dropped itself; a node gone for good (failed over) is forgotten.
            stale = self._conns.pop(node, None)
            if stale is not None:
                await stale.aclose()
            raise
        out: list[list[Any]] = []
        pos = 0
        for cmd, ask in batch:
            pos += ask  # ASKING's own +OK
            out.append(flat[pos : pos + cmd.replies])
            pos += cmd.replies
        return out

    def _confirm(self, node: str, acked: Any) -> None:
        """The WAIT's answer: enough replicas have this round trip's writes, or the node
        is noted short of replicas (no WAIT for a while: see ``ReplicaAcks``)."""
        if isinstance(acked, int) and acked >= self._wait_replicas:
            return
        self.unconfirmed += 1
        REPLICA_ACKS.short(node, acked, self._wait_replicas)

    async def aclose(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await conn.aclose()
