"""A TCP proxy for tests that cut a worker off from Redis: in front of Redis, it
forwards both ways until told to ``cut``, then forwards nothing, in either
direction, without closing a socket, until told to ``restore``.

Bytes sent during a cut wait (in the proxy and in the kernel's buffers) and are
delivered once traffic is restored, as TCP retransmissions are once a partition
heals: a command sent into a cut reaches Redis late, its reply reaches the
client later still. A connection opened during a cut is accepted and waits.
Nothing here is closed by the proxy itself, except when the proxy is closed.
"""

from __future__ import annotations

import asyncio
import contextlib


class BlackholeProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> BlackholeProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def cut(self) -> None:
        """Stop forwarding, both ways; every socket stays open."""
        self._open.clear()

    def restore(self) -> None:
        """Forward again, starting with what waited."""
        self._open.set()

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    async def aclose(self) -> None:
        self._open.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            await self._open.wait()  # a connection made during a cut reaches Redis only after it
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            self._writers.add(upstream_writer)
            await asyncio.gather(self._pump(client_reader, upstream_writer), self._pump(upstream_reader, client_writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()
                    self._writers.discard(writer)
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction; during a cut, what was read waits here (and the rest in the
        kernel, once its buffers fill): nothing is dropped, nothing is closed."""
        try:
            while True:
                data = await reader.read(65536)
                await self._open.wait()
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        finally:
            # The other side closed: pass that on (after what it sent before, and after a cut).
            await self._open.wait()
            if writer.can_write_eof():
                with contextlib.suppress(OSError):
                    writer.write_eof()
