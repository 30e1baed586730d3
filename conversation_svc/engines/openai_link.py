"""The connection under one openai conversation session, above
:class:`~shared.realtime.connection.RealtimeConnection`: set it up
(``session.update``, wait for ``session.updated``, replay the history), read
its events into a queue on a task, send, take the next event within the
endpoint timeout, drop it.

Each open starts a fresh queue: nothing of an old session leaks into a new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from shared.realtime.client_events import ClientEvent, SessionUpdate
from shared.realtime.connection import RealtimeClosed, RealtimeConnection, RealtimeError
from shared.realtime.server_events import ErrorEvent, ServerEvent, SessionUpdated
from shared.tasks import cancel_and_wait


class ConversationLink:
    def __init__(self, timeout_s: float, name: str) -> None:
        #: The bound of every wait for the server (set-up, the next event).
        self.timeout_s = timeout_s
        self._name = name
        self._conn: RealtimeConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[ServerEvent | RealtimeError] = asyncio.Queue()
        #: Why the connection was lost (the reader's error), until the next open.
        self.lost: RealtimeError | None = None

    @property
    def alive(self) -> bool:
        return self._conn is not None and self.lost is None and self._reader is not None and not self._reader.done()

    async def open(self, conn: RealtimeConnection, setup: SessionUpdate, replay: Iterable[ClientEvent]) -> None:
        """Set ``conn`` up and make it the connection; it is closed if that fails.
        Call :meth:`drop` first when there is one already."""
        try:
            await conn.send(setup)
            await self._await_session_updated(conn, setup.event_id)
            for item in replay:
                await conn.send(item)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self.lost = None
        self._events = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(conn, self._events), name=f"realtime-conversation:{self._name}")

    async def _await_session_updated(self, conn: RealtimeConnection, update_id: str | None) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RealtimeClosed("no session.updated from the Realtime API in time", "reconnect",
                                     error_code="upstream_timeout")
            try:
                event = await asyncio.wait_for(conn.recv(), timeout=remaining)
            except TimeoutError:
                continue
            if isinstance(event, SessionUpdated):
                return
            if isinstance(event, ErrorEvent) and event.error.event_id == update_id:
                raise RealtimeError(f"the Realtime API refused the session set-up: {event.error.code}: "
                                    f"{event.error.message}", code=event.error.code or "invalid_session",
                                    retryable=False)

    async def _read(self, conn: RealtimeConnection, queue: asyncio.Queue[ServerEvent | RealtimeError]) -> None:
        try:
            while True:
                queue.put_nowait(await conn.recv())
        except RealtimeError as exc:
            self.lost = exc
            queue.put_nowait(exc)

    async def send(self, event: ClientEvent) -> None:
        if self._conn is None:
            raise RealtimeClosed("not connected", "reconnect")
        await self._conn.send(event)

    async def next_event(self) -> ServerEvent:
        """The next server event; RealtimeError when the connection is lost or
        stays silent for the timeout (then it is dropped)."""
        try:
            # Not wait_for: a cancel must reach the caller even when an event is ready, and
            # must leave that event queued (an abandoned turn's cancel reads on from there).
            async with asyncio.timeout(self.timeout_s):
                item = await self._events.get()
        except TimeoutError:
            await self.drop()
            raise RealtimeClosed(f"no event from the Realtime API for {self.timeout_s:.0f}s", "reconnect",
                                 error_code="upstream_timeout") from None
        if isinstance(item, RealtimeError):
            raise item
        return item

    async def drop(self) -> None:
        await cancel_and_wait(self._reader)
        self._reader = None
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
