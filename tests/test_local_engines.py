"""The local engines: faster-whisper transcription sessions and the llama.cpp
conversation engine, on the bundled models (marked ``local_models``), plus
the transcription session's bookkeeping on a scripted recogniser (no model).

Models load once per module. Speed is measured in bench/local_engines_probe.py,
never asserted here.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from conversation_svc.engines.local import EMPTY_ANSWER_FALLBACK, LocalConversation, fit_messages
from shared.audio import chunk_pcm, silence_pcm
from shared.engines.base import Completed, EngineError, TextDelta, TranscriptionSession
from shared.history import Turn
from shared.models import AUDIO_SAMPLE_RATE_HZ, AudioChunk, AudioEnd, UtteranceText
from shared.tts import synthesize
from shared.wer import normalize_words, word_errors
from transcriber_svc.engines.local import LocalTranscription

CID = "c1"
SENTENCE = "This is a test of the transcription system."
SECOND = "The weather today is sunny with a chance of rain."


# --- helpers -------------------------------------------------------------------------------


@dataclass
class FakeSink:
    """Records what a transcription session reports (implements TranscriptSink)."""

    finals: list[tuple[str, str, int, list[str]]] = field(default_factory=list)
    skips: list[tuple[list[str], str]] = field(default_factory=list)
    deltas: list[tuple[str, str]] = field(default_factory=list)

    def delta(self, utterance_id: str, text: str) -> None:
        self.deltas.append((utterance_id, text))

    def final(self, utterance_id: str, text: str, sent_ms: int, consumed_ids: Sequence[str]) -> None:
        self.finals.append((utterance_id, text, sent_ms, list(consumed_ids)))

    def skip(self, consumed_ids: Sequence[str], reason: str, utterance_id: str | None = None) -> None:
        self.skips.append((list(consumed_ids), reason))

    def handled_ids(self) -> list[str]:
        ids = [i for f in self.finals for i in f[3]] + [i for s in self.skips for i in s[0]]
        return sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))


class Feeder:
    """Feeds a session entries with realistic stream ids (``<ms>-<seq>``), 100 ms apart."""

    def __init__(self, session: TranscriptionSession, start_ms: int = 1_700_000_000_000) -> None:
        self.session = session
        self.ms = start_ms
        self.ids: list[str] = []

    def next_id(self) -> str:
        self.ms += 100
        entry_id = f"{self.ms}-0"
        self.ids.append(entry_id)
        return entry_id

    async def audio(self, pcm: bytes, utterance_id: str | None = None, chunk_ms: int = 100) -> None:
        for seq, chunk in enumerate(chunk_pcm(pcm, chunk_ms, AUDIO_SAMPLE_RATE_HZ)):
            entry = AudioChunk(conversation_id=CID, utterance_id=utterance_id, seq=seq,
                               audio=base64.b64encode(chunk).decode())
            await self.session.feed(self.next_id(), entry)

    async def end(self, utterance_id: str | None, sent_ms: int, reference: str | None = None) -> str:
        entry_id = self.next_id()
        await self.session.feed(entry_id, AudioEnd(conversation_id=CID, utterance_id=utterance_id, sent_ms=sent_ms,
                                                   reference_text=reference))
        return entry_id


def silence(ms: float) -> bytes:
    return silence_pcm(ms, AUDIO_SAMPLE_RATE_HZ)


def words_wrong(reference: str, hypothesis: str) -> int:
    return word_errors(reference, hypothesis)[0]


# --- session bookkeeping on a scripted recogniser (no model) ----------------------------------------


class ScriptedTranscription(LocalTranscription):
    """LocalTranscription with the recogniser replaced: says how much audio it got."""

    def __init__(self, fail_times: int = 0, **kwargs: float) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.fail_times = fail_times
        self.calls: list[int] = []

    async def start(self) -> None:
        return None

    async def transcribe(self, pcm: bytes) -> str:
        if self.fail_times:
            self.fail_times -= 1
            raise EngineError("scripted failure", retryable=True)
        self.calls.append(len(pcm))
        return f"heard {len(pcm) // 48} ms"


async def test_text_entries_pass_through_like_the_simulated_engine() -> None:
    sink = FakeSink()
    session = await ScriptedTranscription().open_session(CID, sink)
    await session.feed("5-0", UtteranceText(conversation_id=CID, utterance_id="u1", text="hi there", sent_ms=42))
    await session.feed("6-0", UtteranceText(conversation_id=CID, utterance_id="u2", text="", sent_ms=43))
    assert sink.finals == [("u1", "hi there", 42, ["5-0"]), ("u2", "", 43, ["6-0"])]


async def test_retried_entry_resumes_its_cut_without_duplicating_audio() -> None:
    """A failed recognition is retried by feeding the same entry again (what the runtime does)."""
    engine = ScriptedTranscription(fail_times=1)
    sink = FakeSink()
    session = await engine.open_session(CID, sink)
    feeder = Feeder(session)
    await feeder.audio(synthesize(SENTENCE), "u1")
    end = AudioEnd(conversation_id=CID, utterance_id="u1", sent_ms=7)
    end_id = feeder.next_id()
    with pytest.raises(EngineError):
        await session.feed(end_id, end)
    assert sink.finals == []
    await session.feed(end_id, end)
    assert len(sink.finals) == 1 and sink.finals[0][3] == feeder.ids[-len(sink.finals[0][3]):]
    assert sink.handled_ids() == feeder.ids  # every entry reported exactly once
    assert len(set(sink.handled_ids())) == len(feeder.ids)


async def test_leading_silence_is_skipped_as_it_arrives() -> None:
    sink = FakeSink()
    session = await ScriptedTranscription().open_session(CID, sink)
    feeder = Feeder(session)
    await feeder.audio(silence(5000), "u1")
    skipped = [i for ids, _ in sink.skips for i in ids]
    assert len(skipped) >= 45  # only the pre-roll (about 300 ms) stays buffered
    await feeder.end("u1", 9)
    assert sink.finals == []
    assert sink.handled_ids() == feeder.ids


async def test_long_labelled_utterance_is_recognised_in_bounded_segments() -> None:
    engine = ScriptedTranscription(max_utterance_ms=2000)
    sink = FakeSink()
    session = await engine.open_session(CID, sink)
    feeder = Feeder(session)
    long_speech = synthesize(" ".join([SENTENCE, SECOND, SENTENCE]))
    await feeder.audio(long_speech, "u1")
    assert engine.calls and max(engine.calls) <= 2100 * 48  # no segment above the bound (+ one chunk)
    await feeder.end("u1", 11)
    assert len(sink.finals) == 1
    uid, text, sent_ms, ids = sink.finals[0]
    assert (uid, sent_ms) == ("u1", 11)
    assert text.count("heard") == len(engine.calls) >= 3
    assert sink.handled_ids() == feeder.ids


async def test_a_new_label_closes_the_previous_utterance() -> None:
    sink = FakeSink()
    session = await ScriptedTranscription().open_session(CID, sink)
    feeder = Feeder(session)
    await feeder.audio(synthesize("Hello."), "u1")
    await feeder.audio(synthesize("Goodbye."), "u2")
    await session.flush()
    assert [f[0] for f in sink.finals] == ["u1", "u2"]
    assert sink.handled_ids() == feeder.ids


# --- whisper (bundled tiny.en) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def asr() -> Iterator[LocalTranscription]:
    engine = LocalTranscription()
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.aclose())


@pytest.mark.local_models
async def test_sentence_transcribes_with_at_most_one_word_wrong(asr: LocalTranscription) -> None:
    sink = FakeSink()
    session = await asr.open_session(CID, sink)
    feeder = Feeder(session)
    await feeder.audio(silence(300) + synthesize(SENTENCE) + silence(300), "u0001")
    await feeder.end("u0001", sent_ms=1234, reference=SENTENCE)
    assert len(sink.finals) == 1, sink
    uid, text, sent_ms, ids = sink.finals[0]
    assert (uid, sent_ms) == ("u0001", 1234)
    assert words_wrong(SENTENCE, text) <= 1, text
    assert ids[-1] == feeder.ids[-1]  # the audio.end is acked with the transcript
    assert sink.handled_ids() == feeder.ids


@pytest.mark.local_models
async def test_continuous_stream_is_cut_into_utterances_on_silence(asr: LocalTranscription) -> None:
    sink = FakeSink()
    session = await asr.open_session(CID, sink)
    feeder = Feeder(session)
    stream = silence(500) + synthesize(SENTENCE) + silence(1000) + synthesize(SECOND) + silence(1000)
    await feeder.audio(stream, utterance_id=None)
    assert len(sink.finals) == 2, sink.finals  # both cut by silence alone, no audio.end, no flush
    (uid1, text1, sent1, ids1), (uid2, text2, sent2, ids2) = sink.finals
    assert uid1 != uid2 and uid1.startswith("a") and uid2.startswith("a")
    assert words_wrong(SENTENCE, text1) <= 2, text1
    assert words_wrong(SECOND, text2) <= 2, text2
    assert set(ids1).isdisjoint(ids2)
    # sent_ms: when the chunk holding the end of speech was written (its stream id).
    assert int(ids1[0].split("-")[0]) < sent1 <= int(ids1[-1].split("-")[0])
    await session.flush()
    assert sink.handled_ids() == feeder.ids
    assert len(sink.finals) == 2


@pytest.mark.local_models
async def test_silence_only_gives_no_transcript_and_is_skipped(asr: LocalTranscription) -> None:
    sink = FakeSink()
    session = await asr.open_session(CID, sink)
    feeder = Feeder(session)
    await feeder.audio(silence(3000), "u0001")
    await feeder.end("u0001", 1)
    await feeder.audio(silence(2000))
    await session.flush()
    assert sink.finals == []
    assert sink.handled_ids() == feeder.ids
    assert {reason for _, reason in sink.skips} <= {"silence before speech", "no speech in the audio"}


# --- llama.cpp (bundled SmolLM2-135M-Instruct) ----------------------------------------------------------


@pytest.fixture(scope="module")
def llm() -> Iterator[LocalConversation]:
    engine = LocalConversation(max_tokens=48)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.aclose())


@pytest.mark.local_models
async def test_llm_streams_a_non_empty_answer_in_several_deltas(llm: LocalConversation) -> None:
    session = await llm.open_session(CID, "You are a helpful voice assistant. Answer briefly.", [])
    events = [e async for e in session.respond("What is the capital of France?")]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert isinstance(events[-1], Completed) and sum(isinstance(e, Completed) for e in events) == 1
    assert len(deltas) >= 3
    answer = "".join(d.text for d in deltas)
    assert answer.strip() and answer == answer.lstrip()
    usage = events[-1].usage
    assert usage["output_tokens"] > 0 and usage["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


@pytest.mark.local_models
async def test_llm_sessions_queue_and_keep_their_history(llm: LocalConversation) -> None:
    one = await llm.open_session("c1", "Answer briefly.", [Turn("u0", "My name is Ada.", "Hello Ada.")])
    two = await llm.open_session("c2", "Answer briefly.", [])

    async def answer(session: object, text: str) -> str:
        parts = [e.text async for e in session.respond(text) if isinstance(e, TextDelta)]  # type: ignore[attr-defined]
        return "".join(parts)

    first, second = await asyncio.gather(answer(one, "What is my name?"), answer(two, "Say hello."))
    assert first.strip() and second.strip()
    one.remember(Turn("u2", "Thanks.", "You're welcome."))
    assert [t.user_text for t in one.turns][-3:] == ["My name is Ada.", "What is my name?", "Thanks."]  # type: ignore[attr-defined]


@pytest.mark.local_models
def test_history_prompt_drops_the_oldest_turns_first(llm: LocalConversation) -> None:
    turns = [Turn(f"u{i}", f"Question number {i}: " + "tell me more " * 10, f"Answer {i}: " + "sure " * 10)
             for i in range(20)]
    full, full_tokens = fit_messages("Be brief.", turns, "And now?", llm.count_tokens, 100_000)
    assert len(full) == 1 + 2 * 20 + 1
    budget = full_tokens // 3
    messages, used = fit_messages("Be brief.", turns, "And now?", llm.count_tokens, budget)
    assert used <= budget
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[-1] == {"role": "user", "content": "And now?"}
    kept = [m["content"] for m in messages[1:-1:2]]
    assert 0 < len(kept) < 20
    # The most recent turns survive, in order: a suffix of the history.
    assert kept == [t.user_text for t in turns[-len(kept):]]
    roles = [m["role"] for m in messages[1:-1]]
    assert roles == list(itertools.islice(itertools.cycle(["user", "assistant"]), len(roles)))
    with pytest.raises(EngineError) as info:
        fit_messages("Be brief.", turns, "word " * 500, llm.count_tokens, 200)
    assert info.value.code == "context_overflow" and not info.value.retryable


@pytest.mark.local_models
async def test_llm_answers_with_long_history_inside_a_small_context() -> None:
    engine = LocalConversation(n_ctx=512, max_tokens=32)
    await engine.start()
    try:
        history = [Turn(f"u{i}", "Tell me a long story about the sea. " * 5, "Once upon a time " * 10)
                   for i in range(30)]
        session = await engine.open_session(CID, "Answer briefly.", history)
        events = [e async for e in session.respond("Thank you, goodbye.")]
        assert isinstance(events[-1], Completed)
        assert events[-1].usage["input_tokens"] <= 512 - 32
        assert "".join(e.text for e in events if isinstance(e, TextDelta)).strip()
    finally:
        await engine.aclose()


def test_empty_answer_fallback_is_a_sentence() -> None:
    assert normalize_words(EMPTY_ANSWER_FALLBACK)
