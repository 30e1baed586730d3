"""One small HTTP port per process: ``/metrics``, ``/healthz``, ``/readyz``.

prometheus-client's own ``start_http_server`` answers every path with
metrics and cannot say "not ready", so this is a minimal asyncio server:
GET only, one request per connection, bounded request size.

- ``/healthz``: 200 while the event loop answers (also while Redis is away).
- ``/readyz``: 200 only when ``ready()`` returns no reason; else 503 and the reason.
- ``/metrics``: the Prometheus text exposition of the process registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192


class HealthServer:
    def __init__(self, registry: CollectorRegistry, not_ready_reason: Callable[[], str | None]) -> None:
        self.registry = registry
        self.not_ready_reason = not_ready_reason
        self.server: asyncio.Server | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int | None:
        """Bind and serve; return the port, or None (logged) when it cannot bind."""
        try:
            self.server = await asyncio.start_server(self._serve, host, port)
        except OSError as exc:
            log.error("metrics/health port %s:%s cannot be bound (%s); running without it", host, port, exc)
            return None
        self.port = int(self.server.sockets[0].getsockname()[1])
        log.info("metrics and health on http://%s:%d/ (/metrics /healthz /readyz)", host, self.port)
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            if len(head) > MAX_REQUEST_BYTES:
                await self._reply(writer, 431, b"request too large\n")
                return
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
                await self._reply(writer, 405, b"only GET\n")
                return
            path = parts[1].split(b"?", 1)[0]
            if path == b"/metrics":
                await self._reply(writer, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
            elif path == b"/healthz":
                await self._reply(writer, 200, b"ok\n")
            elif path == b"/readyz":
                reason = self.not_ready_reason()
                if reason is None:
                    await self._reply(writer, 200, b"ready\n")
                else:
                    await self._reply(writer, 503, f"not ready: {reason}\n".encode())
            else:
                await self._reply(writer, 404, b"not found\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large", 503: "Unavailable"}
        writer.write(
            f"HTTP/1.1 {status} {reason.get(status, '')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        await writer.drain()
