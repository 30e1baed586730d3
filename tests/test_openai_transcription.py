"""The OpenAI transcription engine against the fake Realtime server,
in-process over real WebSockets (tests/fake_realtime.py): transcripts in
commit order, short and failed audio skipped, expiry and drops survived by
re-sending audio, server VAD, a bad key."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from shared.engines.base import EngineError
from shared.models import AudioChunk, AudioEnd, UtteranceText
from tests.fake_realtime import FakeRealtimeServer
from tests.fake_realtime_script import speech_pcm
from tests.openai_engine_helpers import endpoint, fast_delays
from transcriber_svc.engines.openai import OpenAITranscription


class Sink:
    def __init__(self) -> None:
        self.deltas: list[tuple[str, str]] = []
        self.finals: list[tuple[str, str, int, tuple[str, ...]]] = []
        self.skips: list[tuple[tuple[str, ...], str]] = []
        self.dead_letters: list[tuple[tuple[str, ...], str]] = []

    def delta(self, utterance_id: str, text: str) -> None:
        self.deltas.append((utterance_id, text))

    def final(self, utterance_id: str, text: str, sent_ms: int, consumed_ids: Sequence[str]) -> None:
        self.finals.append((utterance_id, text, sent_ms, tuple(consumed_ids)))

    def skip(self, consumed_ids: Sequence[str], reason: str, utterance_id: str | None = None) -> None:
        self.skips.append((tuple(consumed_ids), reason))

    def dead(self, consumed_ids: Sequence[str], reason: str, utterance_id: str | None = None) -> None:
        self.dead_letters.append((tuple(consumed_ids), reason))


class Feeder:
    """Feeds input entries with increasing entry ids."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.n = 0

    def next_id(self) -> str:
        self.n += 1
        return f"{1000 + self.n}-0"

    async def say(self, uid: str, text: str, duration_ms: int = 300, chunk_bytes: int = 4800) -> list[str]:
        pcm = speech_pcm(text, duration_ms)
        ids = []
        for seq, start in enumerate(range(0, len(pcm), chunk_bytes)):
            ids.append(self.next_id())
            audio = base64.b64encode(pcm[start:start + chunk_bytes]).decode()
            await self.session.feed(ids[-1], AudioChunk(conversation_id="c1", utterance_id=uid, seq=seq, audio=audio))
        ids.append(self.next_id())
        await self.session.feed(ids[-1], AudioEnd(conversation_id="c1", utterance_id=uid, sent_ms=self.n))
        return ids

    async def type(self, uid: str, text: str) -> str:
        entry_id = self.next_id()
        await self.session.feed(entry_id, UtteranceText(conversation_id="c1", utterance_id=uid, text=text,
                                                        sent_ms=self.n))
        return entry_id


def transcription(server: FakeRealtimeServer, **kw: Any) -> OpenAITranscription:
    return OpenAITranscription(endpoint(server), delays=fast_delays, **kw)


async def test_typed_utterances_need_no_upstream(fake: FakeRealtimeServer) -> None:
    sink = Sink()
    session = await transcription(fake).open_session("c1", sink)
    feeder = Feeder(session)
    entry = await feeder.type("t1", "just text")
    await session.flush()
    await session.close()
    assert sink.finals == [("t1", "just text", 1, (entry,))]
    assert fake.sessions == []


async def test_out_of_order_completions_reach_the_sink_in_commit_order(fake: FakeRealtimeServer) -> None:
    fake.faults.completion_delays_s = [0.3, 0.1, 0.0]  # transcripts arrive 3, 2, 1
    sink = Sink()
    session = await transcription(fake).open_session("c1", sink)
    feeder = Feeder(session)
    try:
        ids = [await feeder.say(f"u{i}", f"utterance {i}") for i in range(3)]
        typed = await feeder.type("t", "typed after")
        await session.flush()
    finally:
        await session.close()
    assert [(f[0], f[1]) for f in sink.finals] == [("u0", "utterance 0"), ("u1", "utterance 1"),
                                                   ("u2", "utterance 2"), ("t", "typed after")]
    assert [f[3] for f in sink.finals] == [tuple(i) for i in ids] + [(typed,)]
    assert [f[2] for f in sink.finals[:3]] == [int(i[-1].split("-")[0]) - 1000 for i in ids]  # the audio.end's sent_ms
    assert {d[0] for d in sink.deltas} == {"u0", "u1", "u2"}
    record = fake.sessions[0]
    assert record.query == {"intent": ["transcription"]}  # no model in the URL
    assert record.received[0]["session"]["audio"]["input"]["turn_detection"] is None
    assert record.received[0]["session"]["audio"]["input"]["transcription"] == {"model": "gpt-4o-transcribe"}
    assert record.errors() == []


async def test_short_audio_is_skipped_never_committed(fake: FakeRealtimeServer) -> None:
    sink = Sink()
    session = await transcription(fake).open_session("c1", sink)
    feeder = Feeder(session)
    try:
        short = await feeder.say("u0", "hi", duration_ms=50)
        end_only = feeder.next_id()
        await session.feed(end_only, AudioEnd(conversation_id="c1", utterance_id="u1", sent_ms=1))
        good = await feeder.say("u2", "fine")
        await session.flush()
    finally:
        await session.close()
    assert [s[0] for s in sink.skips] == [tuple(short), (end_only,)]
    assert sink.finals == [("u2", "fine", sink.finals[0][2], tuple(good))]
    assert "input_audio_buffer.commit" in fake.sessions[0].received_types()
    assert fake.sessions[0].errors() == []  # never an empty commit


async def test_an_utterance_over_the_audio_cap_is_dead_lettered_and_the_next_is_transcribed(
    fake: FakeRealtimeServer,
) -> None:
    sink = Sink()
    # A cap of 1 s (the real one is MAX_UTTERANCE_MS, two minutes): 2 s of speech in 100 ms chunks.
    session = await transcription(fake, max_utterance_bytes=48_000).open_session("c1", sink)
    feeder = Feeder(session)
    try:
        long = await feeder.say("u0", "a very long one", duration_ms=2000)
        good = await feeder.say("u1", "fine")
        await session.flush()
    finally:
        await session.close()
    # The first 11 chunks (the 11th passes 1 s) at once, then each later entry up to the end.
    assert sink.dead_letters[0] == (tuple(long[:11]), "utterance over 1 s of audio, the most one utterance may have")
    assert [ids for ids, _ in sink.dead_letters[1:]] == [(i,) for i in long[11:]]
    # The refused audio is not in the next commit (whether it had reached the server and
    # was cleared, or was dropped before the connection was up): the transcript is u1's alone.
    assert sink.finals == [("u1", "fine", sink.finals[0][2], tuple(good))]
    assert fake.sessions[0].received_types().count("input_audio_buffer.commit") == 1
    assert fake.sessions[0].errors() == []


async def test_failed_transcription_is_skipped_and_order_continues(fake: FakeRealtimeServer) -> None:
    fake.faults.fail_transcripts = {"mumble"}
    fake.faults.completion_delays_s = [0.2, 0.0]
    sink = Sink()
    session = await transcription(fake).open_session("c1", sink)
    feeder = Feeder(session)
    try:
        bad = await feeder.say("u0", "mumble")
        await feeder.say("u1", "clear")
        await session.flush()
    finally:
        await session.close()
    assert sink.skips[0][0] == tuple(bad) and "audio_unintelligible" in sink.skips[0][1]
    assert [f[1] for f in sink.finals] == ["clear"]


@pytest.mark.parametrize("fault", ["expire", "drop1006", "drop1011"])
async def test_transcription_survives_expiry_and_drops_by_resending_audio(fake: FakeRealtimeServer,
                                                                       fault: str) -> None:
    if fault == "expire":
        fake.faults.expire_after_commits = 2
    else:
        fake.faults.drop_after_commits = 2
        fake.faults.drop_code = 1006 if fault == "drop1006" else 1011
    fake.faults.completion_delays_s = [0.05]
    sink = Sink()
    session = await transcription(fake).open_session("c1", sink)
    feeder = Feeder(session)
    try:
        for i in range(4):
            await feeder.say(f"u{i}", f"words {i}")
        await session.flush()
    finally:
        await session.close()
    assert [f[1] for f in sink.finals] == [f"words {i}" for i in range(4)]
    assert sink.skips == []
    assert len(fake.sessions) == 2
    assert fake.sessions[1].received[0]["type"] == "session.update"  # re-sent on the new connection


async def test_server_vad_mode(fake: FakeRealtimeServer) -> None:
    sink = Sink()
    session = await transcription(fake, turn_detection="server_vad").open_session("c1", sink)
    feeder = Feeder(session)
    try:
        # 300 ms of "speech" then 600 ms of silence per utterance: the fake's VAD commits each.
        for i in range(2):
            await feeder.say(f"u{i}", f"vad {i}", duration_ms=900)
            # A real client streams in real time: the server's commit lands before the next utterance.
            await asyncio.sleep(0.2)
        await session.flush()
    finally:
        await session.close()
    assert [(f[0], f[1]) for f in sink.finals] == [("u0", "vad 0"), ("u1", "vad 1")]
    assert "input_audio_buffer.commit" not in fake.sessions[0].received_types()
    assert fake.sessions[0].received[0]["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"


async def test_transcription_with_a_bad_key_skips_with_a_clear_reason(
    fake: FakeRealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = "sk-another-WRONG-key-0123456789"
    sink = Sink()
    engine = OpenAITranscription(endpoint(fake, key=bad), delays=fast_delays)
    session = await engine.open_session("c1", sink)
    feeder = Feeder(session)
    try:
        ids = await feeder.say("u0", "hello")
        await session.flush()
        with pytest.raises(EngineError) as info:
            await feeder.say("u1", "again")
        assert info.value.code == "invalid_api_key"
    finally:
        await session.close()
    assert sink.skips and sink.skips[0][0] == tuple(ids) and "API key" in sink.skips[0][1]
    assert fake.rejected_handshakes == [401]
