"""Pure audio helpers, the endpointer and the word error rate: no models, no Redis."""

from __future__ import annotations

import numpy as np
import pytest

from shared.audio import (
    Endpointer,
    EndpointerConfig,
    SpeechEnded,
    SpeechStarted,
    chunk_pcm,
    deinterleave,
    float32_to_pcm16,
    pcm16_to_float32,
    pcm_duration_ms,
    resample,
    resampled_length,
    rms_dbfs,
    silence_pcm,
    to_mono,
)
from shared.wer import normalize_words, word_error_rate, word_errors

RATE_HZ = 24_000


def tone(freq_hz: float, duration_ms: float, rate_hz: int = RATE_HZ, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(rate_hz * duration_ms / 1000)) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def tone_pcm(duration_ms: float, amplitude: float = 0.3) -> bytes:
    return float32_to_pcm16(tone(300.0, duration_ms, amplitude=amplitude))


# --- conversions ------------------------------------------------------------------------


def test_pcm_round_trip_is_exact() -> None:
    samples = np.array([-32768, -1, 0, 1, 12345, 32767], dtype="<i2")
    pcm = samples.tobytes()
    floats = pcm16_to_float32(pcm)
    assert floats.dtype == np.float32
    assert floats.min() == -1.0 and floats.max() < 1.0
    assert float32_to_pcm16(floats) == pcm


def test_float_to_pcm_clips_out_of_range() -> None:
    assert np.frombuffer(float32_to_pcm16([2.0, -2.0]), "<i2").tolist() == [32767, -32768]


def test_odd_byte_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="even number"):
        pcm16_to_float32(b"\x00\x01\x02")


def test_stereo_to_mono_averages_channels() -> None:
    interleaved = np.array([0.5, -0.5, 0.25, 0.25, 1.0, 0.0, 0.9], dtype=np.float32)  # last frame partial
    frames = deinterleave(interleaved, 2)
    assert frames.shape == (3, 2)
    assert to_mono(frames).tolist() == [0.0, 0.25, 0.5]
    assert to_mono(interleaved).shape == (7,)  # 1-D is already mono


# --- resampling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_hz", "to_hz"),
    [(22_050, 24_000), (24_000, 16_000), (44_100, 24_000), (8_000, 24_000), (48_000, 24_000), (44_056, 24_000)],
)
def test_resample_length_and_frequency(from_hz: int, to_hz: int) -> None:
    x = tone(440.0, 500, rate_hz=from_hz)
    y = resample(x, from_hz, to_hz)
    assert len(y) == resampled_length(len(x), from_hz, to_hz)
    assert abs(len(y) - to_hz // 2) <= 1
    ref = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(len(y)) / to_hz)
    inner = slice(100, len(y) - 100)  # away from the edges, where the filter sees zeros
    assert np.max(np.abs(y[inner] - ref[inner])) < 0.01


def test_resample_downsampling_removes_what_the_new_rate_cannot_hold() -> None:
    high = tone(10_000.0, 500)  # above 8 kHz, the Nyquist frequency of 16 kHz
    y = resample(high, 24_000, 16_000)
    assert rms_dbfs(y[100:-100]) < -50.0


def test_resample_same_rate_and_empty() -> None:
    x = tone(440.0, 10)
    assert np.array_equal(resample(x, RATE_HZ, RATE_HZ), x)
    assert len(resample(np.zeros(0, np.float32), 22_050, 24_000)) == 0
    with pytest.raises(ValueError):
        resample(x, 0, RATE_HZ)


# --- chunking -----------------------------------------------------------------------------


def test_chunking_splits_on_whole_samples_and_reassembles() -> None:
    pcm = tone_pcm(1050)
    chunks = chunk_pcm(pcm, 100, RATE_HZ)
    assert len(chunks) == 11
    assert all(len(c) == 4800 for c in chunks[:-1])
    assert len(chunks[-1]) == 2400
    assert b"".join(chunks) == pcm
    assert chunk_pcm(b"", 100, RATE_HZ) == []
    assert pcm_duration_ms(pcm, RATE_HZ) == pytest.approx(1050)
    assert pcm_duration_ms(silence_pcm(250, RATE_HZ), RATE_HZ) == pytest.approx(250)


# --- endpointer ------------------------------------------------------------------------------


def feed_in_chunks(endpointer: Endpointer, pcm: bytes, chunk_bytes: int) -> list[object]:
    events: list[object] = []
    for i in range(0, len(pcm), chunk_bytes):
        events.extend(endpointer.feed(pcm[i : i + chunk_bytes]))
    return events


def test_endpointer_cuts_after_the_silence_hangover() -> None:
    ep = Endpointer(EndpointerConfig(end_silence_ms=500))
    pcm = (silence_pcm(300, RATE_HZ) + tone_pcm(800) + silence_pcm(1000, RATE_HZ)
           + tone_pcm(400) + silence_pcm(700, RATE_HZ))
    events = feed_in_chunks(ep, pcm, 4800)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SpeechStarted", "SpeechEnded", "SpeechStarted", "SpeechEnded"]
    first_start, first_end = events[0], events[1]
    assert isinstance(first_start, SpeechStarted) and isinstance(first_end, SpeechEnded)
    assert first_start.start_ms == pytest.approx(300, abs=20)
    assert first_end.end_ms == pytest.approx(1100, abs=20)
    assert first_end.decided_ms == pytest.approx(1600, abs=20)
    assert first_end.reason == "silence"
    assert not ep.in_speech


def test_endpointer_ignores_pure_silence_and_quiet_noise() -> None:
    ep = Endpointer()
    rng = np.random.default_rng(1)
    noise = float32_to_pcm16(rng.normal(0, 0.002, RATE_HZ * 3).astype(np.float32))  # about -54 dBFS
    assert feed_in_chunks(ep, silence_pcm(3000, RATE_HZ) + noise, 4800) == []
    assert ep.end_of_stream() == []


def test_endpointer_ignores_a_click() -> None:
    ep = Endpointer(EndpointerConfig(min_speech_ms=60))
    assert feed_in_chunks(ep, silence_pcm(200, RATE_HZ) + tone_pcm(20) + silence_pcm(1000, RATE_HZ), 960) == []


def test_endpointer_handles_odd_sizes() -> None:
    """Chunk boundaries that split frames, and even samples, give the same events."""
    pcm = silence_pcm(200, RATE_HZ) + tone_pcm(500) + silence_pcm(900, RATE_HZ)
    expected = feed_in_chunks(Endpointer(), pcm, 4800)
    assert len(expected) == 2
    for size in (1, 7, 333, 1001, len(pcm)):
        assert feed_in_chunks(Endpointer(), pcm, size) == expected


def test_endpointer_cuts_at_max_length_and_end_of_stream_closes() -> None:
    ep = Endpointer(EndpointerConfig(max_utterance_ms=1000))
    events = feed_in_chunks(ep, tone_pcm(2500), 4800)
    ends = [e for e in events if isinstance(e, SpeechEnded)]
    assert [e.reason for e in ends] == ["max_length", "max_length"]
    assert ends[0].decided_ms - ends[0].start_ms == pytest.approx(1000, abs=20)
    assert ep.in_speech  # the last 500 ms are still going on
    closing = ep.end_of_stream()
    assert len(closing) == 1 and isinstance(closing[0], SpeechEnded)


def test_endpointer_adapts_to_a_steady_noise_floor() -> None:
    """Steady hum louder than the absolute floor stops counting as speech; a louder voice still does."""
    hum = tone_pcm(12_000, amplitude=0.02)  # about -37 dBFS, above min_speech_dbfs
    ep = Endpointer(EndpointerConfig(end_silence_ms=400))
    first = feed_in_chunks(ep, hum, 4800)
    assert [type(e).__name__ for e in first] == ["SpeechStarted", "SpeechEnded"]  # heard at first ...
    assert not ep.in_speech  # ... then learnt as background
    loud = float32_to_pcm16(tone(300, 600, amplitude=0.3) + tone(300, 600, amplitude=0.02))
    assert any(isinstance(e, SpeechStarted) for e in ep.feed(loud))


# --- word error rate -----------------------------------------------------------------------------


def test_wer_normalises_case_and_punctuation() -> None:
    assert normalize_words("I'd like a PIZZA, with extra-cheese!") == ["i'd", "like", "a", "pizza", "with", "extra",
                                                                       "cheese"]
    assert word_error_rate("This is a test.", "this is a test") == 0.0


def test_wer_counts_substitutions_insertions_deletions() -> None:
    assert word_errors("the cat sat on the mat", "the cat sat on a mat") == (1, 6)
    assert word_errors("the cat sat", "the cat sat down") == (1, 3)
    assert word_errors("the cat sat", "cat sat") == (1, 3)
    assert word_error_rate("a b c d", "x y") == pytest.approx(1.0)
    assert word_error_rate("one two", "one two three four five") == pytest.approx(1.5)


def test_wer_of_empty_texts() -> None:
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("", "something") == 1.0
    assert word_error_rate("something", "") == 1.0
