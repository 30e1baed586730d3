"""The transcriber's side of the pipeline: input stream -> transcription
session -> transcripts stream. The runtime does the reading and ordering;
this module turns engine results into transcript entries, each final written
together with the ack of every input entry it consumed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from pydantic import BaseModel

from shared import keys as keynames
from shared import metrics
from shared.engines.base import TranscriptionEngine, TranscriptionSession
from shared.keys import Keys
from shared.logs import scrub
from shared.models import (
    AudioChunk,
    AudioEnd,
    ConversationEnded,
    Entry,
    RelayedEntry,
    ResponseCancel,
    ResponseRequest,
    ResponseTruncate,
    TranscriptDelta,
    TranscriptFailed,
    UtteranceText,
    encode,
    encode_transcript_final,
    now_ms,
)
from shared.service import SessionContext
from shared.settings import TranscriberSettings

log = logging.getLogger(__name__)


class _Sink:
    """Writes one conversation's transcription results (TranscriptSink)."""

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.transcripts_key = ctx.keys.transcripts(ctx.conversation_id)
        self.maxlen = ctx.settings.transcripts_maxlen
        self.finals = 0
        #: Utterances whose client asked for no answer of their own (``respond: false``):
        #: their finals say so. Entries leave when their final is written.
        self.no_reply: set[str] = set()

    def delta(self, utterance_id: str, text: str) -> None:
        entry = TranscriptDelta(conversation_id=self.ctx.conversation_id, utterance_id=utterance_id, text=text)
        self.ctx.writer.add(self.transcripts_key, encode(entry), self.maxlen)

    def final(self, utterance_id: str, text: str, sent_ms: int, consumed_ids: Sequence[str]) -> None:
        respond = utterance_id not in self.no_reply
        self.no_reply.discard(utterance_id)
        entry = encode_transcript_final(self.ctx.conversation_id, utterance_id, text, sent_ms,
                                        now_ms(), respond)
        self.finals += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("transcribed (%d input entries)", len(consumed_ids),
                      extra={"conversation_id": self.ctx.conversation_id, "utterance_id": utterance_id})
        if not consumed_ids:
            self.ctx.writer.add(self.transcripts_key, entry, self.maxlen)
            return
        self.ctx.writer.gate(
            self.ctx.data_key, self.ctx.group, consumed_ids[-1], self.transcripts_key,
            entry, self.maxlen, extra_ack_ids=consumed_ids[:-1],
        )

    def dead(self, consumed_ids: Sequence[str], reason: str, utterance_id: str | None = None) -> None:
        if utterance_id is not None:
            self.failed(utterance_id, "transcription_failed", reason)
        for entry_id in consumed_ids:
            self.ctx.dead_letter(entry_id, None, reason)

    def skip(self, consumed_ids: Sequence[str], reason: str, utterance_id: str | None = None) -> None:
        if utterance_id is not None and consumed_ids:
            # Written with the acks (a gate), so a replay after a crash tells the client once.
            self.no_reply.discard(utterance_id)
            failed = TranscriptFailed(conversation_id=self.ctx.conversation_id, utterance_id=utterance_id,
                                      code="no_speech", reason=reason[:2000])
            self.ctx.writer.gate(self.ctx.data_key, self.ctx.group, consumed_ids[-1], self.transcripts_key,
                                 encode(failed), self.maxlen, extra_ack_ids=consumed_ids[:-1])
            return
        if consumed_ids:
            log.debug("skipping %d input entries: %s", len(consumed_ids), reason,
                      extra={"conversation_id": self.ctx.conversation_id})
            self.ctx.writer.ack(self.ctx.data_key, self.ctx.group, list(consumed_ids))

    def failed(self, utterance_id: str, code: str, reason: str) -> None:
        """Tell the client that utterance gave no transcript (its input is dead-lettered)."""
        self.no_reply.discard(utterance_id)
        entry = TranscriptFailed(conversation_id=self.ctx.conversation_id, utterance_id=utterance_id,
                                 code=code, reason=scrub(reason)[:2000])
        self.ctx.writer.add(self.transcripts_key, encode(entry), self.maxlen)


class TranscriberSession:
    def __init__(
        self, ctx: SessionContext, sink: _Sink, engine_session: TranscriptionSession, engine_name: str
    ) -> None:
        self.ctx = ctx
        self.sink = sink
        self.engine_session = engine_session
        self._engine_time = {
            kind: metrics.ENGINE_TIME.labels(engine_name, kind)
            for kind in ("utterance.text", "audio.chunk", "audio.end")
        }

    async def handle(self, entry_id: str | None, entry: Entry) -> bool:
        if isinstance(entry, ConversationEnded):
            await self.engine_session.flush()
            # Forward the end in-band so the conversation owner sees it after the last transcript.
            self._relay(entry_id, entry)
            return True
        if isinstance(entry, ResponseRequest):
            # Behind the transcripts of every turn before it, so the answer hears them all.
            await self.engine_session.settle()
            self._relay(entry_id, entry)
            return False
        if isinstance(entry, ResponseCancel | ResponseTruncate):
            self._relay(entry_id, entry)  # in order: always behind the answer it names
            return False
        assert isinstance(entry, UtteranceText | AudioChunk | AudioEnd) and entry_id is not None
        if isinstance(entry, UtteranceText | AudioEnd) and not entry.respond and entry.utterance_id:
            self.sink.no_reply.add(entry.utterance_id)
        started_s = time.perf_counter()
        await self.engine_session.feed(entry_id, entry)
        self._engine_time[entry.type].observe(time.perf_counter() - started_s)
        return False

    def _relay(self, entry_id: str | None, entry: ConversationEnded | RelayedEntry) -> None:
        """Copy an input entry to the transcripts stream, acked with it (one gated op)."""
        transcripts = self.ctx.keys.transcripts(self.ctx.conversation_id)
        payload = encode(entry)
        if entry_id is None:
            self.ctx.writer.add(transcripts, payload, self.ctx.settings.transcripts_maxlen)
        else:
            self.ctx.writer.gate(self.ctx.data_key, self.ctx.group, entry_id, transcripts, payload,
                                 self.ctx.settings.transcripts_maxlen)

    async def close(self) -> None:
        await self.engine_session.close()


class TranscriberService:
    name = "transcriber"
    group = keynames.TRANSCRIBER_GROUP
    data_types: tuple[type[BaseModel], ...] = (UtteranceText, AudioChunk, AudioEnd, ResponseRequest,
                                               ResponseCancel, ResponseTruncate, ConversationEnded)

    def __init__(self, settings: TranscriberSettings, engine: TranscriptionEngine) -> None:
        self.settings = settings
        self.engine = engine

    def data_key(self, keys: Keys, conversation_id: str) -> str:
        return keys.input(conversation_id)

    def ended_relay_key(self, keys: Keys, conversation_id: str) -> str | None:
        return keys.input(conversation_id)

    def keys_to_expire(self, keys: Keys, conversation_id: str) -> list[str]:
        return [keys.input(conversation_id)]

    async def open_session(self, ctx: SessionContext) -> TranscriberSession:
        sink = _Sink(ctx)
        engine_session = await self.engine.open_session(ctx.conversation_id, sink)
        return TranscriberSession(ctx, sink, engine_session, self.engine.name)

    def on_dead_letter(self, ctx: SessionContext, entry: Entry | None, reason: str) -> None:
        """An utterance whose entry was dead-lettered gives no transcript: the client hears so."""
        if isinstance(entry, UtteranceText | AudioEnd) and entry.utterance_id:
            failed = TranscriptFailed(conversation_id=ctx.conversation_id, utterance_id=entry.utterance_id,
                                      code="transcription_failed", reason=scrub(reason)[:2000])
            ctx.writer.add(ctx.keys.transcripts(ctx.conversation_id), encode(failed),
                           ctx.settings.transcripts_maxlen)

    async def aclose(self) -> None:
        await self.engine.aclose()
