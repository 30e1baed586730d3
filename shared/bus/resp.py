"""Talking to Redis below redis-py's command layer, where the hot path needs it.

A worker's reads and flushes name thousands of keys per command; redis-py's
packer and reply callbacks cost more than the command itself there. So those
commands are packed here (``pack_command``), sent on a connection of their own
(``RawConnection``) and their replies parsed here (``parse_stream_reply``).
Everything else uses the ordinary client from ``connect``.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ResponseError

from shared.bus.retry import retry_forever

if TYPE_CHECKING:
    from shared.settings import ConnectionSettings

StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]
StreamReply = list[tuple[bytes, StreamEntries]]


#: No reply for this long means the connection is gone (a cut network, a frozen server).
#: Longer than any blocking read the services send (a doorbell wait is at most a second).
SOCKET_TIMEOUT_S = 15.0
#: Connections a cluster client may open to one node (its pool fails rather than waits).
CLUSTER_NODE_CONNECTIONS = 512
#: TCP keepalive: a silently dropped peer is noticed within about IDLE + INTERVAL * COUNT.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 10, 5, 3


def keepalive_options() -> dict[int, int]:
    """Per-socket keepalive timing where the platform has the options (Linux does)."""
    wanted = {"TCP_KEEPIDLE": KEEPALIVE_IDLE_S, "TCP_KEEPINTVL": KEEPALIVE_INTERVAL_S, "TCP_KEEPCNT": KEEPALIVE_COUNT}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def connect(url: str, cluster: bool = False, **kwargs: Any) -> aioredis.Redis:
    """A client that returns bytes (no decoding on the hot path), with a socket
    timeout and TCP keepalive on every connection it makes (the raw ones too).
    ``blocking_pool=True``: callers wait for a pooled connection (``max_connections``,
    ``timeout``) rather than fail when all are in use. ``cluster=True``: a Redis
    Cluster client (``url`` names any node; it finds the others and follows MOVED,
    ASK and failovers for ordinary commands)."""
    options: dict[str, Any] = {
        "decode_responses": False,
        "socket_connect_timeout": 5,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
        "health_check_interval": 0,
        # No CLIENT SETINFO at connect: the services' ACL users are not granted it (it
        # only labels the connection), and each refusal would fill Redis's ACL LOG.
        "driver_info": None,
        **kwargs,
    }
    blocking = options.pop("blocking_pool", False)
    if cluster:
        options.pop("timeout", None)
        # A node's pool does not wait for a free connection: give it room for a burst.
        options["max_connections"] = max(options.get("max_connections", 0), CLUSTER_NODE_CONNECTIONS)
        # One master down must not stop the partitions the other masters serve.
        options.setdefault("require_full_coverage", False)
        return cast(aioredis.Redis, RedisCluster.from_url(url, **options))  # same commands; see nodes.is_cluster
    if blocking:
        # Many concurrent callers (a gateway's sockets): wait for a free connection
        # instead of failing with "Too many connections" when the pool is in use.
        options.setdefault("max_connections", 64)
        options.setdefault("timeout", 20)
        return aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(url, **options))
    return aioredis.Redis.from_url(url, **options)


async def cluster_enabled(url: str, **kwargs: Any) -> bool:
    """Whether the server at ``url`` is a node of a Redis Cluster (``INFO cluster``)."""
    probe = connect(url, **kwargs)
    try:
        info = await probe.info("cluster")
        return bool(int(info.get("cluster_enabled", 0)))
    finally:
        await probe.aclose()


async def open_redis(settings: ConnectionSettings, **kwargs: Any) -> aioredis.Redis:
    """A client for the settings' Redis as their user (the password from
    REDIS_PASSWORD_FILE, the TLS files for a ``rediss://`` URL): a cluster client when
    REDIS_CLUSTER says so, or (``auto``) when the server is a cluster node. Resolves
    the settings' partition count (PARTITIONS unset: 1 on one Redis, 16 on a cluster)."""
    url = settings.redis_url.get_secret_value()
    options = {**settings.redis_client_options(), **kwargs}
    if settings.redis_cluster == "auto":
        plain = {k: v for k, v in options.items() if k not in ("blocking_pool", "max_connections", "timeout")}
        cluster = await retry_forever("redis (is it a cluster?)", lambda: cluster_enabled(url, **plain))
    else:
        cluster = settings.redis_cluster == "yes"
    settings.resolve_partitions(cluster)
    redis = connect(url, cluster=cluster, **options)
    if isinstance(redis, RedisCluster):
        await retry_forever("redis cluster", redis.initialize)
    return redis


def connect_to(settings: ConnectionSettings, **kwargs: Any) -> aioredis.Redis:
    """``connect`` to the settings' Redis as their user, on one Redis (REDIS_CLUSTER
    ``yes`` gives a cluster client; ``auto`` needs :func:`open_redis`)."""
    settings.resolve_partitions(settings.redis_cluster == "yes")
    return connect(settings.redis_url.get_secret_value(), cluster=settings.redis_cluster == "yes",
                   **settings.redis_client_options(), **kwargs)


def pack_command(args: Sequence[Any]) -> bytes:
    """RESP-encode one command (bytes, str and int arguments). A flush packs
    thousands of arguments: this is several times faster than redis-py's packer."""
    out = [b"*%d\r\n" % len(args)]
    append = out.append
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class RawConnection:
    """A connection of its own for pre-packed commands and their replies."""

    def __init__(self, redis: aioredis.Redis | None, conn: Any = None) -> None:
        self._conn = conn if conn is not None else redis.connection_pool.make_connection()  # type: ignore[union-attr]

    @classmethod
    def to_node(cls, node: ClusterNode) -> RawConnection:
        """A raw connection to one node of a cluster, with the cluster client's options."""
        return cls(None, node.connection_class(**node.connection_kwargs))

    async def roundtrip(self, packed: bytes, replies: int, raise_errors: bool = True) -> list[Any]:
        """Send ``packed`` (``replies`` commands), return their replies in order.
        The first error reply is raised after every reply has been read; with
        ``raise_errors=False`` each error reply is returned in its place instead."""
        try:
            await self._conn.send_packed_command(packed, check_health=False)
            out: list[Any] = []
            error: ResponseError | None = None
            for _ in range(replies):
                try:
                    out.append(await self._conn.read_response())
                except ResponseError as exc:
                    error = error or exc
                    out.append(exc)
        except BaseException:
            # A reply may still be on its way: this connection cannot be reused.
            await self._conn.disconnect()
            raise
        if error is not None and raise_errors:
            raise error
        return out

    async def aclose(self) -> None:
        await self._conn.disconnect()


def parse_stream_reply(raw: Any) -> StreamReply:
    """An XREAD / XREADGROUP reply as hiredis gives it (no redis-py callback):
    [(key, [(entry id, {field: value})])]. An entry trimmed while pending has no fields."""
    if not raw:
        return []
    # RESP3 (redis-py 8's default) answers a map {key: entries}; RESP2 a list of [key, entries].
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [
        (key, [(entry_id, _pairs(fields)) for entry_id, fields in entries])
        for key, entries in cast(list[tuple[bytes, list[tuple[bytes, list[bytes] | None]]]], pairs)
    ]


def _pairs(flat: list[bytes] | None) -> dict[bytes, bytes]:
    if not flat:
        return {}
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def id_order(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id as (ms, seq), for comparing ids in order."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


async def server_run_id(redis: aioredis.Redis) -> str:
    """The server's run id (INFO server): a new one every time it starts. On a cluster,
    the run ids of all its masters: it changes when a master restarts or a replica is
    promoted (the new master may lack the old one's last writes, as after a restart)."""
    if isinstance(redis, RedisCluster):
        infos = await redis.info("server", target_nodes=RedisCluster.PRIMARIES)
        return ",".join(sorted(str(info["run_id"]) for info in infos.values()))
    info = await redis.info("server")
    return str(info["run_id"])


async def xrange_entries(
    redis: aioredis.Redis, key: str, min: str = "-", max: str = "+", count: int | None = None, reverse: bool = False
) -> StreamEntries:
    """XRANGE / XREVRANGE with the reply typed (redis-py declares it Optional)."""
    if reverse:
        rows = await redis.xrevrange(key, max=max, min=min, count=count)
    else:
        rows = await redis.xrange(key, min=min, max=max, count=count)
    return cast(StreamEntries, rows or [])
