"""The gateway benchmark's client: Realtime events over a raw ``websockets``
connection, with as little work per event as possible, so the client's own
overhead stays small and known (the openai SDK parses every event into a
pydantic model; this reads only each event's ``type``, and parses the JSON of
the few events whose fields it needs).

Every received event is stamped with ``time.perf_counter()`` as soon as the
socket hands it over, before anything else is done with it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

#: The one API key the benchmark's gateway accepts (its own, on its own Redis).
BENCH_KEY = "sk-bench-gateway-key-0000000000000000"
#: The gateway serialises ``type`` as an event's first field; events are read from this prefix.
_TYPE_PREFIX = '{"type":"'

#: ``handler(type, received perf_counter, raw text)`` for every event of a socket.
EventHandler = Callable[[str, float, str], None]


def event_type(text: str) -> str:
    """The ``type`` of a server event's JSON text ("" when it has none).

    Fast path: the text starts with ``{"type":"``, as the gateway writes it;
    anything else is parsed in full."""
    if text.startswith(_TYPE_PREFIX):
        end = text.find('"', len(_TYPE_PREFIX))
        if end > 0:
            return text[len(_TYPE_PREFIX):end]
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return ""
    found = value.get("type") if isinstance(value, dict) else None
    return found if isinstance(found, str) else ""


def ws_url(base_url: str) -> str:
    """``http://host:port`` -> ``ws://host:port/v1/realtime?model=local``."""
    return base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/v1/realtime?model=local"


async def open_socket(base_url: str, deflate: bool, key: str = BENCH_KEY) -> ClientConnection:
    """A connected socket, authenticated as the SDKs do (``Authorization: Bearer``).

    ``deflate``: offer permessage-deflate, as the openai SDK (websockets' default) and
    browsers do; the gateway then compresses every event it sends. No client pings:
    the gateway's own heartbeat keeps the socket alive."""
    return await connect(ws_url(base_url), additional_headers={"Authorization": f"Bearer {key}"},
                         compression="deflate" if deflate else None, ping_interval=None,
                         open_timeout=60, close_timeout=10, max_size=2**24)


async def send_event(ws: ClientConnection, type_: str, **fields: Any) -> None:
    await ws.send(json.dumps({"type": type_, **fields}, separators=(",", ":")))


async def receive_until(ws: ClientConnection, wanted: str, timeout_s: float = 60.0) -> str:
    """Read events (before a :func:`listen` task owns the socket) up to the first of type
    ``wanted``; return its text. An ``error`` event on the way raises RuntimeError."""
    async with asyncio.timeout(timeout_s):
        while True:
            text = await ws.recv()
            if not isinstance(text, str):
                continue
            kind = event_type(text)
            if kind == wanted:
                return text
            if kind == "error":
                raise RuntimeError(f"the gateway answered with an error: {text[:500]}")


async def listen(ws: ClientConnection, handler: EventHandler) -> None:
    """Hand every text event to ``handler`` until the socket closes."""
    try:
        async for message in ws:
            received = time.perf_counter()
            if isinstance(message, str):
                handler(event_type(message), received, message)
    except ConnectionClosed:
        return


async def sleep_until(deadline_perf: float) -> None:
    delay = deadline_perf - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
