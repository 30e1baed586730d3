"""Voice through the gateway with the official openai SDK: speech appended as a
microphone would send it (100 ms pieces), turns found by the server VAD,
transcribed by the bundled local recogniser, answered, and spoken back as
PCM16 audio deltas."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from shared.audio import silence_pcm
from shared.devstack import Stack
from shared.models import AUDIO_SAMPLE_RATE_HZ
from shared.tts import synthesize
from tests.conftest import wait_for_workers
from tests.gateway_helpers import client, collect_until, of_type, start_gateway

pytestmark = [pytest.mark.slow, pytest.mark.local_models]

PIECE_BYTES = 4800  # 100 ms


async def _speak(conn: Any, text: str) -> None:
    pcm = silence_pcm(300, AUDIO_SAMPLE_RATE_HZ) + synthesize(text) + silence_pcm(1200, AUDIO_SAMPLE_RATE_HZ)
    for start in range(0, len(pcm), PIECE_BYTES):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[start : start + PIECE_BYTES]).decode())


async def test_spoken_turn_with_server_vad_and_audio_out(stack: Stack, redis_url: str, prefix: str) -> None:
    stack.start("transcriber_svc", {"TRANSCRIBER_ENGINE": "local"})
    stack.start("conversation_svc")  # echo: the answer repeats what was heard
    wait_for_workers(redis_url, prefix, 2, timeout_s=90)
    _, base = start_gateway(stack)
    async with client(base).realtime.connect(model="local") as conn:
        session = (await collect_until(conn, lambda e: e.type == "session.created"))[-1].session
        assert session.audio.input.turn_detection.type == "server_vad"  # the API's default
        await _speak(conn, "What is the weather like today?")
        seen = await collect_until(conn, lambda e: e.type == "response.done", timeout_s=120)
    types = [e.type for e in seen]
    started, stopped, committed = (of_type(seen, t)[0] for t in (
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed"))
    assert started.item_id == stopped.item_id == committed.item_id
    assert 0 <= started.audio_start_ms < stopped.audio_end_ms
    assert types.index("input_audio_buffer.speech_started") < types.index("input_audio_buffer.committed")
    transcript = of_type(seen, "conversation.item.input_audio_transcription.completed")[0]
    assert transcript.item_id == committed.item_id
    assert "weather" in transcript.transcript.lower()
    done = seen[-1].response
    assert done.status == "completed" and done.output_modalities == ["audio"]
    spoken = of_type(seen, "response.output_audio_transcript.done")[0].transcript
    assert "weather" in spoken.lower() and done.output[0].content[0].transcript == spoken
    audio = b"".join(base64.b64decode(e.delta) for e in of_type(seen, "response.output_audio.delta"))
    assert len(audio) % 2 == 0 and len(audio) / 48_000 > 1.0  # over a second of 24 kHz PCM16 speech
    assert types.index("response.output_audio.delta") < types.index("response.output_audio.done")


async def test_a_transcription_session_gives_transcripts_and_no_answers(stack: Stack, redis_url: str,
                                                                        prefix: str) -> None:
    stack.start("transcriber_svc", {"TRANSCRIBER_ENGINE": "local"})
    stack.start("conversation_svc")
    wait_for_workers(redis_url, prefix, 2, timeout_s=90)
    _, base = start_gateway(stack)
    async with client(base).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        session = (await collect_until(conn, lambda e: e.type == "session.created"))[-1].session
        assert session.type == "transcription"
        await conn.session.update(session={"type": "transcription", "audio": {"input": {
            "transcription": {"model": "local", "language": "en"}, "turn_detection": None}}})
        await collect_until(conn, lambda e: e.type == "session.updated")
        pcm = synthesize("Please turn on the lights.")
        for start in range(0, len(pcm), PIECE_BYTES):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[start : start + PIECE_BYTES]).decode())
        await conn.input_audio_buffer.commit()
        seen = await collect_until(
            conn, lambda e: e.type == "conversation.item.input_audio_transcription.completed", timeout_s=120)
        assert "lights" in seen[-1].transcript.lower()
        assert of_type(seen, "input_audio_buffer.committed")[0].item_id == seen[-1].item_id
        # A transcription session gets transcripts only: no response follows.
        with pytest.raises(TimeoutError):
            await collect_until(conn, lambda e: e.type.startswith("response."), timeout_s=2)
        # A committed turn with no speech in it is reported as failed, not left hanging.
        await conn.input_audio_buffer.append(
            audio=base64.b64encode(silence_pcm(500, AUDIO_SAMPLE_RATE_HZ)).decode())
        await conn.input_audio_buffer.commit()
        seen = await collect_until(
            conn, lambda e: e.type == "conversation.item.input_audio_transcription.failed", timeout_s=60)
        assert seen[-1].item_id == of_type(seen, "input_audio_buffer.committed")[0].item_id
        assert seen[-1].error.code == "no_speech"


async def test_speech_over_an_answer_cancels_it_and_is_answered_next(stack: Stack, redis_url: str,
                                                                     prefix: str) -> None:
    stack.start("transcriber_svc", {"TRANSCRIBER_ENGINE": "local"})
    stack.start("conversation_svc", {"ECHO_DELTA_DELAY_MS": "300", "ECHO_WORDS_PER_DELTA": "2"})
    wait_for_workers(redis_url, prefix, 2, timeout_s=90)
    _, base = start_gateway(stack)
    async with client(base).realtime.connect(model="local") as conn:
        await collect_until(conn, lambda e: e.type == "session.created")
        await _speak(conn, "What is the weather like today?")
        first = await collect_until(conn, lambda e: e.type == "response.output_audio.delta", timeout_s=120)
        interrupted = of_type(first, "response.created")[0].response.id
        await _speak(conn, "Stop, tell me a joke instead.")
        seen = await collect_until(conn, lambda e: e.type == "response.done" and e.response.status == "completed",
                                   timeout_s=120)
    types = [e.type for e in seen]
    cancelled = [e.response for e in of_type(seen, "response.done") if e.response.id == interrupted]
    assert [r.status for r in cancelled] == ["cancelled"]
    # The client hears of the speech before the cancelled end, and no audio of the answer after it.
    assert types.index("input_audio_buffer.speech_started") < [
        i for i, e in enumerate(seen) if e.type == "response.done" and e.response.id == interrupted][0]
    cut = [i for i, e in enumerate(seen) if e.type == "response.done" and e.response.id == interrupted][0]
    assert not [e for e in seen[cut:] if e.type == "response.output_audio.delta" and e.response_id == interrupted]
    # The new speech is the next turn, transcribed and answered.
    transcripts = [e.transcript.lower() for e in of_type(seen, "conversation.item.input_audio_transcription.completed")]
    assert any("joke" in t for t in transcripts)
    assert "joke" in seen[-1].response.output[0].content[0].transcript.lower()
