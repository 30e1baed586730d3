"""Audio helpers for the wire format (PCM16 little-endian mono, 24 kHz) and a
pure energy endpointer.

Pure module: numpy only, no I/O, no asyncio. Sample arrays are float32 in
[-1.0, 1.0); PCM is ``bytes`` of little-endian signed 16-bit samples.

- conversions: :func:`pcm16_to_float32`, :func:`float32_to_pcm16`, :func:`to_mono`
- resampling: :func:`resample` (windowed-sinc polyphase for rational ratios,
  linear interpolation as a fallback for awkward ratios)
- chunking: :func:`chunk_pcm`, :func:`pcm_duration_ms`, :func:`silence_pcm`
- endpointing: :class:`Endpointer` fed PCM of any size, reporting
  :class:`SpeechStarted` / :class:`SpeechEnded` events in stream time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

PCM16_WIDTH_BYTES = 2
_PCM16_SCALE = 32768.0
#: Zero crossings of the sinc kept on each side of the resampling filter: ~-60 dB
#: stop band with the Kaiser window below, plenty for speech recognition.
_SINC_ZEROS = 8
_KAISER_BETA = 6.0
#: Above this interpolation/decimation factor the polyphase table gets large
#: (e.g. 44056 -> 24000 Hz): fall back to linear interpolation.
_MAX_POLYPHASE_FACTOR = 2048


# --- conversions --------------------------------------------------------------------


def pcm16_to_float32(pcm: bytes) -> FloatArray:
    """PCM16 LE bytes -> float32 samples in [-1, 1). Raises ValueError on an odd byte count."""
    if len(pcm) % PCM16_WIDTH_BYTES:
        raise ValueError(f"PCM16 needs an even number of bytes, got {len(pcm)}")
    return (np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(_PCM16_SCALE)).astype(np.float32)


def float32_to_pcm16(samples: npt.ArrayLike) -> bytes:
    """Float samples (clipped to [-1, 1]) -> PCM16 LE bytes, rounded to nearest."""
    arr = np.asarray(samples, dtype=np.float64)
    scaled = np.clip(np.rint(arr * _PCM16_SCALE), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def to_mono(samples: npt.ArrayLike) -> FloatArray:
    """Average the channels of a ``(frames, channels)`` array; a 1-D array is already mono."""
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim == 1:
        return arr
    if arr.ndim != 2:
        raise ValueError(f"expected (frames, channels), got shape {arr.shape}")
    mono: FloatArray = arr.mean(axis=1, dtype=np.float32)
    return mono


def deinterleave(samples: npt.ArrayLike, channels: int) -> FloatArray:
    """Interleaved 1-D samples -> ``(frames, channels)``; a trailing partial frame is dropped."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    arr = np.asarray(samples, dtype=np.float32)
    frames = len(arr) // channels
    return arr[: frames * channels].reshape(frames, channels)


# --- resampling -----------------------------------------------------------------------


def resampled_length(n_samples: int, from_hz: int, to_hz: int) -> int:
    """Output length of :func:`resample`: ``ceil(n * to / from)``."""
    return -(-n_samples * to_hz // from_hz)


def resample(samples: npt.ArrayLike, from_hz: int, to_hz: int) -> FloatArray:
    """Resample mono float samples from ``from_hz`` to ``to_hz``.

    Returns ``resampled_length(len(samples), from_hz, to_hz)`` samples. Rational
    ratios with small factors (22050->24000, 24000->16000, 44100->24000, ...)
    use a Kaiser-windowed sinc polyphase filter whose cutoff is the lower
    Nyquist frequency (no aliasing when downsampling); other ratios use linear
    interpolation. The whole signal is processed at once: calling this on
    consecutive chunks separately leaves small seams at the chunk edges.
    """
    if from_hz <= 0 or to_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {from_hz} -> {to_hz}")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError("resample takes mono (1-D) samples; use to_mono first")
    if from_hz == to_hz or len(x) == 0:
        return x.copy()
    g = math.gcd(from_hz, to_hz)
    up, down = to_hz // g, from_hz // g
    if max(up, down) > _MAX_POLYPHASE_FACTOR:
        return _resample_linear(x, from_hz, to_hz)
    return _resample_polyphase(x, up, down)


def _resample_linear(x: FloatArray, from_hz: int, to_hz: int) -> FloatArray:
    n_out = resampled_length(len(x), from_hz, to_hz)
    positions = np.arange(n_out, dtype=np.float64) * (from_hz / to_hz)
    return np.interp(positions, np.arange(len(x), dtype=np.float64), x).astype(np.float32)


def _polyphase_filter(up: int, down: int) -> tuple[npt.NDArray[np.float64], int]:
    """The low-pass filter (at ``up`` times the input rate), reshaped to
    ``(up, taps_per_phase)``, and its centre index in the upsampled domain."""
    width = max(up, down)  # sinc zero-crossing spacing, in upsampled samples
    half = _SINC_ZEROS * width
    k = np.arange(-half, half + 1, dtype=np.float64)
    h = np.sinc(k / width) * np.kaiser(2 * half + 1, _KAISER_BETA) * (up / width)
    taps = -(-len(h) // up)
    padded = np.zeros(taps * up, dtype=np.float64)
    padded[: len(h)] = h
    # phase p holds h[p], h[p + up], h[p + 2 up], ...
    return padded.reshape(taps, up).T.copy(), half


def _resample_polyphase(x: FloatArray, up: int, down: int) -> FloatArray:
    table, half = _polyphase_filter(up, down)
    taps = table.shape[1]
    n_out = resampled_length(len(x), down, up)
    # y[n] = sum_j h[phase + j*up] * x[base - j], with phase/base from the upsampled position.
    pos = np.arange(n_out, dtype=np.int64) * down + half
    phase = pos % up
    base = pos // up
    # Pad so every base - j index (j < taps) is valid; padding is zeros.
    pad_left = taps
    xp = np.concatenate([np.zeros(pad_left, np.float64), x.astype(np.float64), np.zeros(taps + 1, np.float64)])
    base = np.minimum(base, len(x) + taps) + pad_left
    y = np.zeros(n_out, dtype=np.float64)
    for j in range(taps):
        y += table[phase, j] * xp[base - j]
    return y.astype(np.float32)


# --- chunking -----------------------------------------------------------------------


def pcm_duration_ms(pcm: bytes | int, sample_rate_hz: int) -> float:
    """Duration of PCM16 mono bytes (or of a byte count) in milliseconds."""
    n_bytes = pcm if isinstance(pcm, int) else len(pcm)
    return n_bytes / PCM16_WIDTH_BYTES * 1000.0 / sample_rate_hz


def silence_pcm(duration_ms: float, sample_rate_hz: int) -> bytes:
    """Digital silence (zeros) of ``duration_ms``, rounded down to whole samples."""
    return bytes(int(duration_ms * sample_rate_hz / 1000) * PCM16_WIDTH_BYTES)


def chunk_pcm(pcm: bytes, chunk_ms: float, sample_rate_hz: int) -> list[bytes]:
    """Split PCM16 mono into chunks of ``chunk_ms`` (whole samples; the last may be shorter).

    Concatenating the chunks gives ``pcm`` back. Empty input gives no chunk.
    """
    if chunk_ms <= 0:
        raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
    if len(pcm) % PCM16_WIDTH_BYTES:
        raise ValueError(f"PCM16 needs an even number of bytes, got {len(pcm)}")
    step_bytes = max(1, int(sample_rate_hz * chunk_ms / 1000)) * PCM16_WIDTH_BYTES
    return [pcm[i : i + step_bytes] for i in range(0, len(pcm), step_bytes)]


def rms_dbfs(samples: FloatArray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf dB floored at -120)."""
    if len(samples) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(-120.0, 20.0 * math.log10(rms)) if rms > 0 else -120.0


# --- endpointing -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began at ``start_ms`` (stream time: ms of audio fed since creation)."""

    start_ms: float


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """An utterance ended: speech ran from ``start_ms`` to ``end_ms`` (end of its
    last voiced frame); it was decided at ``decided_ms`` (after the hangover,
    or at once when ``reason == "max_length"``)."""

    start_ms: float
    end_ms: float
    decided_ms: float
    reason: Literal["silence", "max_length"]


EndpointEvent = SpeechStarted | SpeechEnded


@dataclass(frozen=True, slots=True)
class EndpointerConfig:
    """Thresholds of :class:`Endpointer` (all times in ms of audio, not wall clock)."""

    sample_rate_hz: int = 24_000
    #: Analysis frame: energy is measured per frame.
    frame_ms: float = 20.0
    #: A frame is voiced when its level is at least this (absolute floor) ...
    min_speech_dbfs: float = -45.0
    #: ... and at least this far above the tracked background level.
    noise_margin_db: float = 12.0
    #: Time constants of the background level: it rises slowly toward louder frames ...
    noise_rise_ms: float = 3000.0
    #: ... and falls quickly toward quieter ones.
    noise_fall_ms: float = 100.0
    #: Voiced audio needed (consecutive frames) before speech counts as started: ignores clicks.
    min_speech_ms: float = 60.0
    #: Silence after speech that ends the utterance (the hangover).
    end_silence_ms: float = 600.0
    #: An utterance is cut here even if speech goes on (bounds every buffer downstream).
    max_utterance_ms: float = 30_000.0


class Endpointer:
    """Energy-based speech endpointer: a pure state machine over PCM16 mono.

    Call :meth:`feed` with PCM of any size (odd byte counts too: the remainder
    is carried to the next call); it returns the events that audio caused, in
    order. Pure silence or noise below the thresholds never produces an event.
    It holds no audio beyond one partial frame: the caller keeps the audio
    (and whatever ids go with it) and cuts where :class:`SpeechEnded` says.
    After :class:`SpeechEnded` the next speech starts a new utterance.

    The threshold is the larger of ``min_speech_dbfs`` and the background
    level plus ``noise_margin_db``; the background level follows quiet frames
    quickly and loud ones slowly, so a steady noise (a hum, a fan) stops
    counting as speech after a few seconds while pauses between words keep the
    level down during real speech.
    """

    def __init__(self, config: EndpointerConfig | None = None) -> None:
        self.config = config or EndpointerConfig()
        c = self.config
        self._frame_samples = max(1, int(c.sample_rate_hz * c.frame_ms / 1000))
        self._frame_bytes = self._frame_samples * PCM16_WIDTH_BYTES
        self._frame_ms = self._frame_samples * 1000.0 / c.sample_rate_hz
        # Per-frame smoothing factors of the background level (exponential, time constants in ms).
        self._rise = 1.0 - math.exp(-self._frame_ms / c.noise_rise_ms)
        self._fall = 1.0 - math.exp(-self._frame_ms / c.noise_fall_ms)
        self._carry = b""
        self._pos_ms = 0.0
        self._noise_dbfs = -90.0
        self._voiced_run_ms = 0.0
        self._run_start_ms = 0.0
        self._in_speech = False
        self._speech_start_ms = 0.0
        self._last_voiced_end_ms = 0.0

    @property
    def in_speech(self) -> bool:
        """True between :class:`SpeechStarted` and :class:`SpeechEnded`."""
        return self._in_speech

    @property
    def position_ms(self) -> float:
        """Stream time of the audio analysed so far (whole frames)."""
        return self._pos_ms

    @property
    def pending_voiced_ms(self) -> float:
        """Voiced audio seen that has not (yet) become a :class:`SpeechStarted`."""
        return 0.0 if self._in_speech else self._voiced_run_ms

    def feed(self, pcm: bytes) -> list[EndpointEvent]:
        """Analyse ``pcm`` (appended to the stream); return the events it caused."""
        data = self._carry + pcm
        whole = len(data) - len(data) % self._frame_bytes
        self._carry = data[whole:]
        if not whole:
            return []
        frames = np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / np.float32(_PCM16_SCALE)
        events: list[EndpointEvent] = []
        for frame in frames.reshape(-1, self._frame_samples):
            self._frame(rms_dbfs(frame), events)
        return events

    def end_of_stream(self) -> list[EndpointEvent]:
        """No more audio is coming: close an utterance in progress (reason ``silence``)."""
        self._carry = b""
        events: list[EndpointEvent] = []
        if self._in_speech:
            events.append(self._end("silence"))
        self._voiced_run_ms = 0.0
        return events

    def _frame(self, level_dbfs: float, events: list[EndpointEvent]) -> None:
        c = self.config
        start_ms, self._pos_ms = self._pos_ms, self._pos_ms + self._frame_ms
        threshold = max(c.min_speech_dbfs, self._noise_dbfs + c.noise_margin_db)
        voiced = level_dbfs >= threshold
        # Background level by minimum tracking: it follows a quieter level at once (pauses
        # between words) and a louder one only slowly, so speech stays above it while a
        # steady hum becomes background within a few seconds.
        level = max(level_dbfs, -90.0)
        self._noise_dbfs += (self._fall if level < self._noise_dbfs else self._rise) * (level - self._noise_dbfs)
        if not self._in_speech:
            if not voiced:
                self._voiced_run_ms = 0.0
                return
            if self._voiced_run_ms == 0.0:
                self._run_start_ms = start_ms
            self._voiced_run_ms += self._frame_ms
            if self._voiced_run_ms >= c.min_speech_ms:
                self._in_speech = True
                self._speech_start_ms = self._run_start_ms
                self._last_voiced_end_ms = self._pos_ms
                events.append(SpeechStarted(self._speech_start_ms))
                self._check_max(events)
            return
        if voiced:
            self._last_voiced_end_ms = self._pos_ms
        elif self._pos_ms - self._last_voiced_end_ms >= c.end_silence_ms:
            events.append(self._end("silence"))
            return
        self._check_max(events)

    def _check_max(self, events: list[EndpointEvent]) -> None:
        if self._in_speech and self._pos_ms - self._speech_start_ms >= self.config.max_utterance_ms:
            events.append(self._end("max_length"))

    def _end(self, reason: Literal["silence", "max_length"]) -> SpeechEnded:
        end_ms = self._pos_ms if reason == "max_length" else self._last_voiced_end_ms
        event = SpeechEnded(self._speech_start_ms, end_ms, self._pos_ms, reason)
        self._in_speech = False
        self._voiced_run_ms = 0.0
        return event
