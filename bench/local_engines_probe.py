"""Measure the local engines on this machine (figures, never asserted in tests).

    python bench/local_engines_probe.py [--rounds 3] [--asr-threads 2] [--llm-threads 2] [--voice en-us+f3]

Prints, as JSON: espeak-ng synthesis time; whisper tiny.en load time,
real-time factor and word error rate on the simulator's five phrases
(through the engine's recognition thread, 24 kHz PCM in); the same phrases
through a transcription session (endpointing included); SmolLM2 load time,
time to first token and tokens per second over a few prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conversation_svc.engines.local import LocalConversation  # noqa: E402
from shared.audio import pcm_duration_ms, silence_pcm  # noqa: E402
from shared.engines.base import Completed, TextDelta  # noqa: E402
from shared.models import AUDIO_SAMPLE_RATE_HZ  # noqa: E402
from shared.tts import DEFAULT_VOICE, synthesize  # noqa: E402
from shared.wer import word_errors  # noqa: E402
from simulator_svc.simulator import DEFAULT_UTTERANCES  # noqa: E402
from transcriber_svc.engines.local import LocalTranscription  # noqa: E402

PROMPTS = [
    "Hello, can you hear me?",
    "The weather today is sunny with a chance of rain.",
    "Can you tell me what time it is?",
    "I'd like to order a pizza with extra cheese.",
    "Please remind me to call my mother tomorrow.",
]


async def probe_asr(rounds: int, threads: int, voice: str) -> dict[str, object]:
    t0 = time.perf_counter()
    clips = [synthesize(text, voice=voice) for text in DEFAULT_UTTERANCES]
    tts_ms = (time.perf_counter() - t0) * 1000 / len(clips)
    engine = LocalTranscription(cpu_threads=threads)
    t0 = time.perf_counter()
    await engine.start()
    load_s = time.perf_counter() - t0
    audio_s = compute_s = 0.0
    edits = words = 0
    samples: list[dict[str, object]] = []
    for r in range(rounds):
        for text in DEFAULT_UTTERANCES:
            pcm = synthesize(text, voice=voice) if r else clips[DEFAULT_UTTERANCES.index(text)]
            t0 = time.perf_counter()
            hyp = await engine.transcribe(silence_pcm(200, AUDIO_SAMPLE_RATE_HZ) + pcm)
            compute_s += time.perf_counter() - t0
            audio_s += pcm_duration_ms(pcm, AUDIO_SAMPLE_RATE_HZ) / 1000 + 0.2
            e, n = word_errors(text, hyp)
            edits += e
            words += n
            if r == 0:
                samples.append({"ref": text, "hyp": hyp, "errors": e})
    await engine.aclose()
    return {
        "voice": voice,
        "tts_ms_per_sentence": round(tts_ms, 1),
        "asr_threads": threads,
        "asr_load_s": round(load_s, 2),
        "asr_real_time_factor": round(compute_s / audio_s, 3),
        "asr_wer": round(edits / words, 3),
        "asr_words": words,
        "asr_rounds": rounds,
        "asr_samples": samples,
    }


async def probe_llm(threads: int, prompts: Sequence[str]) -> dict[str, object]:
    engine = LocalConversation(n_threads=threads)
    t0 = time.perf_counter()
    await engine.start()
    load_s = time.perf_counter() - t0
    session = await engine.open_session("bench", "You are a helpful voice assistant. Answer briefly, "
                                                  "in one or two sentences.", [])
    ttft: list[float] = []
    rates: list[float] = []
    answers: list[str] = []
    for prompt in prompts:
        t0 = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        usage: dict[str, int] = {}
        async for event in session.respond(prompt):
            if isinstance(event, TextDelta):
                if first is None:
                    first = time.perf_counter()
                parts.append(event.text)
            elif isinstance(event, Completed):
                usage = event.usage
        end = time.perf_counter()
        assert first is not None
        ttft.append(first - t0)
        if usage.get("output_tokens", 0) > 1:
            rates.append((usage["output_tokens"] - 1) / max(1e-6, end - first))
        answers.append("".join(parts))
    await engine.aclose()
    return {
        "llm_threads": threads,
        "llm_n_ctx": engine.n_ctx,
        "llm_max_tokens": engine.max_tokens,
        "llm_load_s": round(load_s, 2),
        "llm_ttft_ms_median": round(statistics.median(ttft) * 1000, 1),
        "llm_ttft_ms_max": round(max(ttft) * 1000, 1),
        "llm_tokens_per_s_median": round(statistics.median(rates), 1),
        "llm_sample_answer": answers[0],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="synthesised rounds of the five phrases")
    parser.add_argument("--asr-threads", type=int, default=2)
    parser.add_argument("--llm-threads", type=int, default=2)
    parser.add_argument("--voice", default=DEFAULT_VOICE)
    args = parser.parse_args()
    result = await probe_asr(args.rounds, args.asr_threads, args.voice)
    result.update(await probe_llm(args.llm_threads, PROMPTS))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
