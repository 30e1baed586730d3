"""The gateway on a Redis Cluster (3 masters, a replica each, PARTITIONS=12: 4 partitions
per master), driven by the official openai SDK: the two-step text flow for conversations
opened until every master holds some, and a resume after the socket dropped. The gateway
and the workers are real processes given one node's URL; they find the cluster by
themselves (REDIS_CLUSTER=auto). The gateway may count no Redis failure, and no node
may have refused a command as CROSSSLOT."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.cluster import RedisCluster

from shared import devstack
from shared.devstack import Stack
from shared.keys import Keys, key_slot, partition_of
from shared.redis_cluster import LocalCluster
from tests.cluster_helpers import start_cluster, wait_for_cluster_workers
from tests.conftest import base_env
from tests.gateway_helpers import KEY_A, KEY_B, client, collect_until, of_type
from tests.runtime_helpers import until

PARTITIONS = 12
#: Conversations opened at most while looking for one on every master (12 partitions,
#: 4 per master: missing a master 40 times in a row has odds of 3 x (2/3)^40).
MAX_CONVERSATIONS = 40


def _samples(base: str, name: str, label: str) -> dict[str, float]:
    """The gateway's samples of ``name``, by the value of ``label``."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {s.labels.get(label, ""): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


async def _metric_is(base: str, name: str, value: float) -> bool:
    return (await asyncio.to_thread(_samples, base, name, "")).get("") == value


async def _request_written(cluster: LocalCluster, prefix: str, conversation_id: str) -> bool:
    """Has the gateway written the conversation's response.request?"""
    rc = RedisCluster.from_url(cluster.url)
    try:
        rows = await rc.xrange(Keys(prefix=prefix, partitions=PARTITIONS).input(conversation_id))
    finally:
        await rc.aclose()
    return any(b"response.request" in fields[b"d"] for _, fields in rows)


def _answer(text: str, turn: int) -> str:
    return f'I\'ve received your transcription: "{text}" (turn {turn})'


def _master_port(cluster: LocalCluster, conversation_id: str) -> int:
    """The port of the master holding the conversation's partition."""
    keys = Keys(prefix="x", partitions=PARTITIONS)
    tag = keys.tag(partition_of(conversation_id, PARTITIONS))
    return cluster.master_of_slot(key_slot(tag)).port


async def _open(base: str) -> tuple[Any, str]:
    conn = await client(base).realtime.connect(model="local").enter()
    created = await collect_until(conn, lambda e: e.type == "session.created")
    await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                       "audio": {"input": {"turn_detection": None}}})
    await collect_until(conn, lambda e: e.type == "session.updated")
    return conn, created[-1].session.conversation_id


async def _text_turn(conn: Any, text: str) -> None:
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                               "content": [{"type": "input_text", "text": text}]})


async def _two_steps(conn: Any, name: str) -> str:
    """Two text items, then response.create: the one answer's text."""
    await _text_turn(conn, f"hello from {name}")
    await _text_turn(conn, "and good morning")
    await conn.response.create()
    seen = await collect_until(conn, lambda e: e.type == "response.done")
    dones = of_type(seen, "response.done")
    assert len(dones) == 1 and dones[0].response.status == "completed"
    text: str = dones[0].response.output[0].content[0].text
    return text


async def test_the_gateway_on_a_redis_cluster(prefix: str, tmp_path: Path) -> None:
    with start_cluster(masters=3, replicas=1) as cluster:
        stack = Stack(base_env(cluster.url, prefix, PARTITIONS=str(PARTITIONS)), tmp_path / "logs")
        try:
            stack.start("transcriber_svc")
            answerer = stack.start("conversation_svc")
            await asyncio.to_thread(wait_for_cluster_workers, cluster, prefix, 2)
            gateway, base = await asyncio.to_thread(devstack.start_gateway, stack,
                                                    {"GATEWAY_API_KEYS": f"{KEY_A},{KEY_B}"})
            masters = {node.port for node in cluster.masters()}

            # Conversations until every master holds some, all open at once.
            opened: list[tuple[Any, str]] = []
            while {_master_port(cluster, cid) for _, cid in opened} != masters:
                assert len(opened) < MAX_CONVERSATIONS, "the conversations never covered every master"
                opened.append(await _open(base))
            texts = await asyncio.gather(*(_two_steps(conn, f"c{i}") for i, (conn, _) in enumerate(opened)))
            assert list(texts) == [_answer(f"hello from c{i}\nand good morning", 1) for i in range(len(opened))]
            for conn, _ in opened:
                await conn.close()

            # A resume after a dropped socket: the answer produced while away comes once.
            conn, conversation_id = await _open(base)
            answerer.signal(signal.SIGSTOP)
            await _text_turn(conn, "are you there")
            await conn.response.create()
            await until(lambda: _request_written(cluster, prefix, conversation_id), timeout_s=15)
            conn._connection.transport.abort()
            # The answer must come while the client is away: once the gateway has seen the drop
            # (an answer sent to a socket whose peer is already gone is the documented loss window).
            await until(lambda: _metric_is(base, "vab_gateway_sessions_open", 0), timeout_s=15)
            answerer.signal(signal.SIGCONT)
            async with client(base).realtime.connect(model="local",
                                                     extra_query={"conversation_id": conversation_id}) as resumed:
                created = await collect_until(resumed, lambda e: e.type == "session.created")
                assert created[-1].session.conversation_id == conversation_id
                first = await collect_until(resumed, lambda e: e.type == "response.done")
                await _text_turn(resumed, "after the resume")
                await resumed.response.create()
                second = await collect_until(resumed, lambda e: e.type == "response.done")
            assert [d.response.output[0].content[0].text for d in of_type(first + second, "response.done")] == [
                _answer("are you there", 1), _answer("after the resume", 2)]
            # Nothing the gateway sent was refused (a CROSSSLOT, a MOVED it did not follow).
            errors = await asyncio.to_thread(_samples, base, "vab_gateway_pipeline_errors_total", "op")
            assert errors == {"write": 0, "read": 0, "mark": 0}, gateway.log_text()[-3000:]
            for node in cluster.live_nodes():  # and no node refused a command as cross-slot
                assert "errorstat_CROSSSLOT" not in node.command("INFO", "errorstats"), node
        finally:
            stack.stop_all()
