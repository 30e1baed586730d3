"""Text to speech for the simulator (its phrases) and the gateway (its spoken
answers): a small ctypes wrapper around the libespeak-ng that
``espeakng-loader`` bundles (with its voice data), so no system package and
no network are needed.

:func:`synthesize` returns PCM16 LE mono at 24 kHz (the wire format). The
library is initialised once per process, on first use; espeak-ng keeps global
state, so calls are serialised by a lock (safe from several threads, one
synthesis at a time, about 15 ms per sentence).

Exceptions::

    TTSError   (the package is missing, the library fails to load or to speak)
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from shared.audio import float32_to_pcm16, pcm16_to_float32, resample
from shared.engines.choice import LOCAL_INSTALL_HINT
from shared.models import AUDIO_SAMPLE_RATE_HZ

#: espeak_AUDIO_OUTPUT: AUDIO_OUTPUT_SYNCHRONOUS (samples go to the callback, espeak_Synth blocks).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
#: espeak_POSITION_TYPE: POS_CHARACTER.
_POS_CHARACTER = 1
#: espeakCHARS_UTF8 | espeakENDPAUSE (a short pause at the end, like a spoken sentence).
_SYNTH_FLAGS = 0x1 | 0x1000
#: espeak_PARAMETER: espeakRATE (words per minute).
_ESPEAK_RATE = 1
_EE_OK = 0

#: American English with the "f3" voice variant. Over the simulator's five phrases the local
#: tiny.en recogniser does about as well on it as on plain en-us (8-13% WER for both, run to
#: run; bench/local_engines_probe.py --voice), but it is steadier: on the two sentences the
#: tests use, 30 of 30 syntheses came back with at most one word wrong, against 14 of 30.
DEFAULT_VOICE = "en-us+f3"
#: espeak-ng's own default speaking rate.
DEFAULT_RATE_WPM = 175

# typedef int (t_espeak_callback)(short *wav, int numsamples, espeak_EVENT *events);
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class TTSError(RuntimeError):
    """Speech synthesis is not available or failed; the message says why."""


class _Espeak:
    """The loaded library and its output buffer (one per process)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise TTSError(
                f"speech synthesis needs espeakng-loader: {LOCAL_INSTALL_HINT}"
            ) from exc
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as exc:
            raise TTSError(f"cannot load the bundled libespeak-ng: {exc}") from exc
        lib.espeak_Initialize.restype = ctypes.c_int  # the sample rate, or an error below 0
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_Synchronize.restype = ctypes.c_int
        rate_hz = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if rate_hz <= 0:
            raise TTSError(f"espeak_Initialize failed ({rate_hz}) with data at {data_path}")
        self.lib = lib
        self.rate_hz = int(rate_hz)
        self._parts: list[bytes] = []
        # Keep a reference: the C library holds the pointer for the life of the process.
        self._callback = _SynthCallback(self._on_samples)
        lib.espeak_SetSynthCallback(self._callback)
        self.voice: str | None = None

    def _on_samples(self, wav: Any, n_samples: int, events: Any) -> int:
        if wav and n_samples > 0:
            self._parts.append(ctypes.string_at(wav, n_samples * 2))
        return 0  # 0: go on synthesising

    def speak(self, text: str, voice: str, rate_wpm: int) -> bytes:
        if voice != self.voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise TTSError(f"espeak-ng has no voice {voice!r}")
            self.voice = voice
        if self.lib.espeak_SetParameter(_ESPEAK_RATE, rate_wpm, 0) != _EE_OK:
            raise TTSError(f"espeak-ng rejected the rate {rate_wpm} wpm")
        raw = text.encode() + b"\0"
        self._parts = []
        err = self.lib.espeak_Synth(raw, len(raw), 0, _POS_CHARACTER, 0, _SYNTH_FLAGS, None, None)
        if err != _EE_OK:
            raise TTSError(f"espeak_Synth failed with code {err}")
        self.lib.espeak_Synchronize()
        pcm, self._parts = b"".join(self._parts), []
        return pcm


_lock = threading.Lock()
_engine: _Espeak | None = None


def _get() -> _Espeak:
    global _engine
    if _engine is None:
        _engine = _Espeak()
    return _engine


def synthesize(
    text: str,
    *,
    voice: str = DEFAULT_VOICE,
    rate_wpm: int = DEFAULT_RATE_WPM,
    sample_rate_hz: int = AUDIO_SAMPLE_RATE_HZ,
) -> bytes:
    """Speak ``text``; return PCM16 LE mono at ``sample_rate_hz`` (24 kHz by default).

    ``voice`` is an espeak-ng voice name, optionally with a variant
    (``en-us+f3``). The output varies slightly from call to call (espeak-ng
    adds noise and keeps some state between calls). Empty or blank text gives
    ``b""``. Raises :class:`TTSError` when espeak-ng is
    missing or fails.
    """
    if not text.strip():
        return b""
    with _lock:
        engine = _get()
        pcm = engine.speak(text, voice, rate_wpm)
        native_hz = engine.rate_hz
    if native_hz == sample_rate_hz or not pcm:
        return pcm
    return float32_to_pcm16(resample(pcm16_to_float32(pcm), native_hz, sample_rate_hz))


def native_sample_rate_hz() -> int:
    """The rate espeak-ng produces (22050 Hz for the bundled build); loads the library."""
    with _lock:
        return _get().rate_hz
