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
from pydantic_core import to_json

from shared import keys as keynames
from shared import metrics
from shared.bus.program import QueuedOp
from shared.bus.resp import xrange_entries
from shared.bus.retry import retry_forever
from shared.bus.writer import BatchWriter
from shared.engines.base import Completed, ConversationEngine, ConversationSession, EngineError
from shared.history import History, NewestTurns, Turn
from shared.keys import Keys
from shared.logs import scrub
from shared.models import (
    ConversationEnded,
    Entry,
    EntryError,
    ResponseFailed,
    TranscriptDelta,
    TranscriptFinal,
    decode_fields,
    encode,
    encode_response_delta,
    encode_response_done,
    encode_response_started,
    now_ms,
)
from shared.service import SessionContext
from shared.settings import ConversationSettings

log = logging.getLogger(__name__)


#: Entries read per XREVRANGE when a new owner rebuilds a conversation's history.
REBUILD_PAGE = 200

#: Entries of the monitor's stats stream: each holds up to a second of answers.
STATS_MAXLEN = 5_000
STATS_FLUSH_S = 1.0


class StatsBuffer:
    """The answers' timings for the monitor, written as one stats entry per
    second (per partition) instead of one per answer: off the hot path."""

    def __init__(self) -> None:
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._writer: BatchWriter | None = None

    def add(self, writer: BatchWriter, key: str, record: dict[str, Any]) -> None:
        self._writer = writer
        records = self._pending.get(key)
        if records is None:
            records = self._pending[key] = []
            asyncio.get_running_loop().call_later(STATS_FLUSH_S, self._flush, key)
        records.append(record)

    def _flush(self, key: str) -> None:
        records = self._pending.pop(key, None)
        if records and self._writer is not None:
            self._writer.add(key, to_json(records), STATS_MAXLEN)


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
    ) -> None:
        self.ctx = ctx
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
        if isinstance(entry, TranscriptDelta):
            # Partial transcripts are for clients; the answer waits for the final.
            if entry_id is not None:
                writer.ack(self.ctx.data_key, self.ctx.group, [entry_id])
            return False
        assert isinstance(entry, TranscriptFinal) and entry_id is not None
        if self.history.is_answered(entry.utterance_id):
            writer.ack(self.ctx.data_key, self.ctx.group, [entry_id])
            return False
        await self._answer(entry_id, entry)
        return False

    async def _answer(self, entry_id: str, final: TranscriptFinal) -> None:
        ctx = self.ctx
        cid, uid = ctx.conversation_id, final.utterance_id
        response_id = next_response_id()
        maxlen = self.settings.responses_maxlen
        writer = ctx.writer
        #: Started and delta entries queued so far: the done supersedes those not yet sent.
        streamed: list[QueuedOp] = []
        asked_s = time.perf_counter()
        try:
            answer = self.engine_session.answer_now(final.text)
            if answer is None:
                text, usage, first_delta_ms, first_delta_s, deltas = await self._stream(final, response_id, streamed)
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
        done = encode_response_done(cid, uid, response_id, text, usage, final.sent_ms, final.final_ms,
                                    first_delta_ms, done_ms)
        writer.gate(ctx.data_key, ctx.group, entry_id, self.responses_key, done, maxlen, supersedes=streamed)
        self.history.add(Turn(uid, final.text, text))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("answered in %d deltas", deltas, extra={"conversation_id": cid, "utterance_id": uid})
        self._observe(final, first_delta_ms, done_ms, asked_s, first_delta_s, deltas)
        self.stats.add(writer.batch, self.stats_key, {  # many conversations' records: not fenced
            "c": cid, "w": ctx.worker_id, "sent": final.sent_ms, "tf": final.final_ms,
            "fd": first_delta_ms, "done": done_ms,
        })

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
        await self.engine_session.close()


class ConversationService:
    name = "conversation"
    group = keynames.CONVERSATION_GROUP
    data_types: tuple[type[BaseModel], ...] = (TranscriptDelta, TranscriptFinal, ConversationEnded)

    def __init__(self, settings: ConversationSettings, engine: ConversationEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.stats = StatsBuffer()

    def data_key(self, keys: Keys, conversation_id: str) -> str:
        return keys.transcripts(conversation_id)

    def ended_relay_key(self, keys: Keys, conversation_id: str) -> str | None:
        return None  # the transcriber relays it in-band; this group only acks it

    def keys_to_expire(self, keys: Keys, conversation_id: str) -> list[str]:
        return keys.conversation_keys(conversation_id)

    async def open_session(self, ctx: SessionContext) -> ConversationWorkerSession:
        history = History(self.settings.history_max_turns)
        if ctx.took_over:
            history = await self._rebuild(ctx)
            log.info("rebuilt %d turns of history after takeover", len(history.turns),
                     extra={"conversation_id": ctx.conversation_id})
        instructions = ctx.started.instructions or self.settings.system_prompt
        engine_session = await self.engine.open_session(ctx.conversation_id, instructions, list(history.turns))
        return ConversationWorkerSession(ctx, self.settings, engine_session, history, self.engine.name, self.stats)

    async def _rebuild(self, ctx: SessionContext) -> History:
        """Read the durable log from its newest end: the done responses back to
        the newest ``history_max_turns`` answers, then the final transcripts back
        to theirs (``NewestTurns``), a page at a time. The cost is bounded by the
        turns kept, not by the streams' length."""
        keys = ctx.keys
        collector = NewestTurns(self.settings.history_max_turns)

        async def walk_back(key: str, add: Callable[[list[Entry]], bool]) -> None:
            upper = "+"
            while True:
                rows = await retry_forever("rebuild history", partial(
                    xrange_entries, ctx.redis, key, max=upper, count=REBUILD_PAGE, reverse=True))
                out: list[Entry] = []
                for _, fields in rows:
                    try:
                        out.append(decode_fields(fields))
                    except EntryError:
                        continue
                if add(out) or len(rows) < REBUILD_PAGE:
                    return
                upper = "(" + rows[-1][0].decode()

        await walk_back(keys.responses(ctx.conversation_id), collector.add_responses)
        if collector.needs_transcripts:
            await walk_back(keys.transcripts(ctx.conversation_id), collector.add_transcripts)
        return collector.history()

    def on_dead_letter(self, ctx: SessionContext, entry: Entry | None, reason: str) -> None:
        """A transcript that could not be answered still gets an answer: a failure."""
        if isinstance(entry, TranscriptFinal):
            failed = ResponseFailed(conversation_id=ctx.conversation_id, utterance_id=entry.utterance_id,
                                    response_id=f"r{uuid.uuid4().hex[:12]}", code="dead_lettered",
                                    reason=scrub(reason)[:2000])
            ctx.writer.add(ctx.keys.responses(ctx.conversation_id), encode(failed), self.settings.responses_maxlen)

    async def aclose(self) -> None:
        await self.engine.aclose()
