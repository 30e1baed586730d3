"""Interruption benchmark: how fast an answer stops for the client when the user
talks over it or sends ``response.cancel``, through the gateway, on this machine.

    python -m bench.interrupt [--trials 20] [--quick] [--engines local|deterministic] [--out FILE]

Starts a Redis of its own, the transcriber, the conversation worker and a
gateway as processes (the local engines by default: faster-whisper and
llama.cpp), then runs the trials of :mod:`bench.interrupt_trials` one after
another and prints, per kind, the cancel latency p50 / p95 / max against the
target (p95 <= 200 ms), how long the gateway took to hear the speech, and how
long the conversation worker took to stop the engine (from the streams); see
:mod:`bench.interrupt_figures`. ``--engines deterministic`` (the simulated
transcriber, the echo engine streaming slowly) checks the benchmark itself:
its questions are typed, as that transcriber does not understand audio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.interrupt_figures import engine_stops, kind_figures, report_lines
from bench.interrupt_trials import InterruptTrials
from shared.bus.resp import connect, xrange_entries
from shared.devstack import GATEWAY, Stack, deterministic_env, plan_gateway, wait_http_ready, wait_ready
from shared.keys import Keys
from shared.models import Entry, decode_fields
from shared.redis_server import free_port, start_embedded

DEFAULT_TRIALS = 20
QUICK_TRIALS = 3
#: The echo engine's pace in the deterministic run: an answer of ~25 words lasts ~2.5 s.
ECHO_PACE = {"ECHO_DELTA_DELAY_MS": "100", "ECHO_WORDS_PER_DELTA": "1"}


def engine_env(engines: str, redis_url: str, prefix: str) -> dict[str, str]:
    """The services' environment (the caller's ECHO_* / LOCAL_* settings win)."""
    env = deterministic_env(redis_url, prefix)
    if engines == "local":
        env.update(TRANSCRIBER_ENGINE="local", CONVERSATION_ENGINE="local")
    else:
        env.update({k: v for k, v in ECHO_PACE.items() if k not in os.environ})
    # Anonymous on 127.0.0.1 on a free port, the demo's generous per-key limits.
    env.update(GATEWAY_PORT=str(free_port()))
    env = {k: v for k, v in env.items() if not k.startswith("GATEWAY_API_KEYS")}
    return env


async def _entries(redis: Any, key: str) -> list[tuple[str, Entry]]:
    return [(entry_id.decode(), decode_fields(fields)) for entry_id, fields in await xrange_entries(redis, key)]


async def _engine_stops(redis_url: str, prefix: str, conversation_ids: list[str]) -> tuple[list[float], int]:
    """The engine-stop figures of those conversations, read from their streams."""
    keys, stops, finished = Keys(prefix=prefix), list[float](), 0
    redis = connect(redis_url)
    try:
        for cid in conversation_ids:
            got, done_first = engine_stops(await _entries(redis, keys.input(cid)),
                                           await _entries(redis, keys.responses(cid)))
            stops += got
            finished += done_first
    finally:
        await redis.aclose()
    return stops, finished


async def _measure(bench: InterruptTrials, trials: int, redis_url: str,
                   prefix: str) -> tuple[tuple[list[float], int], tuple[list[float], int]]:
    await bench.run(trials)
    return (await _engine_stops(redis_url, prefix, bench.speech_conversations),
            await _engine_stops(redis_url, prefix, bench.cancel_conversations))


def run(trials: int, engines: str) -> dict[str, Any]:
    server = start_embedded(appendonly=False)
    prefix = f"cutbench{os.getpid()}"
    env = engine_env(engines, server.url, prefix)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(env, Path(tmp) / "logs")
        try:
            stack.start("transcriber_svc")
            stack.start("conversation_svc")
            gateway_plan = plan_gateway(env)
            gateway = stack.start(GATEWAY, gateway_plan.env)
            wait_ready(stack, server.url, prefix)
            wait_http_ready(gateway, gateway_plan.url + "/readyz")
            bench = InterruptTrials(gateway_plan.url, spoken_questions=engines == "local")
            speech_stops, cancel_stops = asyncio.run(_measure(bench, trials, server.url, prefix))
        except BaseException:
            for proc in stack.procs:
                sys.stderr.write(f"--- {proc.module} log (end) ---\n{proc.log_text()[-2000:]}\n")
            raise
        finally:
            stack.stop_all()
            server.cleanup()
    return {
        "trials_per_kind": trials,
        "engines": _engines_shown(env),
        "speech_over_answer": kind_figures(bench.speech_tracker, *speech_stops),
        "response_cancel": kind_figures(bench.cancel_tracker, *cancel_stops),
    }


def _engines_shown(env: dict[str, str]) -> str:
    shown = f"transcriber {env['TRANSCRIBER_ENGINE']}, conversation {env['CONVERSATION_ENGINE']}"
    settings = sorted(f"{k}={v}" for k, v in env.items() if k.startswith(("LOCAL_LLM", "ECHO_")))
    return shown + (f" ({', '.join(settings)})" if settings else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.interrupt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=None, help=f"trials of each kind (default {DEFAULT_TRIALS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TRIALS} trials of each kind")
    parser.add_argument("--engines", choices=["local", "deterministic"], default="local")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    trials = args.trials or (QUICK_TRIALS if args.quick else DEFAULT_TRIALS)
    figures = run(trials, args.engines)
    print("\n".join(report_lines(figures)))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
