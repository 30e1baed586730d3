"""The gateway's ``/metrics`` on its own port, read while the official openai SDK drives
it: open sockets, opened and refused handshakes by reason, events in and out."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

from shared.devstack import Stack
from tests.conftest import wait_for_workers
from tests.gateway_helpers import client, collect_until, start_gateway
from tests.runtime_helpers import until


def _samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(base: str, name: str, **labels: str) -> float:
    return _samples(base)[(name, tuple(sorted({"service": "gateway", **labels}.items())))]


async def _metric(base: str, name: str, **labels: str) -> float:
    return await asyncio.to_thread(_value, base, name, **labels)


async def test_metrics_count_sessions_refusals_and_events(stack: Stack, redis_url: str, prefix: str) -> None:
    stack.start("transcriber_svc")
    stack.start("conversation_svc")
    wait_for_workers(redis_url, prefix, 2)
    _, base = start_gateway(stack)
    # Every series is there from the start, at zero.
    assert await _metric(base, "vab_gateway_sessions_open") == 0
    for reason in ("unauthorized", "not_found", "session_limit", "draining"):
        assert await _metric(base, "vab_gateway_sessions_refused_total", reason=reason) == 0
    assert await _metric(base, "vab_gateway_pipeline_errors_total", op="write") == 0

    async with client(base).realtime.connect(model="local") as conn:
        await collect_until(conn, lambda e: e.type == "session.created")
        assert await _metric(base, "vab_gateway_sessions_open") == 1
        assert await _metric(base, "vab_gateway_sessions_opened_total", kind="new") == 1
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                           "audio": {"input": {"turn_detection": None}}})
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "count me"}]})
        await conn.response.create()
        seen = await collect_until(conn, lambda e: e.type == "response.done")
        assert await _metric(base, "vab_gateway_events_total", direction="in") == 3
        # session.created and everything up to the response.done (the events reach the
        # socket before the client reads them).
        assert await _metric(base, "vab_gateway_events_total", direction="out") >= len(seen) + 1

    with pytest.raises(InvalidStatus):
        async with client(base, "sk-not-a-key-of-this-gateway-000").realtime.connect(model="local"):
            pass
    with pytest.raises(InvalidStatus):
        async with client(base).realtime.connect(model="local",
                                                 extra_query={"conversation_id": "conv_nosuchconversation"}):
            pass
    assert await _metric(base, "vab_gateway_sessions_refused_total", reason="unauthorized") == 1
    assert await _metric(base, "vab_gateway_sessions_refused_total", reason="not_found") == 1

    async def closed() -> bool:
        return await _metric(base, "vab_gateway_sessions_open") == 0

    await until(closed, timeout_s=10)
