"""Voice-path benchmark: K spoken utterances through the three services with the
local engines, on a Redis of its own.

    python -m bench.voice [--utterances 10] [--conversations 1] [--realtime-factor 1]

Prints (and writes as JSON with --out): the word error rate of the transcripts
against the text that was spoken, the ASR real-time factor, the LLM's time to
first token and tokens/s, and per utterance end of speech -> transcript final
-> first response delta -> response done (p50/p95, from the client's clock).
Engine figures come from the workers' own /metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis as syncredis
from prometheus_client.parser import text_string_to_metric_families

from shared.devstack import Stack, wait_ready
from shared.redis_server import start_embedded
from simulator_svc.audio_mode import speech_pcm
from simulator_svc.simulator import DEFAULT_UTTERANCES, GREETING


def _metrics(redis_url: str, prefix: str) -> dict[str, dict[str, float]]:
    """service -> {sample name with labels: value}, scraped from every worker."""
    r = syncredis.Redis.from_url(redis_url, decode_responses=True)
    out: dict[str, dict[str, float]] = {}
    for key in r.scan_iter(match=f"{prefix}:worker:*"):
        h = {str(k): str(v) for k, v in r.hgetall(key).items()}
        with urllib.request.urlopen(f"http://127.0.0.1:{h['metrics_port']}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        samples = out.setdefault(h["service"], {})
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
                samples[f"{s.name}{{{labels}}}"] = samples.get(f"{s.name}{{{labels}}}", 0.0) + s.value
    r.close()
    return out


def _mean(samples: dict[str, float], name: str, labels: str) -> float | None:
    count = samples.get(f"{name}_count{{{labels}}}", 0.0)
    return samples.get(f"{name}_sum{{{labels}}}", 0.0) / count if count else None


def run(utterances: int, conversations: int, realtime_factor: float, greeting: bool) -> dict[str, Any]:
    server = start_embedded(appendonly=False)
    prefix = f"voicebench{os.getpid()}"
    env = {**os.environ, "REDIS_URL": server.url, "KEY_PREFIX": prefix, "LOG_FORMAT": "json",
           "TRANSCRIBER_ENGINE": "local", "CONVERSATION_ENGINE": "local"}
    env.pop("OPENAI_API_KEY", None)
    texts = ([GREETING] if greeting else []) + [DEFAULT_UTTERANCES[i % len(DEFAULT_UTTERANCES)]
                                                  for i in range(utterances)]
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(env, Path(tmp) / "logs")
        try:
            stack.start("transcriber_svc")
            stack.start("conversation_svc")
            wait_ready(stack, server.url, prefix)
            lines = Path(tmp) / "utterances.txt"
            lines.write_text("\n".join(texts[1:] if greeting else texts) + "\n")
            args = ["--mode", "audio", "--json", "--conversations", str(conversations), "--utterances", str(lines),
                    "--realtime-factor", str(realtime_factor), "--timeout", "900"]
            if not greeting:
                args.append("--no-greeting")
            proc = subprocess.run([sys.executable, "-m", "simulator_svc", *args], env=env, capture_output=True,
                                  text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"simulation failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
            time.sleep(0.5)
            metrics = _metrics(server.url, prefix)
        finally:
            stack.stop_all()
            server.cleanup()
    audio_s = sum(len(speech_pcm(t)) / 48_000 for t in texts) * conversations
    tr, conv = metrics.get("transcriber", {}), metrics.get("conversation", {})
    asr_s = tr.get("vab_engine_seconds_sum{engine=local,kind=audio.chunk}", 0.0) + tr.get(
        "vab_engine_seconds_sum{engine=local,kind=audio.end}", 0.0)
    lat = summary["latency_ms"]
    return {
        "utterances": summary["utterances"],
        "answered_once": summary["responses_done"] - summary["duplicates"],
        "missing": summary["missing"],
        "wer": summary.get("wer"),
        "audio_seconds": round(audio_s, 2),
        "asr_real_time_factor": round(asr_s / audio_s, 3) if audio_s else None,
        "llm_first_token_ms": _ms(_mean(conv, "vab_llm_first_token_seconds", "engine=local")),
        "llm_tokens_per_s": _round(_mean(conv, "vab_llm_deltas_per_second", "engine=local")),
        "end_of_speech_to_transcript_ms": {k: lat["transcript_final"][k] for k in ("p50", "p95")},
        "end_of_speech_to_first_delta_ms": {k: lat["first_delta"][k] for k in ("p50", "p95")},
        "end_of_speech_to_done_ms": {k: lat["response_done"][k] for k in ("p50", "p95")},
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.voice", description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=10)
    parser.add_argument("--conversations", type=int, default=1)
    parser.add_argument("--realtime-factor", type=float, default=1.0)
    parser.add_argument("--greeting", action="store_true")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    figures = run(args.utterances, args.conversations, args.realtime_factor, args.greeting)
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
