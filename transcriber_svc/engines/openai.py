"""OpenAI Realtime transcription engine (GA, ``?intent=transcription``).

One WebSocket per conversation, opened on the conversation's first audio
(a conversation that only types never connects). ``utterance.text`` entries
are their own transcripts, exactly as with the simulated engine, but they
keep their place in the order behind earlier spoken utterances.

Contract with the worker (see ``transcriber_svc.worker``): ``feed`` returns
once the entry is handed upstream; the transcript arrives later on the reader
task, which calls ``sink.final`` in commit order with every input entry id of
the utterance (the worker acks them with the transcript). An utterance keeps
its audio until its final, so after a reconnect (transient close, expired
session) its audio is re-sent and committed again on the new session. That
buffer is capped: an utterance over ``MAX_UTTERANCE_MS`` (two minutes) of audio
is refused, its entries dead-lettered with the reason (``sink.dead``).

Settings (``shared.settings.OpenAISettings``): OPENAI_API_KEY (required),
OPENAI_TRANSCRIBE_MODEL, OPENAI_TURN_DETECTION (client | server_vad),
OPENAI_TRANSCRIBE_LANGUAGE (optional, e.g. ``en``), OPENAI_REALTIME_URL,
OPENAI_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

from shared import metrics
from shared.backoff import backoff
from shared.engines.base import (
    EngineError,
    InputEntry,
    TranscriptionEngine,
    TranscriptionSession,
    TranscriptSink,
)
from shared.models import AudioChunk, AudioEnd, UtteranceText, now_ms
from shared.realtime.client_events import SessionUpdate
from shared.realtime.connection import RealtimeAuthError, RealtimeConnection, RealtimeEndpoint, RealtimeError
from shared.realtime.server_events import ErrorEvent, SessionUpdated, UnknownServerEvent
from shared.realtime.session_common import Send
from shared.realtime.session_config import (
    MAX_UTTERANCE_BYTES,
    AudioConfig,
    AudioInput,
    ServerVad,
    TranscriptionConfig,
    TranscriptionSessionConfig,
)
from shared.realtime.transcription_actions import Delta, Final, Reject, Skip, TranscriptionAction, TurnDetection
from shared.realtime.transcription_state import TranscriptionState
from shared.settings import OpenAISettings
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Consecutive failed connection attempts before the reader gives up (the next entry tries again).
MAX_CONNECT_ATTEMPTS = 6

Connector = Callable[[RealtimeEndpoint], Coroutine[Any, Any, RealtimeConnection]]


class OpenAITranscription(TranscriptionEngine):
    name = "openai"

    def __init__(
        self,
        endpoint: RealtimeEndpoint,
        model: str = "gpt-4o-transcribe",
        turn_detection: TurnDetection = "client",
        language: str | None = None,
        connector: Connector | None = None,
        delays: Callable[[], Iterator[float]] = backoff,
        max_utterance_bytes: int = MAX_UTTERANCE_BYTES,
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.turn_detection: TurnDetection = turn_detection
        self.language = language
        #: The seam to the network (tests may inject one); default: a real WebSocket.
        self.connector: Connector = connector or (
            lambda ep: RealtimeConnection.open(ep, intent="transcription")
        )
        self.delays = delays
        #: Most PCM bytes of one utterance (MAX_UTTERANCE_MS); tests may lower it.
        self.max_utterance_bytes = max_utterance_bytes

    @classmethod
    def from_settings(cls, settings: OpenAISettings) -> OpenAITranscription:
        """EngineUnavailable when OPENAI_API_KEY is unset."""
        return cls(RealtimeEndpoint.from_settings(settings), model=settings.transcribe_model,
                   turn_detection=settings.turn_detection, language=settings.transcribe_language)

    def session_update(self) -> SessionUpdate:
        vad = ServerVad() if self.turn_detection == "server_vad" else None
        audio_input = AudioInput(transcription=TranscriptionConfig(model=self.model, language=self.language),
                                 turn_detection=vad)
        return SessionUpdate(event_id="evt_session_setup",
                             session=TranscriptionSessionConfig(audio=AudioConfig(input=audio_input)))

    async def open_session(self, conversation_id: str, sink: TranscriptSink) -> TranscriptionSession:
        return _Session(self, conversation_id, sink)


class _Session(TranscriptionSession):
    """One conversation's transcription session.

    Concurrency: ``feed``/``flush`` run on the worker's session task, the
    reader on its own task. State changes that send are made under
    ``_lock`` together with their sends, and a new connection is published
    under the same lock together with ``state.on_reconnect()``'s re-sends, so
    every change is either sent on the live connection or re-sent on the next.
    """

    def __init__(self, engine: OpenAITranscription, conversation_id: str, sink: TranscriptSink) -> None:
        self.engine = engine
        self.conversation_id = conversation_id
        self.sink = sink
        self.state = TranscriptionState(engine.turn_detection, max_utterance_bytes=engine.max_utterance_bytes)
        self._lock = asyncio.Lock()
        self._conn: RealtimeConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()
        self._fatal: EngineError | None = None
        self._closed = False
        self._extra = {"conversation_id": conversation_id, "engine": "openai"}

    # --- TranscriptionSession

    async def feed(self, entry_id: str, entry: InputEntry) -> None:
        if self._fatal is not None:
            raise EngineError(str(self._fatal), code=self._fatal.code, retryable=False)
        async with self._lock:
            if isinstance(entry, UtteranceText):
                actions = self.state.text(entry_id, entry.utterance_id, entry.text, entry.sent_ms)
            elif isinstance(entry, AudioChunk):
                pcm_bytes = len(entry.audio) * 3 // 4 - entry.audio[-2:].count("=") if entry.audio else 0
                actions = self.state.chunk(entry_id, entry.utterance_id, entry.audio, pcm_bytes)
            else:
                assert isinstance(entry, AudioEnd)
                actions = self.state.end(entry_id, entry.utterance_id, entry.sent_ms)
            if any(isinstance(a, Send) for a in actions):
                self._ensure_reader()
            await self._perform(actions)

    async def flush(self) -> None:
        """Commit (or skip) the open utterance, then wait up to the timeout for
        every outstanding transcript; what is still missing is skipped."""
        async with self._lock:
            actions = self.state.flush(now_ms())
            if any(isinstance(a, Send) for a in actions):
                self._ensure_reader()
            await self._perform(actions)
        await self.settle()
        if self.state.outstanding:
            n = self.state.outstanding
            log.warning("%d utterances got no transcript within %.0fs; skipping them", n,
                        self.engine.endpoint.timeout_s, extra=self._extra)
            async with self._lock:
                await self._perform(self.state.abandon("no transcript before the conversation ended"))

    async def settle(self) -> None:
        """Wait up to the timeout for every outstanding transcript (they arrive on
        the reader task); what is still missing then stays outstanding."""
        deadline = time.monotonic() + self.engine.endpoint.timeout_s
        while self.state.outstanding and self._fatal is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._ensure_reader()
            self._progress.clear()
            if not self.state.outstanding:
                break
            try:
                await asyncio.wait_for(self._progress.wait(), timeout=min(remaining, 1.0))
            except TimeoutError:
                continue

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(self._reader)
        self._reader = None
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    # --- actions

    async def _perform(self, actions: Sequence[TranscriptionAction]) -> None:
        for action in actions:
            if isinstance(action, Send):
                conn = self._conn
                if conn is None:
                    continue  # not connected: state.on_reconnect() re-sends it
                try:
                    await conn.send(action.event)
                except RealtimeError:
                    # The reader sees the close and reconnects; the state re-sends from there.
                    self._conn = None
            elif isinstance(action, Delta):
                self.sink.delta(action.utterance_id, action.text)
            elif isinstance(action, Final):
                self.sink.final(action.utterance_id, action.text, action.sent_ms, action.entry_ids)
                self._progress.set()
            elif isinstance(action, Skip):
                if action.failed:
                    log.warning("utterance %s not transcribed: %s", action.utterance_id, action.reason,
                                extra={**self._extra, "utterance_id": action.utterance_id})
                self.sink.skip(action.entry_ids, action.reason, action.utterance_id)
                self._progress.set()
            elif isinstance(action, Reject):
                if action.first:
                    log.warning("utterance %s refused: %s; its entries go to the dead-letter stream",
                                action.utterance_id, action.reason,
                                extra={**self._extra, "utterance_id": action.utterance_id})
                self.sink.dead(action.entry_ids, action.reason, action.utterance_id)

    # --- the connection

    def _ensure_reader(self) -> None:
        if self._closed or self._fatal is not None:
            return
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._run(), name=f"realtime-transcription:{self.conversation_id}")

    async def _connect(self) -> RealtimeConnection:
        """Open a socket and configure the session; a refused configuration is fatal."""
        conn = await self.engine.connector(self.engine.endpoint)
        try:
            update = self.engine.session_update()
            await conn.send(update)
            deadline = time.monotonic() + self.engine.endpoint.timeout_s
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RealtimeError("no session.updated from the Realtime API", code="upstream_timeout",
                                        retryable=True)
                try:
                    event = await asyncio.wait_for(conn.recv(), timeout=remaining)
                except TimeoutError:
                    continue
                if isinstance(event, SessionUpdated):
                    return conn
                if isinstance(event, ErrorEvent) and event.error.event_id == update.event_id:
                    raise RealtimeError(
                        f"the Realtime API refused the transcription session set-up: "
                        f"{event.error.code}: {event.error.message}", code=event.error.code or "invalid_session",
                        retryable=False)
        except BaseException:
            await conn.close()
            raise

    async def _run(self) -> None:
        delays = self.engine.delays()
        attempts = 0
        while not self._closed:
            try:
                conn = await self._connect()
            except RealtimeError as exc:
                attempts += 1
                if not exc.retryable:
                    await self._fail(exc)
                    return
                if attempts >= MAX_CONNECT_ATTEMPTS:
                    log.error("cannot reach the Realtime API after %d attempts: %s", attempts, exc, extra=self._extra)
                    return  # the next feed or flush starts a new reader
                await asyncio.sleep(next(delays))
                continue
            attempts = 0
            delays = self.engine.delays()  # a good connection resets the backoff
            async with self._lock:
                self._conn = conn
                await self._perform(self.state.on_reconnect())
            try:
                await self._read(conn)
            except RealtimeError as exc:
                if self._conn is conn:
                    self._conn = None
                decision = getattr(exc, "decision", "reconnect")
                if isinstance(exc, RealtimeAuthError) or not exc.retryable:
                    await self._fail(exc)
                    return
                log.warning("realtime transcription connection lost (%s): %s", decision, exc, extra=self._extra)
                metrics.UPSTREAM_RECONNECTS.labels("openai").inc()
                if decision != "new_session":
                    await asyncio.sleep(next(delays))
            finally:
                await conn.close()

    async def _read(self, conn: RealtimeConnection) -> None:
        while True:
            event = await conn.recv()
            if isinstance(event, UnknownServerEvent):
                if event.problem:
                    log.info("ignoring a malformed %r event: %s", event.type, event.problem, extra=self._extra)
                continue
            if isinstance(event, ErrorEvent) and event.error.code != "session_expired":
                log.warning("realtime error %s: %s", event.error.code, event.error.message, extra=self._extra)
            actions = self.state.on_event(event, now_ms())
            if actions:
                await self._perform(actions)

    async def _fail(self, exc: RealtimeError) -> None:
        """Give up for good (bad key, refused configuration): skip what is
        buffered with the reason, and refuse further entries."""
        self._fatal = exc
        log.error("openai transcription unavailable: %s", exc, extra=self._extra)
        async with self._lock:
            await self._perform(self.state.abandon(f"transcription unavailable: {exc}"))
        self._progress.set()
