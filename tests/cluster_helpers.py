"""A local Redis Cluster for tests (``shared.redis_cluster.LocalCluster``): started
with ``start_cluster(**kw)`` in a ``with``, or shared by a module's tests through a
fixture made by ``cluster_fixture(**kw)``::

    cluster = cluster_fixture(scope="session", masters=3)   # a fixture named `cluster`

    def test_something(cluster: LocalCluster) -> None: ...

plus ``keys_in(slots, prefix, n)``: key names that hash into given slots (to aim
writes at one master)."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from redis.cluster import RedisCluster as SyncCluster
from redis.crc import key_slot

from shared.redis_cluster import LocalCluster
from shared.redis_cluster_view import SlotRange

#: What the harness tests use and what tests of the services should use: failovers
#: within a few seconds, and still no spurious failover of a node that a loaded
#: 2-core machine leaves unscheduled for a moment.
NODE_TIMEOUT_MS = 1000


@contextlib.contextmanager
def start_cluster(**kw: Any) -> Iterator[LocalCluster]:
    """A started ``LocalCluster(**kw)`` (node timeout ``NODE_TIMEOUT_MS`` unless given),
    stopped on exit."""
    kw.setdefault("node_timeout_ms", NODE_TIMEOUT_MS)
    with LocalCluster(**kw).start() as cluster:
        yield cluster


def cluster_fixture(name: str = "cluster", scope: Literal["session", "package", "module", "class", "function"]
                    = "session", **kw: Any) -> Any:
    """A pytest fixture ``name`` of the given scope yielding ``start_cluster(**kw)``;
    assign it to a module-level name in the test module."""

    @pytest.fixture(scope=scope, name=name)
    def fixture() -> Iterator[LocalCluster]:
        with start_cluster(**kw) as cluster:
            yield cluster

    return fixture


def keys_in(slots: tuple[SlotRange, ...], prefix: str, n: int) -> list[str]:
    """``n`` distinct key names ``<prefix>:<i>`` whose hash slot is within ``slots``."""
    def inside(key: str) -> bool:
        slot = key_slot(key.encode())
        return any(first <= slot <= last for first, last in slots)

    candidates = (f"{prefix}:{i}" for i in itertools.count())
    return list(itertools.islice((k for k in candidates if inside(k)), n))


def cluster_client(cluster: LocalCluster) -> Any:
    """A sync cluster client (close it with ``close_cluster_client``)."""
    return SyncCluster.from_url(cluster.url)


def close_cluster_client(client: Any) -> None:
    """Close a sync cluster client and its nodes' connections (its close() leaves them open)."""
    for node in client.get_nodes():
        if node.redis_connection is not None:
            node.redis_connection.connection_pool.disconnect()
    client.close()


def wait_for_cluster_workers(cluster: LocalCluster, prefix: str, count: int, timeout_s: float = 60.0) -> None:
    """Wait until ``count`` workers wrote their heartbeat (on whichever master holds it)."""
    client = cluster_client(cluster)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(list(client.scan_iter(match=f"{prefix}:worker:*"))) >= count:
                return
            time.sleep(0.1)
        raise AssertionError(f"fewer than {count} workers up")
    finally:
        close_cluster_client(client)
