"""OpenAI Realtime conversation engine (GA, ``?model=<model>``, text out).

One WebSocket (one upstream session) per conversation. ``open_session``
connects, sends ``session.update`` (type realtime, output_modalities text,
the conversation's instructions), waits for ``session.updated`` and replays
the history. ``respond`` is the two-step flow: ``conversation.item.create``
(the user's ``input_text``) then ``response.create``.

Failures:

- ``response.done`` with status failed / cancelled / incomplete (rate limits
  and quota arrive this way) raises ``EngineError(code, ..., retryable=False)``:
  the worker writes ``response.failed``; nothing retries it in a loop.
- A refused key (HTTP 401, or a 3000 close) raises
  ``EngineError(code="invalid_api_key", retryable=False)`` after one clear log line.
- ``session_expired`` or a transient close: reconnect (backoff, bounded),
  open a new session and replay the history (the turns given to
  ``open_session`` plus every turn since, capped at HISTORY_MAX_TURNS). A
  drop in the middle of a response retries that turn once on the new session.

Retried turn and deltas already streamed: a restarted turn must not repeat
text (:class:`conversation_svc.engines.stitcher.Stitcher`).

Settings (``shared.settings.OpenAISettings``): OPENAI_API_KEY (required),
OPENAI_REALTIME_MODEL, OPENAI_MAX_OUTPUT_TOKENS, OPENAI_REALTIME_URL,
OPENAI_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import aclosing
from typing import Any

from conversation_svc.engines.stitcher import Stitcher
from shared import metrics
from shared.backoff import backoff
from shared.engines.base import (
    Completed,
    ConversationEngine,
    ConversationSession,
    EngineError,
    ResponseEvent,
    TextDelta,
)
from shared.history import Turn
from shared.realtime.connection import (
    RealtimeAuthError,
    RealtimeClosed,
    RealtimeConnection,
    RealtimeEndpoint,
    RealtimeError,
)
from shared.realtime.conversation_state import ConversationOutput, ConversationState, Done, Failed, TextOut
from shared.realtime.server_events import ErrorEvent, ServerEvent, SessionUpdated, UnknownServerEvent
from shared.realtime.session_common import Send
from shared.settings import ConversationSettings, OpenAISettings
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Consecutive failed connection attempts before a turn gives up (retryable: the runtime may try again).
MAX_CONNECT_ATTEMPTS = 5

Connector = Callable[[RealtimeEndpoint, str], Coroutine[Any, Any, RealtimeConnection]]


def _default_connector(endpoint: RealtimeEndpoint, model: str) -> Coroutine[Any, Any, RealtimeConnection]:
    return RealtimeConnection.open(endpoint, model=model)


class OpenAIConversation(ConversationEngine):
    name = "openai"

    def __init__(
        self,
        endpoint: RealtimeEndpoint,
        model: str = "gpt-realtime",
        max_output_tokens: int | None = 256,
        history_max_turns: int = 20,
        connector: Connector = _default_connector,
        delays: Callable[[], Iterator[float]] = backoff,
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.history_max_turns = history_max_turns
        #: The seam to the network; default: a real WebSocket.
        self.connector = connector
        self.delays = delays

    @classmethod
    def from_settings(cls, settings: ConversationSettings, openai: OpenAISettings) -> OpenAIConversation:
        """EngineUnavailable when OPENAI_API_KEY is unset."""
        return cls(RealtimeEndpoint.from_settings(openai), model=openai.realtime_model,
                   max_output_tokens=openai.max_output_tokens, history_max_turns=settings.history_max_turns)

    async def open_session(
        self, conversation_id: str, instructions: str, history: Sequence[Turn]
    ) -> ConversationSession:
        session = _Session(self, conversation_id, instructions, history)
        await session.connect()
        return session


class _Session(ConversationSession):
    """One conversation's upstream session. ``respond`` calls run one at a
    time (a lock), so at most one response is ever active upstream."""

    def __init__(self, engine: OpenAIConversation, conversation_id: str, instructions: str,
                 history: Sequence[Turn]) -> None:
        self.engine = engine
        self.conversation_id = conversation_id
        self.state = ConversationState(instructions, history, max_turns=engine.history_max_turns,
                                       max_output_tokens=engine.max_output_tokens)
        self._conn: RealtimeConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[ServerEvent | RealtimeError] = asyncio.Queue()
        self._lost: RealtimeError | None = None
        self._turn_lock = asyncio.Lock()
        self._extra = {"conversation_id": conversation_id, "engine": "openai"}

    # --- connection

    async def connect(self, after: RealtimeError | None = None) -> None:
        """(Re)open the upstream session: backoff between attempts (none after
        ``session_expired``), bounded; a refused key is fatal at once."""
        await self._drop_connection()
        delays = self.engine.delays()
        attempts = 0
        if after is not None and getattr(after, "decision", None) != "new_session":
            await asyncio.sleep(next(delays))
        while True:
            try:
                await self._open()
                return
            except RealtimeAuthError as exc:
                log.error("openai conversation engine: %s", exc, extra=self._extra)
                raise
            except RealtimeError as exc:
                attempts += 1
                if not exc.retryable:
                    log.error("openai conversation engine: %s", exc, extra=self._extra)
                    raise
                if attempts >= MAX_CONNECT_ATTEMPTS:
                    raise EngineError(f"cannot open a Realtime session after {attempts} attempts: {exc}",
                                      code=exc.code, retryable=True) from None
                log.warning("opening a Realtime session failed (%s); retrying", exc, extra=self._extra)
                metrics.UPSTREAM_RECONNECTS.labels("openai").inc()
                await asyncio.sleep(next(delays))

    async def _open(self) -> None:
        conn = await self.engine.connector(self.engine.endpoint, self.engine.model)
        try:
            update = self.state.session_update()
            await conn.send(update)
            await self._await_session_updated(conn, update.event_id)
            for item in self.state.replay():
                await conn.send(item)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._lost = None
        # A fresh queue: nothing of the old session may leak into the new one.
        self._events = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(conn, self._events),
                                           name=f"realtime-conversation:{self.conversation_id}")

    async def _await_session_updated(self, conn: RealtimeConnection, update_id: str | None) -> None:
        deadline = time.monotonic() + self.engine.endpoint.timeout_s
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
            self._lost = exc
            queue.put_nowait(exc)

    async def _drop_connection(self) -> None:
        await cancel_and_wait(self._reader)
        self._reader = None
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _alive(self) -> bool:
        return self._conn is not None and self._lost is None and self._reader is not None and not self._reader.done()

    # --- ConversationSession

    def remember(self, turn: Turn) -> None:
        self.state.remember(turn)

    async def amend_last_answer(self, text: str) -> None:
        """The upstream session heard the whole answer: start a new one on the next
        turn, primed with the amended history (replay), so the model sees only ``text``."""
        async with self._turn_lock:
            if self.state.amend_last_answer(text):
                self.state.connection_lost()
                await self._drop_connection()

    async def respond(self, user_text: str) -> AsyncIterator[ResponseEvent]:
        completed: Completed | None = None
        async with self._turn_lock:
            stitch = Stitcher()
            finished = False
            try:
                if not self._alive():
                    await self.connect(self._lost)
                outputs = self.state.submit(user_text)
                for attempt in (1, 2):
                    try:
                        async with aclosing(self._run_turn(outputs)) as turn_outputs:
                            async for out in turn_outputs:
                                if isinstance(out, TextOut):
                                    piece = stitch.piece(out.text)
                                    if piece:
                                        yield TextDelta(piece)
                                elif isinstance(out, Done):
                                    completed = Completed(out.usage)
                                else:
                                    finished = True
                                    raise self._response_failed(out)
                        break
                    except RealtimeError as exc:
                        turn = self.state.connection_lost()
                        self._may_retry(exc, attempt)
                        await self.connect(exc)
                        outputs = self.state.resume(turn) if turn else self.state.submit(user_text)
                        stitch.restart()
                finished = True
            finally:
                if not finished:
                    # Abandoned mid-turn (cancelled, or the caller stopped reading): the
                    # upstream response may still be running, so start over next time.
                    self.state.connection_lost()
                    await self._drop_connection()
        # Yielded outside the lock: a caller that stops at Completed must not keep it held.
        if completed is not None:
            yield completed

    def _response_failed(self, failed: Failed) -> EngineError:
        """A failed response is reported, never retried here (rate limits would loop)."""
        log.warning("response failed: %s: %s", failed.code, failed.message, extra=self._extra)
        return EngineError(f"the Realtime API failed the response: {failed.code}: {failed.message}",
                           code=failed.code, retryable=False)

    def _may_retry(self, exc: RealtimeError, attempt: int) -> None:
        """Raise unless a turn interrupted by ``exc`` may be retried on a new session."""
        if isinstance(exc, RealtimeAuthError) or not exc.retryable:
            log.error("openai conversation engine: %s", exc, extra=self._extra)
            raise exc
        if attempt > 1:
            raise EngineError(f"the Realtime connection failed twice during one turn: {exc}",
                              code=exc.code, retryable=True) from None
        log.warning("realtime connection lost mid-turn (%s): reconnecting, replaying history, "
                    "retrying the turn once", exc, extra=self._extra)
        metrics.UPSTREAM_RECONNECTS.labels("openai").inc()

    async def _run_turn(self, outputs: list[ConversationOutput]) -> AsyncGenerator[TextOut | Done | Failed]:
        """Send the turn's events and yield its outputs until Done / Failed.
        Raises RealtimeError when the connection drops or goes silent."""
        pending = list(outputs)
        while True:
            for out in pending:
                if isinstance(out, Send):
                    if self._conn is None:
                        raise RealtimeClosed("not connected", "reconnect")
                    await self._conn.send(out.event)
                else:
                    yield out
                    if isinstance(out, Done | Failed):
                        return
            pending = self._apply(await self._next_event())

    async def _next_event(self) -> ServerEvent:
        timeout_s = self.engine.endpoint.timeout_s
        try:
            item = await asyncio.wait_for(self._events.get(), timeout=timeout_s)
        except TimeoutError:
            await self._drop_connection()
            raise RealtimeClosed(f"no event from the Realtime API for {timeout_s:.0f}s", "reconnect",
                                 error_code="upstream_timeout") from None
        if isinstance(item, RealtimeError):
            raise item
        return item

    def _apply(self, event: ServerEvent) -> list[ConversationOutput]:
        if isinstance(event, UnknownServerEvent):
            if event.problem:
                log.info("ignoring a malformed %r event: %s", event.type, event.problem, extra=self._extra)
            return []
        if isinstance(event, ErrorEvent) and event.error.code != "session_expired":
            log.warning("realtime error %s: %s", event.error.code, event.error.message, extra=self._extra)
        return self.state.on_event(event)

    async def close(self) -> None:
        await self._drop_connection()
