"""The Realtime API's ``server_vad`` turn detection over the wire format
(PCM16 LE mono, 24 kHz), built on the energy endpointer of
:mod:`shared.audio`.

Pure module: no I/O, no asyncio. :class:`ServerVad` is fed the bytes of every
``input_audio_buffer.append`` and returns :class:`SpeechStarted` /
:class:`SpeechStopped` events with the hosted API's times and the turn's audio.

Times are whole ms of audio since the session's first appended byte, with the
hosted API's meaning (its documentation for the two events):

- ``audio_start_ms`` is where the turn's audio begins, so it *includes* the
  ``prefix_padding_ms`` before the detected start of speech (less when the
  session, the last ``clear()`` or the previous turn is more recent);
- ``audio_end_ms`` is where the turn's audio ends, so it *includes* the
  ``silence_duration_ms`` of silence that ended the turn (the trailing silence
  is kept, not cut: an energy detector marks a quiet word ending, a final "s"
  or "t", as silence, and the recogniser copes with silence but not with a
  clipped word). A turn cut at ``max_turn_ms`` ends where it was cut.

``SpeechStopped.audio`` is exactly the audio between the two, so
``len(audio) == (audio_end_ms - audio_start_ms) * 48`` bytes up to rounding.

Threshold mapping (``threshold`` is the GA 0..1 activation threshold; higher
needs louder speech). The endpointer calls a 20 ms frame voiced when its level
is at least ``max(min_speech_dbfs, background + noise_margin_db)``; both
terms rise linearly with the threshold::

    min_speech_dbfs = -70 + 50 * threshold   # -70 .. -20 dBFS
    noise_margin_db =   4 + 16 * threshold   #   4 ..  12 .. 20 dB

0.5 gives the endpointer's own defaults (-45 dBFS, 12 dB), which the local
recogniser was tuned with. Measured on an espeak-ng sentence (-21 dBFS
overall, its 20 ms frames at -25 dBFS median): at full level it is heard at
every threshold; 20 dB down (a distant talker) up to 0.5 and not from 0.7;
30 dB down only up to 0.3. A quiet room (-50 dBFS noise and below) is not
heard at 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared import audio
from shared.audio import PCM16_WIDTH_BYTES, Endpointer, EndpointerConfig
from shared.models import AUDIO_SAMPLE_RATE_HZ

_SAMPLES_PER_MS = AUDIO_SAMPLE_RATE_HZ // 1000

#: The floor and the margin at threshold 0 and their rise up to threshold 1 (see the module docstring).
_FLOOR_AT_ZERO_DBFS, _FLOOR_SPAN_DB = -70.0, 50.0
_MARGIN_AT_ZERO_DB, _MARGIN_SPAN_DB = 4.0, 16.0
#: The pre-roll is kept in memory before every turn, for every session: bound it. The hosted
#: API's limit is not documented; 10 s is far above any useful padding.
MAX_PREFIX_PADDING_MS = 10_000
#: Keys of a GA ``server_vad`` ``turn_detection`` object that the gateway itself acts on.
_GATEWAY_KEYS = frozenset({"create_response", "interrupt_response", "idle_timeout_ms"})
_VAD_KEYS = frozenset({"type", "threshold", "prefix_padding_ms", "silence_duration_ms"})


class TurnDetectionError(ValueError):
    """A ``turn_detection`` object the VAD cannot take; ``param`` names the offending field
    (for the ``error.param`` of an ``invalid_request_error``)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class ServerVadConfig:
    """Settings of :class:`ServerVad`. ``max_turn_ms`` is the gateway's own bound (not a GA
    field): speech longer than that is stopped there and goes on as a new turn."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    max_turn_ms: int = 30_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise TurnDetectionError(f"threshold must be within [0, 1], got {self.threshold}", "threshold")
        if not 0 <= self.prefix_padding_ms <= MAX_PREFIX_PADDING_MS:
            raise TurnDetectionError(
                f"prefix_padding_ms must be within [0, {MAX_PREFIX_PADDING_MS}], got {self.prefix_padding_ms}",
                "prefix_padding_ms",
            )
        if self.silence_duration_ms < 0:
            raise TurnDetectionError(
                f"silence_duration_ms must be >= 0, got {self.silence_duration_ms}", "silence_duration_ms"
            )
        if self.max_turn_ms <= 0:
            raise TurnDetectionError(f"max_turn_ms must be > 0, got {self.max_turn_ms}", "max_turn_ms")

    @classmethod
    def from_turn_detection(cls, turn_detection: Mapping[str, Any], *, max_turn_ms: int = 30_000) -> ServerVadConfig:
        """Read a GA ``turn_detection`` object (``{"type": "server_vad", "threshold": 0.5, ...}``).

        Missing or null fields take the defaults; ``create_response``,
        ``interrupt_response`` and ``idle_timeout_ms`` are left to the gateway.
        Raises :class:`TurnDetectionError` for another ``type`` (``semantic_vad``
        is not served), an unknown field (the hosted API rejects those too) or
        a value of the wrong type or range.
        """
        kind = turn_detection.get("type")
        if kind != "server_vad":
            raise TurnDetectionError(f"turn_detection type {kind!r} is not supported (only 'server_vad')", "type")
        unknown = sorted(set(turn_detection) - _VAD_KEYS - _GATEWAY_KEYS)
        if unknown:
            raise TurnDetectionError(f"unknown turn_detection parameter {unknown[0]!r}", unknown[0])
        defaults = cls()
        return cls(
            threshold=_number(turn_detection, "threshold", defaults.threshold),
            prefix_padding_ms=_whole(turn_detection, "prefix_padding_ms", defaults.prefix_padding_ms),
            silence_duration_ms=_whole(turn_detection, "silence_duration_ms", defaults.silence_duration_ms),
            max_turn_ms=max_turn_ms,
        )

    def endpointer_config(self) -> EndpointerConfig:
        """The :class:`~shared.audio.EndpointerConfig` these settings stand for."""
        return EndpointerConfig(
            sample_rate_hz=AUDIO_SAMPLE_RATE_HZ,
            min_speech_dbfs=_FLOOR_AT_ZERO_DBFS + _FLOOR_SPAN_DB * self.threshold,
            noise_margin_db=_MARGIN_AT_ZERO_DB + _MARGIN_SPAN_DB * self.threshold,
            end_silence_ms=float(self.silence_duration_ms),
            max_utterance_ms=float(self.max_turn_ms),
        )


def _number(fields: Mapping[str, Any], key: str, default: float) -> float:
    value = fields.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TurnDetectionError(f"{key} must be a number, got {value!r}", key)
    return float(value)


def _whole(fields: Mapping[str, Any], key: str, default: int) -> int:
    value = fields.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise TurnDetectionError(f"{key} must be an integer, got {value!r}", key)
    return value


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """A turn began; its audio starts at ``audio_start_ms`` (prefix padding included)."""

    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """A turn ended at ``audio_end_ms`` (the ending silence included); ``audio`` is its PCM16,
    from the matching ``audio_start_ms`` to ``audio_end_ms``."""

    audio_end_ms: int
    audio: bytes


VadEvent = SpeechStarted | SpeechStopped


class ServerVad:
    """Server-side turn detection for one session's input audio.

    :meth:`feed` takes the appended bytes (any size, odd counts too: a
    trailing half sample waits for the next call) and returns the events they
    caused, in order; one call may hold several turns. Each
    :class:`SpeechStarted` is followed by exactly one :class:`SpeechStopped`,
    unless :meth:`clear` drops the turn first.

    Memory: outside a turn only the pre-roll (``prefix_padding_ms`` plus the
    few frames of a start being confirmed) is kept; inside one, the turn's
    audio, at most ``prefix_padding_ms + max_turn_ms`` plus one feed.
    """

    def __init__(self, config: ServerVadConfig | None = None) -> None:
        self.config = config or ServerVadConfig()
        self._endpointer = Endpointer(self.config.endpointer_config())
        self._prefix_samples = self.config.prefix_padding_ms * _SAMPLES_PER_MS
        #: Bytes appended since the session began (the clock), and the kept tail of them.
        self._appended_bytes = 0
        self._buffer = bytearray()
        self._buffer_start_sample = 0
        #: Session sample of the endpointer's time 0 (moved by clear(), which drops a partial frame).
        self._offset_samples = 0
        self._turn_start_sample: int | None = None

    @property
    def in_speech(self) -> bool:
        """True between a :class:`SpeechStarted` and its :class:`SpeechStopped`."""
        return self._turn_start_sample is not None

    @property
    def audio_ms(self) -> int:
        """Whole ms of audio appended since the session began (the clock of the events)."""
        return _ms(self._appended_bytes // PCM16_WIDTH_BYTES)

    @property
    def buffered_bytes(self) -> int:
        """Audio held right now (the pre-roll, or the turn so far)."""
        return len(self._buffer)

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """Append ``pcm`` to the session's audio; return the turn events it caused."""
        self._buffer += pcm
        self._appended_bytes += len(pcm)
        events: list[VadEvent] = []
        for event in self._endpointer.feed(pcm):
            if isinstance(event, audio.SpeechStarted):
                start = max(self._session_sample(event.start_ms) - self._prefix_samples, self._buffer_start_sample)
                self._turn_start_sample = start
                events.append(SpeechStarted(_ms(start)))
            else:
                events.append(self._stop(self._session_sample(event.decided_ms)))
        if self._turn_start_sample is None:
            # Keep the pre-roll of a start not yet confirmed (the voiced frames so far) or of the next one.
            pending_start_ms = self._endpointer.position_ms - self._endpointer.pending_voiced_ms
            self._drop_before(self._session_sample(pending_start_ms) - self._prefix_samples)
        return events

    def clear(self) -> None:
        """Drop the buffered audio and any turn in progress (``input_audio_buffer.clear``), with
        no event. The clock keeps running, and so does the learnt background level."""
        # end_of_stream() closes the endpointer's utterance and drops its partial frame; the
        # event it returns is not wanted: a cleared turn just disappears.
        self._endpointer.end_of_stream()
        self._appended_bytes -= self._appended_bytes % PCM16_WIDTH_BYTES  # a half sample is dropped too
        appended_samples = self._appended_bytes // PCM16_WIDTH_BYTES
        self._offset_samples = appended_samples - _samples(self._endpointer.position_ms)
        self._buffer.clear()
        self._buffer_start_sample = appended_samples
        self._turn_start_sample = None

    def _stop(self, end_sample: int) -> SpeechStopped:
        assert self._turn_start_sample is not None, "the endpointer ended a turn it never started"
        first = (self._turn_start_sample - self._buffer_start_sample) * PCM16_WIDTH_BYTES
        last = (end_sample - self._buffer_start_sample) * PCM16_WIDTH_BYTES
        event = SpeechStopped(_ms(end_sample), bytes(self._buffer[first:last]))
        self._turn_start_sample = None
        # The next turn's padding never reaches back into this one.
        self._drop_before(end_sample)
        return event

    def _drop_before(self, sample: int) -> None:
        if sample <= self._buffer_start_sample:
            return
        del self._buffer[: (sample - self._buffer_start_sample) * PCM16_WIDTH_BYTES]
        self._buffer_start_sample = sample

    def _session_sample(self, endpointer_ms: float) -> int:
        return self._offset_samples + _samples(endpointer_ms)


def _samples(ms: float) -> int:
    # Endpointer times are whole frames of whole samples: rounding only removes float noise.
    return round(ms * _SAMPLES_PER_MS)


def _ms(samples: int) -> int:
    return samples // _SAMPLES_PER_MS
