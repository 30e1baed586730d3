"""The simulator's audio sources (espeak-ng synthesis, WAV files) and audio
mode's publishing of one utterance to the input stream."""

from __future__ import annotations

import time
import wave
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from shared.audio import float32_to_pcm16, pcm16_to_float32, pcm_duration_ms, rms_dbfs
from shared.keys import Keys
from shared.models import AUDIO_SAMPLE_RATE_HZ, AudioChunk, AudioEnd, decode_fields
from shared.tts import native_sample_rate_hz, synthesize
from simulator_svc.audio_mode import publish_audio_utterance, speech_pcm
from simulator_svc.wav import WavError, read_wav

SENTENCE = "This is a test of the transcription system."


def test_synthesis_gives_plausible_speech() -> None:
    pcm = synthesize(SENTENCE)
    assert len(pcm) % 2 == 0
    duration_ms = pcm_duration_ms(pcm, AUDIO_SAMPLE_RATE_HZ)
    assert 1500 < duration_ms < 6000  # about 2.5 s at espeak's 175 words per minute
    samples = pcm16_to_float32(pcm)
    assert rms_dbfs(samples) > -35.0  # speech, not silence
    assert np.max(np.abs(samples)) < 1.0
    assert native_sample_rate_hz() == 22_050  # resampled to 24 kHz on the way out


def test_synthesis_is_repeatable_and_blank_text_is_empty() -> None:
    # espeak-ng varies a little from run to run (noise, a few samples of length).
    first, second = len(synthesize("Hello there.")), len(synthesize("Hello there."))
    assert abs(first - second) < 0.02 * first
    assert synthesize("   ") == b""
    longer = synthesize(SENTENCE + " " + SENTENCE)
    assert len(longer) > len(synthesize(SENTENCE)) * 1.5


def write_wav(path: Path, samples: np.ndarray, rate_hz: int, width_bytes: int) -> None:
    """``samples``: float (frames, channels) in [-1, 1)."""
    channels = samples.shape[1]
    if width_bytes == 1:
        raw = (np.clip(samples, -1, 1) * 127 + 128).astype(np.uint8).tobytes()
    elif width_bytes == 2:
        raw = (samples * 32767).astype("<i2").tobytes()
    elif width_bytes == 3:
        ints = (samples * (2**23 - 1)).astype("<i4")
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints.reshape(-1))
    else:
        raw = (samples * (2**31 - 1)).astype("<i4").tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width_bytes)
        wav.setframerate(rate_hz)
        wav.writeframes(raw)


@pytest.mark.parametrize("width_bytes", [1, 2, 3, 4])
def test_wav_44k_stereo_converts_to_24k_mono(tmp_path: Path, width_bytes: int) -> None:
    rate_hz = 44_100
    t = np.arange(rate_hz // 2) / rate_hz  # 0.5 s
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.5 * np.sin(2 * np.pi * 440 * t + 0.3)  # nearly in phase: the average keeps the tone
    path = tmp_path / f"stereo{width_bytes}.wav"
    write_wav(path, np.stack([left, right], axis=1), rate_hz, width_bytes)
    pcm = read_wav(path)
    out = pcm16_to_float32(pcm)
    assert len(out) == 12_000  # 0.5 s at 24 kHz
    expected = 0.5 * np.cos(0.15) * np.sin(2 * np.pi * 440 * np.arange(12_000) / 24_000 + 0.15)
    tolerance = 0.03 if width_bytes == 1 else 0.005
    assert np.max(np.abs(out[200:-200] - expected[200:-200])) < tolerance


def test_wav_at_the_wire_rate_is_unchanged(tmp_path: Path) -> None:
    pcm = synthesize("Hello.")
    path = tmp_path / "mono.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(AUDIO_SAMPLE_RATE_HZ)
        wav.writeframes(pcm)
    assert read_wav(path) == pcm


def test_bad_files_give_a_clear_error(tmp_path: Path) -> None:
    not_wav = tmp_path / "notes.wav"
    not_wav.write_text("this is not audio")
    with pytest.raises(WavError, match="notes.wav: not a usable WAV file"):
        read_wav(not_wav)

    empty_file = tmp_path / "zero.wav"
    empty_file.write_bytes(b"")
    with pytest.raises(WavError, match="zero.wav"):
        read_wav(empty_file)

    no_samples = tmp_path / "silent.wav"
    write_wav(no_samples, np.zeros((0, 1)), 16_000, 2)
    with pytest.raises(WavError, match="holds no audio samples"):
        read_wav(no_samples)

    # A float WAV (format 3): a valid RIFF file that the wave module cannot decode.
    float_wav = tmp_path / "float.wav"
    data = np.zeros(100, dtype="<f4").tobytes()
    fmt = (3).to_bytes(2, "little") + (1).to_bytes(2, "little") + (16_000).to_bytes(4, "little") \
        + (64_000).to_bytes(4, "little") + (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + len(data).to_bytes(4, "little") + data
    float_wav.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    with pytest.raises(WavError, match="only uncompressed integer PCM"):
        read_wav(float_wav)

    with pytest.raises(FileNotFoundError):
        read_wav(tmp_path / "missing.wav")


async def test_publish_audio_utterance_writes_chunks_then_end(redis: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    pcm = speech_pcm("Hello there.", trailing_silence_ms=200)
    before_ms = int(time.time() * 1000)
    sent_ms = await publish_audio_utterance(redis, keys, "c1", "u0001", pcm, "Hello there.",
                                            chunk_ms=100, realtime_factor=20.0)
    rows = await redis.xrange(keys.input("c1"))
    entries = [decode_fields(fields) for _, fields in rows]
    chunks = [e for e in entries if isinstance(e, AudioChunk)]
    assert isinstance(entries[-1], AudioEnd) and len(chunks) == len(entries) - 1
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all(c.utterance_id == "u0001" for c in chunks)
    assert b"".join(c.pcm() for c in chunks) == pcm
    assert all(len(c.pcm()) == 4800 for c in chunks[:-1])
    end = entries[-1]
    assert end.utterance_id == "u0001" and end.reference_text == "Hello there." and end.sent_ms == sent_ms
    # Paced: 20 times faster than real time, so at least duration / 20 after the start.
    assert sent_ms - before_ms >= pcm_duration_ms(pcm, AUDIO_SAMPLE_RATE_HZ) / 20 - 5


async def test_publish_rejects_chunks_over_the_limit(redis: aioredis.Redis, prefix: str) -> None:
    with pytest.raises(ValueError, match="chunk limit"):
        await publish_audio_utterance(redis, Keys(prefix), "c1", None, float32_to_pcm16(np.zeros(10)), None,
                                      chunk_ms=5000)
