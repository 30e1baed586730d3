"""The conversation side of the pipeline: transcripts stream -> conversation
session -> responses stream.

Per final transcript: ``response.started``, the deltas as they stream, then
``response.done`` written together with the ack of the transcript (one gated
op); an engine that has the whole answer at once (``answer_now``) gives just
the done. The done entry carries the full text, so started and deltas that are
still queued when it is written are dropped: an answer produced faster than a
flush is one entry; a streamed one keeps the deltas that went out meanwhile.
A replayed transcript whose answer is already on the responses stream is acked
without a second answer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from pydantic import BaseModel

from conversation_svc.rebuild import rebuild_history, rebuild_unanswered
from conversation_svc.stats import StatsBuffer
from shared import keys as keynames
from shared import metrics
from shared.bus.program import QueuedOp
from shared.engines.base import Completed, ConversationEngine, ConversationSession, EngineError
from shared.history import MAX_UNANSWERED, History, Turn
from shared.keys import Keys
from shared.logs import scrub
from shared.models import (
    MAX_TEXT_CHARS,
    ConversationEnded,
    Entry,
    ResponseCancel,
    ResponseFailed,
    ResponseRequest,
    ResponseTruncate,
    TranscriptDelta,
    TranscriptFailed,
    TranscriptFinal,
    encode,
    encode_response_delta,
    encode_response_done,
    encode_response_started,
    now_ms,
)
from shared.service import SessionContext
from shared.settings import ConversationSettings

log = logging.getLogger(__name__)


_RESPONSE_ID_PREFIX = f"r{uuid.uuid4().hex[:8]}"
_response_ids = itertools.count()


def next_response_id() -> str:
    """Unique across processes (a random per-process prefix) without a uuid per answer."""
    return f"{_RESPONSE_ID_PREFIX}{next(_response_ids):x}"


class ConversationWorkerSession:
    def __init__(
        self,
        ctx: SessionContext,
        settings: ConversationSettings,
        engine_session: ConversationSession,
        history: History,
        engine_name: str,
        stats: StatsBuffer,
        unanswered: list[tuple[str, str]] | None = None,
        cancels: set[str] | None = None,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        self.ctx = ctx
        self._on_close = on_close
        #: Targets of cancels read but not yet handled in order (see ConversationService.on_queued).
        self.cancels: set[str] = cancels if cancels is not None else set()
        #: The answer under way: its utterance id and task (a cancel stops the task).
        self._answering: tuple[str, asyncio.Task[Any]] | None = None
        #: Text streamed so far by the answer under way (what a cancelled done carries).
        self._streamed_parts: list[str] = []
        #: (utterance id, text) of user turns that wait for a ``response.request``:
        #: the next answer hears them all (oldest first, at most MAX_UNANSWERED).
        self.unanswered: dict[str, str] = dict(unanswered or ())
        self.settings = settings
        self.engine_session = engine_session
        self.history = history
        self.responses_key = ctx.keys.responses(ctx.conversation_id)
        self.stats_key = ctx.keys.stats(ctx.keys.partition_of_key(self.responses_key))
        self.stats = stats
        self.engine_name = engine_name
        self._m_engine = metrics.ENGINE_TIME.labels(engine_name, "answer")
        self._m_first = metrics.LLM_FIRST_TOKEN.labels(engine_name)
        self._m_rate = metrics.LLM_TOKENS_PER_S.labels(engine_name)

    async def handle(self, entry_id: str | None, entry: Entry) -> bool:
        writer = self.ctx.writer
        if isinstance(entry, ConversationEnded):
            if entry_id is not None:
                writer.ack(self.ctx.data_key, self.ctx.group, [entry_id])
            return True
        if isinstance(entry, TranscriptDelta | TranscriptFailed):
            # Partial transcripts are for clients; the answer waits for the final (a turn
            # that gave no transcript gets none).
            if entry_id is not None:
                writer.ack(self.ctx.data_key, self.ctx.group, [entry_id])
            return False
        if isinstance(entry, ResponseCancel):
            # Its target came first (relayed in order) and was stopped, skipped or already done.
            self.cancels.discard(entry.target_id)
            if entry_id is not None:
                writer.ack(self.ctx.data_key, self.ctx.group, [entry_id])
            return False
        if isinstance(entry, ResponseTruncate):
            amended = self.history.amend(entry.target_id, entry.text)
            if amended and self.history.turns[-1].utterance_id == entry.target_id:
                await self.engine_session.amend_last_answer(entry.text)
            if entry_id is not None:
                writer.ack(self.ctx.data_key, self.ctx.group, [entry_id])
            return False
        if isinstance(entry, ResponseRequest):
            assert entry_id is not None
            if self.history.is_answered(entry.request_id):
                writer.ack(self.ctx.data_key, self.ctx.group, [entry_id])
                return False
            await self._answer(entry_id, TranscriptFinal(
                conversation_id=entry.conversation_id, utterance_id=entry.request_id, text="",
                sent_ms=entry.sent_ms, final_ms=now_ms()))
            return False
        assert isinstance(entry, TranscriptFinal) and entry_id is not None
        if self.history.is_answered(entry.utterance_id):
            writer.ack(self.ctx.data_key, self.ctx.group, [entry_id])
            return False
        if not entry.respond:  # a turn that waits for a response.request
            self.unanswered[entry.utterance_id] = entry.text
            if len(self.unanswered) > MAX_UNANSWERED:
                del self.unanswered[next(iter(self.unanswered))]
            writer.ack(self.ctx.data_key, self.ctx.group, [entry_id])
            return False
        await self._answer(entry_id, entry)
        return False

    def cancel(self, target_id: str) -> None:
        """A cancel was read: stop that answer if it is under way (else it is skipped
        when its turn comes, or was already done)."""
        self.cancels.add(target_id)
        if self._answering is not None and self._answering[0] == target_id:
            self._answering[1].cancel()

    def _take_prompt(self, final: TranscriptFinal) -> tuple[TranscriptFinal, str | None]:
        """The user text to answer: the waiting turns, then this one's. The second
        value is that text when it is not the final's own (the done records it)."""
        if not self.unanswered:
            return final, None
        texts = [*self.unanswered.values(), final.text] if final.text else list(self.unanswered.values())
        self.unanswered.clear()
        prompt = "\n".join(texts)[-MAX_TEXT_CHARS:]
        return final.model_copy(update={"text": prompt}), prompt

    async def _answer(self, entry_id: str, final: TranscriptFinal) -> None:
        ctx = self.ctx
        final, prompt = self._take_prompt(final)
        if prompt is None and not final.text:
            prompt = ""  # a request with nothing new to answer: the done says so
        cid, uid = ctx.conversation_id, final.utterance_id
        response_id = next_response_id()
        maxlen = self.settings.responses_maxlen
        writer = ctx.writer
        #: Started and delta entries queued so far: the done supersedes those not yet sent.
        streamed: list[QueuedOp] = []
        asked_s = time.perf_counter()
        if uid in self.cancels:  # cancelled before it started: a cancelled done, no engine run
            self._write_done(entry_id, final, response_id, "", {}, None, prompt, streamed, cancelled=True)
            return
        try:
            answer = self.engine_session.answer_now(final.text)
            if answer is None:
                streaming = asyncio.ensure_future(self._stream(final, response_id, streamed))
                self._answering = (uid, streaming)
                try:
                    text, usage, first_delta_ms, first_delta_s, deltas = await streaming
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if uid not in self.cancels or (current is not None and current.cancelling()):
                        raise  # the worker is stopping: not a cancel of this answer
                    partial = "".join(self._streamed_parts)
                    log.info("answer cancelled after %d characters", len(partial),
                             extra={"conversation_id": cid, "utterance_id": uid})
                    self.engine_session.remember(Turn(uid, final.text, partial))
                    self._write_done(entry_id, final, response_id, partial, {}, None, prompt, streamed,
                                     cancelled=True)
                    return
                finally:
                    self._answering = None
            else:  # whole at once: the done is the first (and only) text
                text, usage, first_delta_ms, first_delta_s, deltas = answer.text, answer.usage, None, 0.0, 1
        except EngineError as exc:
            if exc.retryable:
                raise
            log.warning("response failed: %s", exc, extra={"conversation_id": cid, "utterance_id": uid})
            metrics.UPSTREAM_ERRORS.labels(self.engine_name, exc.code).inc()
            failed = ResponseFailed(conversation_id=cid, utterance_id=uid, response_id=response_id,
                                    code=exc.code, reason=scrub(str(exc))[:2000])
            writer.gate(ctx.data_key, ctx.group, entry_id, self.responses_key, encode(failed), maxlen,
                        supersedes=streamed)
            self.history.mark_answered(uid)
            return
        done_ms = now_ms()
        if first_delta_ms is None and text:
            first_delta_ms, first_delta_s = done_ms, time.perf_counter()
        self._write_done(entry_id, final, response_id, text, usage, first_delta_ms, prompt, streamed)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("answered in %d deltas", deltas, extra={"conversation_id": cid, "utterance_id": uid})
        self._observe(final, first_delta_ms, done_ms, asked_s, first_delta_s, deltas)
        self.stats.add(writer.batch, self.stats_key, {  # many conversations' records: not fenced
            "c": cid, "w": ctx.worker_id, "sent": final.sent_ms, "tf": final.final_ms,
            "fd": first_delta_ms, "done": done_ms,
        })

    def _write_done(self, entry_id: str, final: TranscriptFinal, response_id: str, text: str,
                    usage: dict[str, int], first_delta_ms: int | None, prompt: str | None,
                    streamed: list[QueuedOp], cancelled: bool = False) -> None:
        """The answer's one ``response.done``, gated with the ack of what it answers;
        the turn joins the history (a cancelled one with the text produced by then)."""
        ctx, uid = self.ctx, final.utterance_id
        done = encode_response_done(ctx.conversation_id, uid, response_id, text, usage, final.sent_ms,
                                    final.final_ms, first_delta_ms, now_ms(), prompt, cancelled)
        ctx.writer.gate(ctx.data_key, ctx.group, entry_id, self.responses_key, done, self.settings.responses_maxlen,
                        supersedes=streamed)
        self.history.add(Turn(uid, final.text, text))

    async def _stream(
        self, final: TranscriptFinal, response_id: str, streamed: list[QueuedOp]
    ) -> tuple[str, dict[str, int], int | None, float, int]:
        """Write ``response.started`` and each delta as the engine streams them
        (appending the queued ops to ``streamed``); return (text, usage, first
        delta ms, its perf_counter time, deltas)."""
        cid, uid = self.ctx.conversation_id, final.utterance_id
        maxlen = self.settings.responses_maxlen
        writer = self.ctx.writer
        streamed.append(writer.add(self.responses_key, partial(encode_response_started, cid, uid, response_id), maxlen))
        parts: list[str] = []
        self._streamed_parts = parts
        first_delta_ms: int | None = None
        first_delta_s = 0.0
        usage: dict[str, int] = {}
        async for event in self.engine_session.respond(final.text):
            if isinstance(event, Completed):
                usage = event.usage
                break
            if not event.text:
                continue
            if first_delta_ms is None:
                first_delta_ms = now_ms()
                first_delta_s = time.perf_counter()
            delta = partial(encode_response_delta, cid, uid, response_id, len(parts), event.text)
            parts.append(event.text)
            streamed.append(writer.add(self.responses_key, delta, maxlen))
        return "".join(parts), usage, first_delta_ms, first_delta_s, len(parts)

    def _observe(self, final: TranscriptFinal, first_delta_ms: int | None, done_ms: int,
                 asked_s: float, first_delta_s: float, deltas: int) -> None:
        sent_ms = final.sent_ms
        metrics.UTTERANCE_TRANSCRIPT.observe(max(0, final.final_ms - sent_ms) / 1000)
        if first_delta_ms is not None:
            metrics.UTTERANCE_FIRST_DELTA.observe(max(0, first_delta_ms - sent_ms) / 1000)
        metrics.UTTERANCE_DONE.observe(max(0, done_ms - sent_ms) / 1000)
        end_s = time.perf_counter()
        self._m_engine.observe(end_s - asked_s)
        if first_delta_s:
            self._m_first.observe(first_delta_s - asked_s)
            if deltas > 1 and end_s > first_delta_s:
                self._m_rate.observe((deltas - 1) / (end_s - first_delta_s))

    async def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
        await self.engine_session.close()


class ConversationService:
    name = "conversation"
    group = keynames.CONVERSATION_GROUP
    data_types: tuple[type[BaseModel], ...] = (TranscriptDelta, TranscriptFinal, TranscriptFailed, ResponseRequest,
                                               ResponseCancel, ResponseTruncate, ConversationEnded)

    def __init__(self, settings: ConversationSettings, engine: ConversationEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.stats = StatsBuffer()
        #: Open sessions by conversation, and cancels read for conversations whose
        #: session is not open yet (a takeover's replay reads target and cancel together).
        self._sessions: dict[str, ConversationWorkerSession] = {}
        self._early_cancels: dict[str, set[str]] = {}
        # Tells which worker wrote an answer, in a post-mortem (and in the chaos run's check
        # that a paused worker wrote nothing for the conversations taken from it).
        log.info("response ids of this worker start with %s", _RESPONSE_ID_PREFIX)

    def on_queued(self, ctx: SessionContext, entry: Entry) -> None:
        """A cancel acts as soon as it is read, not when its turn comes: the answer it
        names may be under way right now."""
        if not isinstance(entry, ResponseCancel):
            return
        session = self._sessions.get(ctx.conversation_id)
        if session is not None:
            session.cancel(entry.target_id)
        else:
            self._early_cancels.setdefault(ctx.conversation_id, set()).add(entry.target_id)

    def data_key(self, keys: Keys, conversation_id: str) -> str:
        return keys.transcripts(conversation_id)

    def ended_relay_key(self, keys: Keys, conversation_id: str) -> str | None:
        return None  # the transcriber relays it in-band; this group only acks it

    def keys_to_expire(self, keys: Keys, conversation_id: str) -> list[str]:
        return keys.conversation_keys(conversation_id)

    async def open_session(self, ctx: SessionContext) -> ConversationWorkerSession:
        history = History(self.settings.history_max_turns)
        unanswered: list[tuple[str, str]] = []
        if ctx.took_over:
            history = await rebuild_history(ctx, self.settings.history_max_turns)
            unanswered = await rebuild_unanswered(ctx, history)
            log.info("rebuilt %d turns of history (%d waiting) after takeover", len(history.turns),
                     len(unanswered), extra={"conversation_id": ctx.conversation_id})
        instructions = ctx.started.instructions or self.settings.system_prompt
        engine_session = await self.engine.open_session(ctx.conversation_id, instructions, list(history.turns))
        session = ConversationWorkerSession(ctx, self.settings, engine_session, history, self.engine.name,
                                            self.stats, unanswered, self._early_cancels.pop(ctx.conversation_id, None),
                                            on_close=lambda: self._sessions.pop(ctx.conversation_id, None))
        self._sessions[ctx.conversation_id] = session
        return session

    def on_dead_letter(self, ctx: SessionContext, entry: Entry | None, reason: str) -> None:
        """A transcript or request that could not be answered still gets an answer: a failure."""
        if isinstance(entry, TranscriptFinal | ResponseRequest):
            uid = entry.utterance_id if isinstance(entry, TranscriptFinal) else entry.request_id
            failed = ResponseFailed(conversation_id=ctx.conversation_id, utterance_id=uid,
                                    response_id=f"r{uuid.uuid4().hex[:12]}", code="dead_lettered",
                                    reason=scrub(reason)[:2000])
            ctx.writer.add(ctx.keys.responses(ctx.conversation_id), encode(failed), self.settings.responses_maxlen)

    async def aclose(self) -> None:
        await self.engine.aclose()
