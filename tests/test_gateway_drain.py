"""A gateway's SIGTERM, through the official openai SDK: the open socket is closed
with 1001 and a reason naming ``?conversation_id=``, the process exits without
waiting on aiohttp's 60 s shutdown timeout, and the client resumes on a second
gateway, getting every answer exactly once.

The echo engine streams one word per delta with a pause, so an answer is still
streaming when the signal comes."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.devstack import ServiceProcess, Stack
from tests.conftest import wait_for_workers
from tests.gateway_helpers import client, collect_until, of_type, start_gateway
from tests.runtime_helpers import until

#: A generous bound on a drained gateway's exit (the figure is printed; it was ~47 s before).
EXIT_BOUND_S = 15.0


def _slow_pipeline(stack: Stack, redis_url: str, prefix: str, delta_delay_ms: int) -> None:
    stack.start("transcriber_svc")
    stack.start("conversation_svc", {"ECHO_WORDS_PER_DELTA": "1", "ECHO_DELTA_DELAY_MS": str(delta_delay_ms)})
    wait_for_workers(redis_url, prefix, 2)


def _is(type_: str) -> Any:
    return lambda e: e.type == type_


def _answer(text: str, turn: int) -> str:
    return f'I\'ve received your transcription: "{text}" (turn {turn})'


async def _ask(conn: Any, text: str) -> None:
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                               "content": [{"type": "input_text", "text": text}]})
    await conn.response.create()


async def _until_closed(conn: Any) -> tuple[list[Any], ConnectionClosed]:
    """Every event up to the server's close, and the close."""
    seen: list[Any] = []
    try:
        await collect_until(conn, lambda e: seen.append(e) is not None, timeout_s=30)
    except ConnectionClosed as closed:
        return seen, closed
    raise AssertionError("the socket was not closed")


async def _exit_time(gateway: ServiceProcess, started: float) -> float:
    """Wait (off the event loop, so the client answers the close handshake) for the exit."""
    code = await asyncio.to_thread(gateway.wait, EXIT_BOUND_S)
    took = time.monotonic() - started
    print(f"\ngateway exited {took:.2f} s after SIGTERM (code {code})")
    assert code == 0, gateway.log_text()[-3000:]
    return took


def _readyz(base: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


async def _draining_seen(base: str) -> None:
    """Until /readyz says 503 draining (it said 200 before the signal was handled)."""
    async def draining() -> bool:
        status, body = await asyncio.to_thread(_readyz, base)
        return status == 503 and body.strip() == "draining"

    await until(draining, timeout_s=5)


async def _open(base: str) -> tuple[Any, str]:
    conn = await client(base).realtime.connect(model="local").enter()
    conversation_id = (await collect_until(conn, _is("session.created")))[-1].session.conversation_id
    await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                       "audio": {"input": {"turn_detection": None}}})
    await collect_until(conn, _is("session.updated"))
    return conn, conversation_id


async def _resume(base: str, conversation_id: str, then_ask: str, replayed_first: bool = False) -> list[Any]:
    """Resume, and ask once more: every event the resumed socket gets up to that answer's
    response.done. ``replayed_first``: an answer cut by the drain is being sent again; ask
    only after its response.done (as the hosted API, the gateway refuses a response.create
    while a response is active)."""
    async with client(base).realtime.connect(model="local", extra_query={"conversation_id": conversation_id}) \
            as conn:
        seen = await collect_until(conn, _is("session.created"))
        if replayed_first:
            seen += await collect_until(conn, _is("response.done"))
        await _ask(conn, then_ask)
        return seen + await collect_until(conn, lambda e: e.type == "response.done"
                                          and then_ask in e.response.output[0].content[0].text)


def _texts(dones: list[Any]) -> list[str]:
    return [d.response.output[0].content[0].text for d in dones]


async def test_sigterm_lets_the_streaming_answer_finish_then_closes_1001(stack: Stack, redis_url: str,
                                                                         prefix: str) -> None:
    _slow_pipeline(stack, redis_url, prefix, delta_delay_ms=300)
    first, base_1 = start_gateway(stack)
    _, base_2 = start_gateway(stack)
    conn, conversation_id = await _open(base_1)
    await _ask(conn, "hello")
    assert _texts(of_type(await collect_until(conn, _is("response.done")), "response.done")) == [
        _answer("hello", 1)]
    await _ask(conn, "are you there")
    await collect_until(conn, _is("response.output_text.delta"))  # the answer is streaming
    started = time.monotonic()
    first.signal(signal.SIGTERM)
    # While the answer finishes: not ready, and a new socket is refused (the load balancer's cue).
    await _draining_seen(base_1)
    with pytest.raises(InvalidStatus) as refused:
        async with client(base_1).realtime.connect(model="local"):
            pass
    assert refused.value.response.status_code == 503
    seen, closed = await _until_closed(conn)
    took = await _exit_time(first, started)
    # The answer under way was let finish, whole, before the close.
    assert _texts(of_type(seen, "response.done")) == [_answer("are you there", 2)]
    assert closed.rcvd is not None and closed.rcvd.code == 1001
    assert f"?conversation_id={conversation_id}" in closed.rcvd.reason
    # Nothing of the answers already sent comes again on the second gateway.
    resumed = await _resume(base_2, conversation_id, "and now")
    assert _texts(of_type(resumed, "response.done")) == [_answer("and now", 3)]
    assert not of_type(resumed, "response.created")[1:]
    assert took < EXIT_BOUND_S


async def test_an_answer_longer_than_the_drain_comes_whole_on_resume(stack: Stack, redis_url: str,
                                                                    prefix: str) -> None:
    _slow_pipeline(stack, redis_url, prefix, delta_delay_ms=400)
    first, base_1 = start_gateway(stack, GATEWAY_DRAIN_S="0.5")
    _, base_2 = start_gateway(stack)
    conn, conversation_id = await _open(base_1)
    await _ask(conn, "tell me a long story please")
    await collect_until(conn, _is("response.output_text.delta"))
    started = time.monotonic()
    first.signal(signal.SIGTERM)
    seen, closed = await _until_closed(conn)
    await _exit_time(first, started)
    assert closed.rcvd is not None and closed.rcvd.code == 1001
    assert not of_type(seen, "response.done")  # cut at the drain's deadline
    # The cut answer is sent again whole, from its response.created, then the next one: once each.
    resumed = await _resume(base_2, conversation_id, "go on", replayed_first=True)
    assert _texts(of_type(resumed, "response.done")) == [_answer("tell me a long story please", 1),
                                                          _answer("go on", 2)]
    first_frame = resumed[:next(i for i, e in enumerate(resumed) if e.type == "response.done") + 1]
    deltas = "".join(e.delta for e in of_type(first_frame, "response.output_text.delta"))
    assert deltas == _answer("tell me a long story please", 1)
