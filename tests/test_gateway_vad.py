"""The gateway's server VAD (gateway_svc/vad.py): turns found in espeak-ng speech,
their times and audio, silence and noise ignored, clear(), any feed sizes,
max_turn_ms, and reading the GA turn_detection object. Pure: no I/O."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway_svc.vad import (
    MAX_PREFIX_PADDING_MS,
    ServerVad,
    ServerVadConfig,
    SpeechStarted,
    SpeechStopped,
    TurnDetectionError,
    VadEvent,
)
from shared.audio import float32_to_pcm16, pcm16_to_float32, rms_dbfs, silence_pcm
from shared.models import AUDIO_SAMPLE_RATE_HZ
from shared.tts import synthesize

RATE_HZ = AUDIO_SAMPLE_RATE_HZ
BYTES_PER_MS = RATE_HZ // 1000 * 2
FIRST = "This is a test of the transcription system."
SECOND = "The weather today is sunny with a chance of rain."


@pytest.fixture(scope="module")
def speech() -> bytes:
    return synthesize(FIRST)


@pytest.fixture(scope="module")
def second_speech() -> bytes:
    return synthesize(SECOND)


def silence(ms: int) -> bytes:
    return silence_pcm(ms, RATE_HZ)


def noise(ms: int, rms: float, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    return float32_to_pcm16(rng.normal(0.0, rms, ms * RATE_HZ // 1000).astype(np.float32))


def feed(vad: ServerVad, pcm: bytes, piece_bytes: int | None = None) -> list[VadEvent]:
    step = piece_bytes or max(1, len(pcm))
    events: list[VadEvent] = []
    for i in range(0, len(pcm), step):
        events.extend(vad.feed(pcm[i : i + step]))
    return events


def voiced_span_ms(pcm: bytes, offset_ms: int) -> tuple[int, int]:
    """First and last+1 ms of the 10 ms frames of ``pcm`` louder than -40 dBFS, in stream time."""
    frames = pcm16_to_float32(pcm)[: len(pcm) // 2 // 240 * 240].reshape(-1, 240)
    loud = [i for i, frame in enumerate(frames) if rms_dbfs(frame) > -40.0]
    return offset_ms + loud[0] * 10, offset_ms + (loud[-1] + 1) * 10


def turns(events: list[VadEvent]) -> list[tuple[int, int, bytes]]:
    """(audio_start_ms, audio_end_ms, audio) of each turn; checks that starts and stops alternate."""
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped] * (len(events) // 2)
    result = []
    for start, stop in zip(events[::2], events[1::2], strict=True):
        assert isinstance(start, SpeechStarted) and isinstance(stop, SpeechStopped)
        result.append((start.audio_start_ms, stop.audio_end_ms, stop.audio))
    return result


def test_one_sentence_gives_one_turn_with_padding_and_trailing_silence(speech: bytes) -> None:
    stream = silence(1000) + speech + silence(1500)
    vad = ServerVad()
    events = feed(vad, stream, 4800)
    [(start_ms, end_ms, audio)] = turns(events)
    first_voiced_ms, last_voiced_ms = voiced_span_ms(speech, 1000)
    # audio_start_ms includes the 300 ms prefix padding, audio_end_ms the 500 ms of silence.
    assert first_voiced_ms - 300 - 40 <= start_ms <= first_voiced_ms - 300 + 40
    assert last_voiced_ms + 500 - 60 <= end_ms <= last_voiced_ms + 500 + 60
    # The audio is exactly the stream between the two times, so it holds all of the speech.
    assert audio == stream[start_ms * BYTES_PER_MS : end_ms * BYTES_PER_MS]
    assert start_ms < first_voiced_ms and last_voiced_ms < end_ms
    assert not vad.in_speech
    assert vad.audio_ms == len(stream) // BYTES_PER_MS


def test_in_speech_between_start_and_stop(speech: bytes) -> None:
    vad = ServerVad()
    assert feed(vad, silence(500)) == [] and not vad.in_speech
    started = feed(vad, speech)
    assert [type(e) for e in started] == [SpeechStarted] and vad.in_speech
    assert [type(e) for e in feed(vad, silence(1000))] == [SpeechStopped] and not vad.in_speech


def test_silence_and_room_noise_give_nothing_and_keep_only_the_preroll() -> None:
    vad = ServerVad()
    for quiet in (silence(3000), noise(5000, 0.003), noise(5000, 0.0015, seed=2)):  # -50 and -56 dBFS
        assert feed(vad, quiet, 4800) == []
    assert not vad.in_speech
    # Before speech only the pre-roll (300 ms, plus a partial 20 ms frame) is held, whatever was fed.
    assert vad.buffered_bytes <= (300 + 20) * BYTES_PER_MS


def test_two_sentences_a_second_apart_are_two_turns(speech: bytes, second_speech: bytes) -> None:
    stream = silence(500) + speech + silence(1000) + second_speech + silence(1000)
    [(start1, end1, audio1), (start2, end2, audio2)] = turns(feed(ServerVad(), stream, 4800))
    assert start1 < end1 <= start2 < end2 <= len(stream) // BYTES_PER_MS
    second_voiced_ms, _ = voiced_span_ms(second_speech, 500 + len(speech) // BYTES_PER_MS + 1000)
    assert start2 <= second_voiced_ms - 250  # the second turn has its padding too
    assert audio1 == stream[start1 * BYTES_PER_MS : end1 * BYTES_PER_MS]
    assert audio2 == stream[start2 * BYTES_PER_MS : end2 * BYTES_PER_MS]


@pytest.mark.parametrize("piece_bytes", [480, 333, 4801, 96_001])
def test_any_feed_sizes_give_the_same_events(speech: bytes, second_speech: bytes, piece_bytes: int) -> None:
    """10 ms pieces, odd sizes that split samples, and big pieces all agree with one feed."""
    stream = silence(700) + speech + silence(1000) + second_speech + silence(900)
    expected = feed(ServerVad(), stream)
    assert len(expected) == 4
    assert feed(ServerVad(), stream, piece_bytes) == expected


def test_clear_mid_speech_drops_the_turn_and_keeps_the_clock(speech: bytes) -> None:
    half = len(speech) // 2 // 2 * 2
    vad = ServerVad()
    events = feed(vad, silence(1000) + speech[:half] + b"\x01", 4800)  # an odd byte left pending
    assert [type(e) for e in events] == [SpeechStarted] and vad.in_speech
    vad.clear()
    assert not vad.in_speech and vad.buffered_bytes == 0
    cleared_at_ms = vad.audio_ms
    assert cleared_at_ms == (1000 * BYTES_PER_MS + half) // BYTES_PER_MS
    # The cleared turn never stops; silence after the clear says nothing.
    assert feed(vad, silence(2000), 4800) == []
    # Later speech is a new turn on the same clock, with nothing from before the clear.
    later = feed(vad, speech + silence(1000), 4800)
    [(start_ms, end_ms, audio)] = turns(later)
    first_voiced_ms, _ = voiced_span_ms(speech, cleared_at_ms + 2000)
    assert cleared_at_ms + 2000 - 300 <= start_ms < first_voiced_ms
    assert len(audio) == (end_ms - start_ms) * BYTES_PER_MS


def test_speech_right_after_clear_is_padded_only_back_to_the_clear(speech: bytes) -> None:
    vad = ServerVad()
    feed(vad, silence(1000))
    vad.clear()
    [(start_ms, end_ms, audio)] = turns(feed(vad, speech + silence(1000)))
    assert start_ms >= 1000
    assert audio[: 20 * BYTES_PER_MS] == speech[: 20 * BYTES_PER_MS]  # nothing from before the clear


def test_a_turn_longer_than_max_turn_ms_is_stopped_there() -> None:
    t = np.arange(2600 * RATE_HZ // 1000) / RATE_HZ
    tone = float32_to_pcm16((0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
    stream = silence(1000) + tone + silence(1000)
    vad = ServerVad(ServerVadConfig(max_turn_ms=1000))
    result = turns(feed(vad, stream, 4800))
    assert len(result) == 3  # 1000 + 1000 ms cut, then the last 600 ms ends on silence
    (start1, end1, audio1), (start2, end2, _), (start3, end3, _) = result
    assert start1 == 700  # the tone starts at 1000 ms: 300 ms of padding
    assert end1 == 2000  # 1000 ms of speech after its detected start
    # A cut turn goes on as the next one, with no overlap (no padding back into the previous turn).
    assert start2 == end1 and start3 == end2
    assert end2 == 3000 and 3600 < end3 <= 3600 + 500 + 20
    assert audio1 == stream[start1 * BYTES_PER_MS : end1 * BYTES_PER_MS]


def test_threshold_maps_monotonically_and_05_is_the_endpointer_default() -> None:
    floors = [ServerVadConfig(threshold=t / 10).endpointer_config() for t in range(11)]
    assert all(a.min_speech_dbfs < b.min_speech_dbfs for a, b in zip(floors, floors[1:], strict=False))
    assert all(a.noise_margin_db < b.noise_margin_db for a, b in zip(floors, floors[1:], strict=False))
    middle = ServerVadConfig(threshold=0.5).endpointer_config()
    assert (middle.min_speech_dbfs, middle.noise_margin_db) == (-45.0, 12.0)


def test_a_higher_threshold_needs_louder_speech(speech: bytes) -> None:
    quiet = float32_to_pcm16(pcm16_to_float32(speech) * 0.1)  # 20 dB down
    stream = silence(500) + quiet + silence(1000)
    assert len(turns(feed(ServerVad(ServerVadConfig(threshold=0.2)), stream))) >= 1
    assert feed(ServerVad(ServerVadConfig(threshold=0.9)), stream) == []


def test_turn_detection_object_is_read_with_defaults() -> None:
    config = ServerVadConfig.from_turn_detection({
        "type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 200, "silence_duration_ms": 800,
        "create_response": True, "interrupt_response": False, "idle_timeout_ms": None,
    })
    assert config == ServerVadConfig(threshold=0.7, prefix_padding_ms=200, silence_duration_ms=800)
    assert ServerVadConfig.from_turn_detection({"type": "server_vad", "threshold": None}) == ServerVadConfig()
    assert ServerVadConfig.from_turn_detection({"type": "server_vad", "threshold": 1}).threshold == 1.0
    assert ServerVadConfig.from_turn_detection({"type": "server_vad"}, max_turn_ms=5000).max_turn_ms == 5000


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"type": "semantic_vad", "eagerness": "auto"}, "type"),
        ({"threshold": 0.5}, "type"),
        ({"type": "server_vad", "eagerness": "low"}, "eagerness"),
        ({"type": "server_vad", "threshold": 1.5}, "threshold"),
        ({"type": "server_vad", "threshold": "high"}, "threshold"),
        ({"type": "server_vad", "threshold": True}, "threshold"),
        ({"type": "server_vad", "prefix_padding_ms": -1}, "prefix_padding_ms"),
        ({"type": "server_vad", "prefix_padding_ms": MAX_PREFIX_PADDING_MS + 1}, "prefix_padding_ms"),
        ({"type": "server_vad", "silence_duration_ms": 500.5}, "silence_duration_ms"),
        ({"type": "server_vad", "silence_duration_ms": -20}, "silence_duration_ms"),
    ],
)
def test_turn_detection_object_errors_name_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(TurnDetectionError) as raised:
        ServerVadConfig.from_turn_detection(fields)
    assert raised.value.param == param
