"""A gateway's stop (SIGTERM): every open socket is closed with code 1001 (going
away) within a bounded time, and its client told to resume elsewhere.

Per socket, in order:

1. the answer being streamed, if any, may finish (its entries keep arriving), up to
   the drain deadline: the client then has it whole, instead of getting it again
   from its ``response.created`` on the next gateway;
2. the socket stops taking pipeline entries: what comes later is read on resume,
   from the delivery marks;
3. everything queued is sent and its marks recorded (the next gateway reads on
   from them, so nothing already sent comes twice);
4. the close frame: 1001 with a reason naming ``?conversation_id=``.

Sockets are drained together, so the whole stop takes at most the drain deadline
plus the close handshakes (bounded by aiohttp's close timeout).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import WSCloseCode, web

from gateway_svc.session import RealtimeSession

log = logging.getLogger(__name__)

#: A close handshake's longest wait for the client's reply (aiohttp's ``timeout``).
CLOSE_TIMEOUT_S = 2.0


def goodbye(conversation_id: str) -> bytes:
    """The close reason: what the client should do (at most 123 bytes, the frame's limit)."""
    return f"gateway shutting down: reconnect with ?conversation_id={conversation_id}".encode()[:123]


@dataclass(slots=True)
class OpenSocket:
    conversation_id: str
    ws: web.WebSocketResponse
    session: RealtimeSession
    #: Stops the pipeline entries of this conversation reaching the session.
    stop_reading: Callable[[], None]
    #: The gateway closed it (drain, slow client, abuse): never a client's clean end, even
    #: though aiohttp reports 1000 for a close made while the receive loop was waiting.
    closed_by_gateway: bool = False

    async def close(self, code: int, message: bytes = b"") -> None:
        self.closed_by_gateway = True
        await self.ws.close(code=code, message=message)

    @property
    def ended_by_client(self) -> bool:
        """The client closed with 1000: the conversation is over (any other end leaves it resumable)."""
        return self.ws.close_code == WSCloseCode.OK and not self.closed_by_gateway


async def drain_socket(sock: OpenSocket, deadline: float) -> None:
    """Close one socket as described above; ``deadline`` is a ``time.monotonic()`` value."""
    extra = {"conversation_id": sock.conversation_id}
    try:
        await asyncio.wait_for(sock.session.view.no_live_answer.wait(), timeout=_left(deadline))
    except TimeoutError:
        log.warning("drain: an answer still streaming at the deadline; the client gets it whole on resume",
                    extra=extra)
    sock.stop_reading()
    try:
        await asyncio.wait_for(sock.session.outbox.flushed(), timeout=_left(deadline))
    except TimeoutError:
        log.warning("drain: events still queued at the deadline; the client gets them on resume", extra=extra)
    if not sock.ws.closed:
        await sock.close(WSCloseCode.GOING_AWAY, goodbye(sock.conversation_id))


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


async def drain_all(sockets: list[OpenSocket], drain_s: float) -> None:
    """Drain every socket at once, within ``drain_s`` (plus the close handshakes)."""
    deadline = time.monotonic() + drain_s
    results = await asyncio.gather(*(drain_socket(s, deadline) for s in sockets), return_exceptions=True)
    for sock, result in zip(sockets, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("drain: closing a socket failed: %r", result, extra={"conversation_id": sock.conversation_id})
