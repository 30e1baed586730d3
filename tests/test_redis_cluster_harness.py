"""The local Redis Cluster harness (``shared.redis_cluster``) is a real cluster: slots
spread over three masters with a replica each, redis-py's cluster clients (sync and
asyncio) work against it, a manual failover swaps roles without losing replicated
data, a killed master is replaced by its replica, and neither a failed start nor a
stop leaves a process behind.

The module shares one cluster; the tests that change roles come last and leave three
masters with a replica each behind them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterCrossSlotError, MovedError

import shared.redis_cluster as harness
from shared.redis_cluster import ClusterError, LocalCluster, Node
from shared.redis_cluster_view import SLOTS, even_slot_ranges, myself, parse_nodes, slot_owners
from shared.redis_server import free_port
from tests.cluster_helpers import cluster_fixture, keys_in, start_cluster

ROOT = Path(__file__).resolve().parents[1]

cluster = cluster_fixture(scope="module", masters=3, replicas=1)


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[RedisCluster]:
    rc = RedisCluster.from_url(cluster.url, decode_responses=True)
    yield rc
    rc.close()


def _scan(node: Node, prefix: str) -> set[str]:
    return set(node.client().scan_iter(match=f"{prefix}:*", count=1000))


def _write_replicated(master: Node, values: dict[str, str]) -> None:
    """Written on ``master`` and acknowledged by its replica (WAIT on the same connection)."""
    pipe = master.client().pipeline(transaction=False)
    for key, value in values.items():
        pipe.set(key, value)
    pipe.wait(1, 1000)
    assert pipe.execute()[-1] == 1


def test_slots_are_split_over_three_masters_with_a_replica_each(cluster: LocalCluster) -> None:
    masters, replicas = cluster.masters(), cluster.replicas()
    assert len(masters) == 3 and len(replicas) == 3
    table = cluster.nodes[-1].command("CLUSTER", "SLOTS")
    ranges = sorted((int(first), int(last)) for first, last, *_ in table)
    assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
    assert all(prev[1] + 1 == nxt[0] for prev, nxt in zip(ranges, ranges[1:], strict=False))
    assert max(last - first for first, last in ranges) - min(last - first for first, last in ranges) <= 1
    for first, _last, master, *its_replicas in table:
        assert int(master[1]) == cluster.master_of_slot(int(first)).port
        assert [int(r[1]) for r in its_replicas] == [
            r.port for r in cluster.replicas_of(cluster.master_of_slot(int(first)))]


def test_keys_spread_over_the_masters_and_reach_their_replicas(
        cluster: LocalCluster, client: RedisCluster, prefix: str) -> None:
    keys = [f"{prefix}:{i}" for i in range(300)]
    for key in keys:
        client.set(key, key)
    node = cluster.nodes[0]
    assert [node.command("CLUSTER", "KEYSLOT", k) for k in keys[:20]] == [key_slot(k.encode()) for k in keys[:20]]
    cluster.wait_replicated()
    held = {}
    for master in cluster.masters():
        held[master.port] = _scan(master, prefix)
        assert held[master.port], f"{master} got none of 300 keys"
        assert all(any(a <= key_slot(k.encode()) <= b for a, b in cluster.slots_of(master)) for k in held[master.port])
        assert [_scan(r, prefix) for r in cluster.replicas_of(master)] == [held[master.port]]
    assert sorted(k for ks in held.values() for k in ks) == sorted(keys)


def test_the_nodes_refuse_what_a_cluster_refuses(cluster: LocalCluster, client: RedisCluster, prefix: str) -> None:
    """Single-node clients get MOVED and CROSSSLOT: this is cluster mode, not three Redis."""
    client.mset({f"{{{prefix}}}:a": "1", f"{{{prefix}}}:b": "2"})  # one hash tag: one slot
    assert client.mget(f"{{{prefix}}}:a", f"{{{prefix}}}:b") == ["1", "2"]
    key = f"{prefix}:moved"
    owner = cluster.master_of_slot(key_slot(key.encode()))
    elsewhere = next(m for m in cluster.masters() if m is not owner)
    with pytest.raises(MovedError, match=f"^{key_slot(key.encode())} 127.0.0.1:{owner.port}$"):
        elsewhere.client().get(key)
    home = cluster.masters()[0]
    a, b = keys_in(cluster.slots_of(home), prefix, 2)
    assert key_slot(a.encode()) != key_slot(b.encode())
    with pytest.raises(ClusterCrossSlotError):
        home.client().mset({a: "1", b: "2"})


async def test_the_asyncio_cluster_client_works(cluster: LocalCluster, prefix: str) -> None:
    client = AsyncRedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        keys = [f"{prefix}:{i}" for i in range(60)]
        for key in keys:
            await client.set(key, key.upper())
        assert [await client.get(k) for k in keys] == [k.upper() for k in keys]
        assert {n.port for n in client.get_primaries()} == {m.port for m in cluster.masters()}
    finally:
        await client.aclose()


def test_failover_swaps_roles_and_keeps_replicated_data(
        cluster: LocalCluster, client: RedisCluster, prefix: str) -> None:
    master = cluster.masters()[0]
    (replica,) = cluster.replicas_of(master)
    slots = cluster.slots_of(master)
    values = {k: f"v{i}" for i, k in enumerate(keys_in(slots, prefix, 20))}
    _write_replicated(master, values)
    assert client.get(next(iter(values))) == "v0"  # the client knows the old map

    promoted = cluster.failover(master)

    assert promoted is replica
    assert cluster.slots_of(promoted) == slots
    assert cluster.replicas_of(promoted) == [master]
    assert all(cluster.master_of_slot(first) is promoted for first, _ in slots)
    assert {k: client.get(k) for k in values} == values  # MOVED took it to the new master
    client.set(next(iter(values)), "after")
    assert promoted.client().get(next(iter(values))) == "after"


def test_a_killed_master_is_replaced_by_its_replica_and_can_rejoin(
        cluster: LocalCluster, client: RedisCluster, prefix: str) -> None:
    master = cluster.masters()[1]
    (replica,) = cluster.replicas_of(master)
    slots = cluster.slots_of(master)
    values = {k: f"v{i}" for i, k in enumerate(keys_in(slots, prefix, 20))}
    _write_replicated(master, values)
    assert client.get(next(iter(values))) == "v0"

    promoted = cluster.kill_master(master)

    assert not master.alive
    assert promoted is replica
    assert cluster.slots_of(promoted) == slots
    assert {k: client.get(k) for k in values} == values
    client.set(next(iter(values)), "after")

    cluster.restart_node(master)

    assert cluster.replicas_of(promoted) == [master]
    assert len(cluster.masters()) == 3 and len(cluster.replicas()) == 3
    cluster.wait_replicated()
    master.command("READONLY")  # a replica answers reads of its slots only after READONLY
    assert master.client().get(next(iter(values))) == "after"


@pytest.mark.parametrize(("extra_args", "says"), [
    (["--no-such-directive", "x"], "Bad directive"),  # the first node exits at once
    (["--cluster-enabled", "no"], "cluster support disabled"),  # all start, then forming fails
])
def test_a_failed_start_says_why_and_leaves_no_process(extra_args: list[str], says: str) -> None:
    doomed = LocalCluster(masters=3, replicas=0, extra_args=extra_args)
    with pytest.raises(ClusterError, match=says):
        doomed.start()
    assert doomed.nodes and all(n.proc is None or n.proc.poll() is not None for n in doomed.nodes)
    assert not doomed.nodes[0].dir.parent.exists()


def test_stop_kills_every_node_and_removes_their_folders() -> None:
    with start_cluster(masters=1, replicas=1) as small:
        pids = [n.pid for n in small.nodes]
        assert len(pids) == 2 and all(n.alive for n in small.nodes)
        root = small.nodes[0].dir.parent
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not root.exists()


def test_a_port_taken_before_the_node_binds_it_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another test's server may take a port between the probe and the node's bind."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        probes = iter([taken])
        monkeypatch.setattr(harness, "free_port", lambda: next(probes, None) or free_port())
        with start_cluster(masters=1, replicas=0) as single:
            (node,) = single.nodes
            assert node.port != taken and node.alive
            assert "already in use" in node.log.read_text()
            assert single.master_of_slot(SLOTS - 1) is node


def test_a_cluster_nobody_stopped_is_gone_when_its_interpreter_exits() -> None:
    program = ("import json; from shared.redis_cluster import LocalCluster; "
               "c = LocalCluster(masters=1, replicas=1).start(); "
               "print(json.dumps([[n.pid for n in c.nodes], str(c.nodes[0].dir.parent)]))")
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    pids, root = json.loads(done.stdout)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not Path(root).exists()


def test_cluster_nodes_lines_are_read_as_the_server_writes_them() -> None:
    """Lines a settled cluster never shows: a slot in migration, a node in handshake."""
    text = "\n".join([
        "aaa 127.0.0.1:7001@17001,host myself,master - 0 0 1 connected 0-99 100 [101->-bbb] [102-<-ccc]",
        "bbb 127.0.0.1:7002@17002 slave,fail? aaa 0 0 1 connected",
        "tmp 127.0.0.1:7003@17003 handshake - 0 0 0 disconnected",
    ])
    view = parse_nodes(text)
    assert set(view) == {"aaa", "bbb"}
    assert myself(view).slots == ((0, 99), (100, 100)) and myself(view).slot_count == 101
    assert view["bbb"].is_replica and view["bbb"].master_id == "aaa" and view["bbb"].failing
    assert slot_owners(view) == {(0, 99): "aaa", (100, 100): "aaa"}
    assert even_slot_ranges(3) == [(0, 5460), (5461, 10921), (10922, 16383)]
