"""Measure the gateway's speech pieces on this machine (figures, never asserted in tests).

    python -m bench.gateway_speech [--rounds 5] [--vad-seconds 60]

Prints, as JSON: espeak-ng synthesis time per typical answer sentence (through
``gateway_svc.speech_out.synthesize``, thread hop included) and its real-time
factor; the server VAD's CPU time per second of audio, fed in the 20 ms and
100 ms appends clients typically send, over speech with pauses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from gateway_svc.speech_out import synthesize
from gateway_svc.vad import ServerVad, SpeechStopped
from shared.audio import pcm_duration_ms, silence_pcm
from shared.models import AUDIO_SAMPLE_RATE_HZ

#: Sentences of the length an assistant's answers are cut into (one clause to a long sentence).
SENTENCES = [
    "Sure.",
    "The capital of France is Paris.",
    "It should be sunny this afternoon, with a light breeze from the west.",
    "If you leave now, you will get there a little before seven, assuming the traffic stays as light as it is.",
]


async def _synthesis(rounds: int) -> list[dict[str, Any]]:
    await synthesize("Warm up.")  # loads the library once
    rows = []
    for sentence in SENTENCES:
        times_ms, audio_ms = [], 0.0
        for _ in range(rounds):
            started = time.perf_counter()
            pcm = await synthesize(sentence)
            times_ms.append((time.perf_counter() - started) * 1000)
            audio_ms = pcm_duration_ms(pcm, AUDIO_SAMPLE_RATE_HZ)
        median_ms = statistics.median(times_ms)
        rows.append({
            "chars": len(sentence),
            "audio_ms": round(audio_ms),
            "synth_ms_median": round(median_ms, 1),
            "synth_ms_max": round(max(times_ms), 1),
            "real_time_factor": round(median_ms / audio_ms, 4),
        })
    return rows


def _vad_cost(seconds: int) -> list[dict[str, Any]]:
    sentence = asyncio.run(synthesize(SENTENCES[2]))
    block = silence_pcm(700, AUDIO_SAMPLE_RATE_HZ) + sentence + silence_pcm(900, AUDIO_SAMPLE_RATE_HZ)
    stream = block * max(1, round(seconds * 1000 / pcm_duration_ms(block, AUDIO_SAMPLE_RATE_HZ)))
    stream_s = pcm_duration_ms(stream, AUDIO_SAMPLE_RATE_HZ) / 1000
    rows = []
    for piece_ms in (20, 100):
        step = AUDIO_SAMPLE_RATE_HZ * piece_ms // 1000 * 2
        vad = ServerVad()
        turns = 0
        started = time.process_time()
        for i in range(0, len(stream), step):
            turns += sum(isinstance(e, SpeechStopped) for e in vad.feed(stream[i : i + step]))
        cpu_s = time.process_time() - started
        rows.append({
            "append_ms": piece_ms,
            "audio_s": round(stream_s, 1),
            "turns": turns,
            "cpu_ms_per_audio_s": round(cpu_s * 1000 / stream_s, 3),
            "real_time_factor": round(cpu_s / stream_s, 5),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="syntheses of each sentence")
    parser.add_argument("--vad-seconds", type=int, default=60, help="seconds of audio through the VAD")
    args = parser.parse_args()
    figures = {
        "synthesis": asyncio.run(_synthesis(args.rounds)),
        "server_vad": _vad_cost(args.vad_seconds),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
