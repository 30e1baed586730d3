"""Audio mode of the simulator: one utterance sent as speech.

:func:`publish_audio_utterance` writes ``audio.chunk`` entries (``chunk_ms``
each, labelled with the utterance id, paced at real time divided by
``realtime_factor``) then one ``audio.end`` carrying the end-of-speech time
and the text that was spoken (the reference for a word error rate). The PCM
comes from :func:`speech_pcm` (espeak-ng, cached per text) or a WAV file
(:func:`simulator_svc.wav.read_wav`).

Wiring into the simulator (the lead integrates): where ``Simulation._send``
adds an ``utterance.text`` entry, audio mode awaits
``publish_audio_utterance(...)`` in its own task per conversation (so one
conversation's pacing never delays another's) and records the returned
``sent_ms`` with the tracker.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import time
from typing import Any

from shared.audio import Endpointer, EndpointerConfig, SpeechStarted, chunk_pcm, silence_pcm
from shared.bus.doorbell import add_with_rings
from shared.keys import Keys
from shared.models import (
    AUDIO_SAMPLE_RATE_HZ,
    MAX_AUDIO_CHUNK_BYTES,
    MAX_TEXT_CHARS,
    AudioChunk,
    AudioEnd,
    encode,
    now_ms,
)
from shared.tts import synthesize

DEFAULT_CHUNK_MS = 100
#: Chunks due within this much of each other go out in one write (fewer round trips).
_BATCH_WINDOW_S = 0.005


@functools.lru_cache(maxsize=256)
def speech_pcm(text: str, trailing_silence_ms: int = 0) -> bytes:
    """PCM16 mono 24 kHz of ``text`` spoken by espeak-ng (cached: the simulator repeats its phrases).

    ``trailing_silence_ms`` of digital silence is appended, e.g. to let a
    server-side endpointer hear the end of speech.
    """
    return synthesize(text) + silence_pcm(trailing_silence_ms, AUDIO_SAMPLE_RATE_HZ)


def speech_onset_ms(pcm: bytes) -> float | None:
    """Where the first voiced audio of ``pcm`` (PCM16 24 kHz) begins, in ms from its start: the
    start of the first voiced run an energy endpointer takes for speech (the gateway's server
    VAD, at its default threshold, calls the same run speech). None: no speech in it."""
    events = Endpointer(EndpointerConfig(sample_rate_hz=AUDIO_SAMPLE_RATE_HZ)).feed(pcm)
    return next((e.start_ms for e in events if isinstance(e, SpeechStarted)), None)


async def publish_audio_utterance(
    redis: Any,
    keys: Keys,
    conversation_id: str,
    utterance_id: str | None,
    pcm: bytes,
    text: str | None,
    chunk_ms: float = DEFAULT_CHUNK_MS,
    realtime_factor: float = 1.0,
    maxlen: int | None = None,
) -> int:
    """Send ``pcm`` (PCM16 LE mono 24 kHz) as one utterance; return its ``sent_ms``.

    Chunk ``k`` goes out ``k * chunk_ms / realtime_factor`` after the first
    (``realtime_factor`` 1.0: as a microphone would; a large factor: as fast
    as Redis takes them). Every chunk carries ``utterance_id`` (None: an
    unlabelled stream that the transcriber cuts on silence). ``audio.end``
    follows with ``sent_ms`` = wall clock (ms since epoch) when the last chunk
    was sent (the end of speech) and ``reference_text`` = ``text``.
    ``maxlen`` trims the input stream approximately (XADD MAXLEN ~).

    ``redis`` is a ``redis.asyncio.Redis``; connection errors propagate.
    """
    if chunk_ms <= 0 or realtime_factor <= 0:
        raise ValueError("chunk_ms and realtime_factor must be positive")
    if chunk_ms * AUDIO_SAMPLE_RATE_HZ / 1000 * 2 > MAX_AUDIO_CHUNK_BYTES:
        raise ValueError(f"chunk_ms {chunk_ms} is over the {MAX_AUDIO_CHUNK_BYTES}-byte chunk limit")
    key = keys.input(conversation_id)
    chunks = chunk_pcm(pcm, chunk_ms, AUDIO_SAMPLE_RATE_HZ)
    step_s = chunk_ms / 1000.0 / realtime_factor
    start_s = time.monotonic()
    seq = 0
    while seq < len(chunks):
        delay_s = start_s + seq * step_s - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        writes: list[tuple[str, bytes | str, int | None]] = []
        horizon_s = time.monotonic() + _BATCH_WINDOW_S
        while seq < len(chunks) and start_s + seq * step_s <= horizon_s:
            entry = AudioChunk(conversation_id=conversation_id, utterance_id=utterance_id, seq=seq,
                               audio=_b64(chunks[seq]))
            writes.append((key, encode(entry), maxlen or None))
            seq += 1
        await add_with_rings(redis, keys, writes)
    if chunks:
        # The last chunk holds the last chunk_ms of speech: speech ends when it would have been captured.
        end_delay_s = start_s + len(chunks) * step_s - time.monotonic()
        if end_delay_s > 0:
            await asyncio.sleep(end_delay_s)
    sent_ms = now_ms()
    end = AudioEnd(conversation_id=conversation_id, utterance_id=utterance_id, sent_ms=sent_ms,
                   reference_text=text[:MAX_TEXT_CHARS] if text else None)
    await add_with_rings(redis, keys, [(key, encode(end), maxlen or None)])
    return sent_ms


def _b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()
