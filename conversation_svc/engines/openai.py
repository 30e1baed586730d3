"""OpenAI Realtime conversation engine (GA, ``?model=<model>``, text out).

One WebSocket (one upstream session) per conversation. ``open_session``
connects, sends ``session.update`` (type realtime, output_modalities text,
the conversation's instructions), waits for ``session.updated`` and replays
the history (the connection itself: :mod:`conversation_svc.engines.openai_link`).
``respond`` is the two-step flow: ``conversation.item.create`` (the user's
``input_text``) then ``response.create``.

Abandoned turns: when the caller stops reading mid-answer (it stopped
iterating, or its task was cancelled), a background task sends
``response.cancel`` upstream and reads on until that response's
``response.done`` (``cancelled``, or ``completed`` if the cancel raced the
end), within CANCEL_SETTLE_S (or the endpoint timeout if smaller). The next
turn waits for it and goes on the same session, with no replay; the upstream
conversation keeps the partial answer, and the engine's own history gets the
partial text the caller passes to ``remember`` (the engine keeps nothing of an
abandoned turn itself, so there is one entry). Past the bound, or if the
connection fails, the connection is dropped and the next turn reconnects and
replays. The cancelled task itself never waits for any of this.

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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import aclosing
from typing import Any

from conversation_svc.engines.openai_link import ConversationLink
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
    RealtimeConnection,
    RealtimeEndpoint,
    RealtimeError,
)
from shared.realtime.conversation_state import (
    CANCEL_NOT_ACTIVE,
    ConversationOutput,
    ConversationState,
    Done,
    Failed,
    Settled,
    TextOut,
)
from shared.realtime.server_events import ErrorEvent, ServerEvent, UnknownServerEvent
from shared.realtime.session_common import Send
from shared.settings import ConversationSettings, OpenAISettings
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Consecutive failed connection attempts before a turn gives up (retryable: the runtime may try again).
MAX_CONNECT_ATTEMPTS = 5

#: How long an abandoned turn's response may take to end after its cancel before
#: the connection is dropped instead (the next turn waits for this).
CANCEL_SETTLE_S = 2.0

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
        cancel_settle_s: float = CANCEL_SETTLE_S,
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.history_max_turns = history_max_turns
        #: The seam to the network; default: a real WebSocket.
        self.connector = connector
        self.delays = delays
        #: The bound of an abandoned turn's cancel (never more than the endpoint timeout).
        self.cancel_settle_s = min(cancel_settle_s, endpoint.timeout_s)

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
    time (a lock), so at most one response is ever active upstream; an
    abandoned turn's cancel (``_settling``) finishes before the next turn starts."""

    def __init__(self, engine: OpenAIConversation, conversation_id: str, instructions: str,
                 history: Sequence[Turn]) -> None:
        self.engine = engine
        self.conversation_id = conversation_id
        self.state = ConversationState(instructions, history, max_turns=engine.history_max_turns,
                                       max_output_tokens=engine.max_output_tokens)
        self._link = ConversationLink(engine.endpoint.timeout_s, conversation_id)
        self._turn_lock = asyncio.Lock()
        #: The cancel of an abandoned turn, under way: what holds the lock next waits for it.
        self._settling: asyncio.Task[None] | None = None
        self._extra = {"conversation_id": conversation_id, "engine": "openai"}

    # --- connection

    async def connect(self, after: RealtimeError | None = None) -> None:
        """(Re)open the upstream session: backoff between attempts (none after
        ``session_expired``), bounded; a refused key is fatal at once."""
        await self._link.drop()
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
        await self._link.open(conn, self.state.session_update(), self.state.replay())

    # --- ConversationSession

    def remember(self, turn: Turn) -> None:
        self.state.remember(turn)

    async def amend_last_answer(self, text: str) -> None:
        """The upstream session heard the whole answer: start a new one on the next
        turn, primed with the amended history (replay), so the model sees only ``text``."""
        async with self._turn_lock:
            if self.state.amend_last_answer(text):
                await cancel_and_wait(self._settling)  # the session goes anyway
                self._settling = None
                self.state.connection_lost()
                await self._link.drop()

    async def respond(self, user_text: str) -> AsyncIterator[ResponseEvent]:
        completed: Completed | None = None
        async with self._turn_lock:
            await self._await_settled()
            stitch = Stitcher()
            finished = False
            try:
                if not self._link.alive:
                    await self.connect(self._link.lost)
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
            except (GeneratorExit, asyncio.CancelledError):
                # Abandoned mid-turn (the caller stopped reading, or was cancelled): stop the
                # upstream response in the background; the caller must not wait for that.
                finished = True
                self._abandon_turn()
                raise
            finally:
                if not finished:
                    # Failed mid-turn: the upstream response may still be running, so start over next time.
                    self.state.connection_lost()
                    await self._link.drop()
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
                    await self._link.send(out.event)
                elif not isinstance(out, Settled):  # (an earlier, cancelled turn's end)
                    yield out
                    if isinstance(out, Done | Failed):
                        return
            pending = self._apply(await self._link.next_event())

    # --- an abandoned turn

    def _abandon_turn(self) -> None:
        """Start cancelling the abandoned turn's response upstream, if it has one
        (it was not lost with a connection); returns at once."""
        cancel = self.state.cancel_active()
        if cancel:
            self._settling = asyncio.create_task(self._settle(cancel),
                                                 name=f"realtime-conversation-cancel:{self.conversation_id}")

    async def _settle(self, cancel: list[ConversationOutput]) -> None:
        """Send the cancel and read on until the turn's response is over, so the
        session stays in sync for the next turn; past the bound, or if the
        connection fails, drop it (the next turn reconnects and replays)."""
        bound_s = self.engine.cancel_settle_s
        try:
            async with asyncio.timeout(bound_s):
                pending = cancel
                while True:
                    for out in pending:
                        if isinstance(out, Send):
                            await self._link.send(out.event)
                        elif isinstance(out, Settled):
                            log.info("abandoned answer stopped upstream (%s)", out.outcome, extra=self._extra)
                            return
                    pending = self._apply(await self._link.next_event())
        except (RealtimeError, TimeoutError) as exc:
            why = f"no end within {bound_s:g}s" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("cancelling an abandoned answer upstream failed (%s): dropping the connection; "
                        "the next turn replays the history", why, extra=self._extra)
            self.state.connection_lost()
            await self._link.drop()

    async def _await_settled(self) -> None:
        """Wait for an abandoned turn's cancel to finish. Only waits: if this
        task is cancelled meanwhile, the cancel runs on for whoever comes next."""
        task = self._settling
        if task is None:
            return
        await asyncio.wait([task])
        self._settling = None
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a network failure (those are handled inside): do not trust the session.
            log.error("cancelling an abandoned answer failed", exc_info=task.exception(), extra=self._extra)
            self.state.connection_lost()
            await self._link.drop()

    def _apply(self, event: ServerEvent) -> list[ConversationOutput]:
        if isinstance(event, UnknownServerEvent):
            if event.problem:
                log.info("ignoring a malformed %r event: %s", event.type, event.problem, extra=self._extra)
            return []
        if isinstance(event, ErrorEvent) and event.error.code == CANCEL_NOT_ACTIVE:
            # A cancel that raced the end of its response: expected, harmless.
            log.info("realtime: %s", event.error.message, extra=self._extra)
        elif isinstance(event, ErrorEvent) and event.error.code != "session_expired":
            log.warning("realtime error %s: %s", event.error.code, event.error.message, extra=self._extra)
        return self.state.on_event(event)

    async def close(self) -> None:
        await cancel_and_wait(self._settling)
        self._settling = None
        await self._link.drop()
