"""End to end on a real local Redis Cluster (3 masters, one replica each, started
from the same server binary as every other test: ``shared.redis_cluster``).

The services are real processes given one node's URL; they find out it is a
cluster by themselves (REDIS_CLUSTER=auto). With PARTITIONS=12 every master
serves 4 partitions. Each test checks the pipeline's promises through the
simulator's summary: every utterance answered exactly once and in order, also
across a worker SIGKILL, a manual failover and a master SIGKILL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis as syncredis

from shared.devstack import ServiceProcess, Stack
from shared.keys import Keys, key_slot
from shared.models import ResponseDone, decode_fields
from shared.redis_cluster import LocalCluster
from tests.cluster_helpers import (
    close_cluster_client,
    cluster_client,
    cluster_fixture,
    start_cluster,
    wait_for_cluster_workers,
)
from tests.conftest import base_env

PARTITIONS = 12
T = TypeVar("T")

#: One cluster for the tests that leave it as they found it (no failover).
shared_cluster = cluster_fixture("shared_cluster", scope="module")


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """A cluster of its own, for a test that fails a master over."""
    with start_cluster() as c:
        yield c


def _stack(cluster: LocalCluster, prefix: str, tmp_path: Path, **extra: str) -> Stack:
    return Stack(base_env(cluster.url, prefix, PARTITIONS=str(PARTITIONS), **extra), tmp_path / "logs")


def _sessions_by_pid(cluster: LocalCluster, prefix: str) -> dict[int, int]:
    """Sessions each worker holds, from the heartbeats (pid -> sessions)."""
    client = cluster_client(cluster)
    try:
        beats = [client.hgetall(key) for key in client.scan_iter(match=f"{prefix}:worker:*")]
    finally:
        close_cluster_client(client)
    return {int(b[b"pid"]): int(b[b"sessions"]) for b in beats}


def _simulation(env: dict[str, str], conversations: int, utterances: int, rate: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulator_svc", "--json", "--conversations", str(conversations),
         "--utterances", str(utterances), "--rate", str(rate), "--timeout", "120"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _summary(sim: subprocess.Popen[str]) -> tuple[dict[str, Any], str]:
    out, err = sim.communicate(timeout=150)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no summary (rc={sim.returncode}):\n{out}\n{err[-3000:]}"
    return json.loads(lines[-1]), err


def _assert_exactly_once(summary: dict[str, Any], err: str, utterances: int) -> None:
    assert summary["utterances"] == utterances, summary
    assert summary["responses_done"] + summary["responses_failed"] == utterances, err[-3000:]
    assert summary["missing"] == 0, err[-3000:]
    assert summary["duplicates"] == 0
    assert summary["out_of_order"] == 0


def _answers_per_utterance(cluster: LocalCluster, prefix: str) -> dict[tuple[str, str], int]:
    """response.done entries per (conversation, utterance) in the responses streams,
    as the surviving masters hold them."""
    client = cluster_client(cluster)
    counts: dict[tuple[str, str], int] = {}
    try:
        for key in client.scan_iter(match=f"{prefix}:conv:*:responses"):
            for _id, fields in client.xrange(key):
                entry = decode_fields(fields)
                if isinstance(entry, ResponseDone):
                    k = (entry.conversation_id, entry.utterance_id)
                    counts[k] = counts.get(k, 0) + 1
    finally:
        close_cluster_client(client)
    return counts


def _start_workers(stack: Stack, cluster: LocalCluster, prefix: str, conversations: int = 1) -> list[ServiceProcess]:
    stack.start("transcriber_svc")
    workers = [stack.start("conversation_svc") for _ in range(conversations)]
    wait_for_cluster_workers(cluster, prefix, 1 + conversations)
    return workers


def test_twenty_conversations_on_a_cluster_with_keys_on_every_master(
    shared_cluster: LocalCluster, prefix: str, tmp_path: Path
) -> None:
    stack = _stack(shared_cluster, prefix, tmp_path)
    try:
        _start_workers(stack, shared_cluster, prefix, conversations=2)
        summary, err = _summary(_simulation(stack.env, 20, 10, rate=4))
    finally:
        stack.stop_all()
    _assert_exactly_once(summary, err, 20 * 11)  # the greeting turn, then 10 utterances
    assert summary["responses_failed"] == 0
    # The partitions' keys live on every master (4 partitions each), as CLUSTER KEYSLOT says.
    keys = Keys(prefix, PARTITIONS)
    node = shared_cluster.masters()[0]
    assert [node.command("CLUSTER", "KEYSLOT", keys.control(p)) for p in range(PARTITIONS)] == \
        [key_slot(keys.tag(p)) for p in range(PARTITIONS)]
    for master in shared_cluster.masters():
        plain = syncredis.Redis(port=master.port)
        try:
            names = [k.decode() for k in plain.scan_iter(match=f"{prefix}:conv:*", count=1000)]
            slots = shared_cluster.slots_of(master)
            tags = {keys.tag(p) for p in range(PARTITIONS)
                    if any(lo <= key_slot(keys.tag(p)) <= hi for lo, hi in slots)}
        finally:
            plain.close()
        assert len(tags) == PARTITIONS // 3, (master.port, tags)
        assert names, f"no conversation keys on master {master.port}"
        assert {n.split("{")[1].split("}")[0] for n in names} <= tags


def test_worker_sigkill_on_a_cluster_is_taken_over(shared_cluster: LocalCluster, prefix: str, tmp_path: Path) -> None:
    stack = _stack(shared_cluster, prefix, tmp_path)
    try:
        first, second = _start_workers(stack, shared_cluster, prefix, conversations=2)
        sim = _simulation(stack.env, 10, 20, rate=2)
        time.sleep(3.0)
        held = _sessions_by_pid(shared_cluster, prefix)
        victim, survivor = (first, second) if held.get(first.pid, 0) >= held.get(second.pid, 0) else (second, first)
        assert held.get(victim.pid, 0) > 0, held
        victim.signal(signal.SIGKILL)
        summary, err = _summary(sim)
        took_over = "took over" in survivor.log_path.read_text()
    finally:
        stack.stop_all()
    _assert_exactly_once(summary, err, 10 * 21)
    assert took_over, "the surviving worker took nothing over"


def _through_a_fault(cluster: LocalCluster, prefix: str, tmp_path: Path, fault: Callable[[], T],
                     **extra: str) -> tuple[T, str]:
    """12 conversations x 24 utterances at 2/s each, with ``fault`` done 4 s in; every
    utterance must get exactly one answer, in order, by the simulator's count and in
    what the masters hold afterwards. Returns what ``fault`` returned, and the logs."""
    stack = _stack(cluster, prefix, tmp_path, **extra)
    try:
        _start_workers(stack, cluster, prefix)
        sim = _simulation(stack.env, 12, 24, rate=2)
        time.sleep(4.0)
        result = fault()
        summary, err = _summary(sim)
        logs = "".join(p.log_path.read_text() for p in stack.procs)
    finally:
        stack.stop_all()
    _assert_exactly_once(summary, err, 12 * 25)
    counts = _answers_per_utterance(cluster, prefix)
    assert len(counts) == summary["responses_done"] and set(counts.values()) == {1}
    return result, logs


@pytest.mark.slow
def test_manual_failover_mid_run_answers_every_utterance_once(
    cluster: LocalCluster, prefix: str, tmp_path: Path
) -> None:
    old = cluster.masters()[0]
    new, _ = _through_a_fault(cluster, prefix, tmp_path, lambda: cluster.failover(old))
    assert new.port != old.port


@pytest.mark.slow
def test_master_sigkill_mid_run_with_replica_acks_loses_nothing(
    cluster: LocalCluster, prefix: str, tmp_path: Path
) -> None:
    """A master dies (SIGKILL): its replica is promoted after the node timeout. With
    REDIS_WAIT_REPLICAS=1 every write batch was on the replica before it counted as
    written, so the promoted replica holds everything anyone was told was written."""
    victim = cluster.masters()[1]
    promoted, _ = _through_a_fault(cluster, prefix, tmp_path, lambda: cluster.kill_master(victim),
                                   REDIS_WAIT_REPLICAS="1")
    assert promoted.port != victim.port


@pytest.mark.slow
def test_resharding_mid_run_answers_every_utterance_once(cluster: LocalCluster, prefix: str, tmp_path: Path) -> None:
    """Two partitions' slots move to another master while the pipeline uses them, a few
    keys at a time: the services meet ASK (a key already moved), TRYAGAIN (a read naming
    keys on both sides) and then MOVED, and answer every utterance once, in order."""
    keys = Keys(prefix, PARTITIONS)
    first, second = cluster.masters()[:2]
    slots = [key_slot(keys.tag(p)) for p in range(PARTITIONS)]
    moving = [s for s in slots if any(lo <= s <= hi for lo, hi in cluster.slots_of(first))][:2]
    moved, logs = _through_a_fault(
        cluster, prefix, tmp_path,
        lambda: [cluster.migrate_slot(slot, second, keys_per_step=2, step_pause_s=0.2) for slot in moving],
    )
    assert all(n > 0 for n in moved), moved  # the slots held live streams when they moved
    assert "MOVED: slot" in logs  # the workers followed the redirection (and refreshed their slot map)
    for slot in moving:
        assert cluster.master_of_slot(slot).node_id == second.node_id
