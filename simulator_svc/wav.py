"""Read a WAV file into the wire format (PCM16 LE mono, 24 kHz).

Uncompressed integer PCM only (what the stdlib ``wave`` module reads): any
sample rate, any channel count (averaged to mono), 8-bit unsigned or 16/24/32
bit signed samples. Anything else raises :class:`WavError` with a message
naming the file and the problem (not a WAV, compressed or float encoding,
no audio, truncated).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shared.audio import deinterleave, float32_to_pcm16, resample, to_mono
from shared.models import AUDIO_SAMPLE_RATE_HZ


class WavError(ValueError):
    """A WAV file that cannot be used; the message says which file and why."""


def _to_float(frames: bytes, width_bytes: int) -> npt.NDArray[np.float32]:
    if width_bytes == 1:  # 8-bit WAV is unsigned, centred on 128
        return ((np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if width_bytes == 2:
        return (np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)
    if width_bytes == 3:
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        value = np.where(value & 0x800000, value - (1 << 24), value)
        return (value.astype(np.float32) / float(1 << 23)).astype(np.float32)
    if width_bytes == 4:
        return (np.frombuffer(frames, dtype="<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    raise ValueError(f"unsupported sample width {width_bytes * 8} bits")


def read_wav(path: str | Path, sample_rate_hz: int = AUDIO_SAMPLE_RATE_HZ) -> bytes:
    """Return the file's audio as PCM16 LE mono at ``sample_rate_hz``.

    Raises :class:`WavError` for a file that cannot be read as uncompressed
    PCM WAV or that holds no samples; ``OSError`` propagates for a missing or
    unreadable file.
    """
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as wav:
            channels = wav.getnchannels()
            width_bytes = wav.getsampwidth()
            rate_hz = wav.getframerate()
            n_frames = wav.getnframes()
            frames = wav.readframes(n_frames)
    except wave.Error as exc:
        reason = str(exc)
        if "unknown format" in reason:
            reason += " (only uncompressed integer PCM is supported: no float, A-law, mu-law, ADPCM or extensible)"
        raise WavError(f"{path}: not a usable WAV file: {reason}") from exc
    except EOFError as exc:
        raise WavError(f"{path}: not a usable WAV file: it ends before its header does") from exc
    if width_bytes not in (1, 2, 3, 4):
        raise WavError(f"{path}: unsupported sample width of {width_bytes * 8} bits")
    if channels < 1 or rate_hz <= 0:
        raise WavError(f"{path}: invalid header ({channels} channels at {rate_hz} Hz)")
    frame_bytes = channels * width_bytes
    usable = len(frames) - len(frames) % frame_bytes
    if usable == 0:
        raise WavError(f"{path}: the file holds no audio samples")
    samples = _to_float(frames[:usable], width_bytes)
    mono = to_mono(deinterleave(samples, channels))
    return float32_to_pcm16(resample(mono, rate_hz, sample_rate_hz))
