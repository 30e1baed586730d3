"""Gateway benchmark: voice latency through the gateway, and how many text
sessions one gateway process carries.

    python -m bench.gateway [--utterances 10] [--sessions 50,200,500] [--out FILE]
                            [--quick] [--only voice|capacity] [--rate 0.5] [--seconds 20]
                            [--open-over 10] [--no-deflate] [--logs DIR]

Part 1 (``voice``, :mod:`bench.gateway_voice`): the local engines
(TRANSCRIBER_ENGINE=local, CONVERSATION_ENGINE=local), one transcriber, one
conversation worker and one gateway, each a process, on a Redis of its own. A
client speaks N utterances, one at a time, into a default session (server VAD
with its default silence_duration_ms, then 300 ms), and the p50 / p95 of end of
speech -> speech_stopped, transcript completed, first audio delta, first text
delta and response.done are printed, with the target (first audio p50 <= 600 ms).

Part 2 (``capacity``, :mod:`bench.gateway_capacity`): the deterministic engines
(simulated, echo); per step, S text sessions (opened over 10 s) on one fresh
gateway doing two-step turns at a fixed rate; the gateway's CPU per session per
minute and per turn, its RSS, turn latency p50 / p99 and errors.

Figures are printed (and written as JSON with --out); nothing is asserted. The
client is this process, over raw ``websockets`` (not the openai SDK), so its own
work per event is small and known; its CPU is reported, never counted as the
gateway's. The per-key limits of the benchmark's one API key are raised
(sessions, events per second): part 2 measures the gateway, not its quotas.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gateway_capacity import StepPlan, run_step
from bench.gateway_stack import pipeline
from bench.gateway_tables import capacity_lines, summary_lines, voice_lines
from bench.gateway_voice import TRAILING_SILENCE_MS, SpokenUtterance, row_figures, speak_in_a_session
from bench.performance_doc import git_stamp
from bench.procstat import cpu_model
from shared.process import install_fast_loop
from simulator_svc.simulator import DEFAULT_UTTERANCES

ROOT = Path(__file__).resolve().parents[1]
LOCAL_ENGINES = {"TRANSCRIBER_ENGINE": "local", "CONVERSATION_ENGINE": "local"}
DETERMINISTIC_ENGINES = {"TRANSCRIBER_ENGINE": "simulated", "CONVERSATION_ENGINE": "echo"}
#: Spoken once before the measured rows: the engines' first inference is slower than the rest.
WARM_UP_TEXT = "Hello, can you hear me?"
#: The second row of part 1 (the first is the session's default, 500 ms).
SHORT_SILENCE_MS = 300


@dataclass(frozen=True)
class Sizes:
    utterances: int
    sessions: tuple[int, ...]
    turns_per_s_per_session: float
    seconds: float
    #: A step's sessions are opened evenly over this long (see --open-over).
    open_over_s: float


#: Sessions are opened over 10 s, the gateway's session-slot refresh period: opened in the same
#: second, every session would refresh its slot in the same instant, every 10 s, a burst that
#: independently arriving clients do not make (``--open-over 0`` makes it: a reconnect storm).
FULL = Sizes(utterances=10, sessions=(50, 200, 500), turns_per_s_per_session=0.5, seconds=20.0, open_over_s=10.0)
QUICK = Sizes(utterances=2, sessions=(2, 5), turns_per_s_per_session=1.0, seconds=3.0, open_over_s=1.0)


def say(message: str) -> None:
    sys.stderr.write(f"[bench.gateway] {message}\n")
    sys.stderr.flush()


async def _voice_rows(base_url: str, spoken: list[SpokenUtterance]) -> list[dict[str, Any]]:
    await speak_in_a_session(base_url, [SpokenUtterance.of(WARM_UP_TEXT)], None)
    rows = []
    for silence in (None, SHORT_SILENCE_MS):
        silence_ms, records = await speak_in_a_session(base_url, spoken, silence)
        rows.append(row_figures(silence_ms, records))
        say(f"part 1: VAD silence {silence_ms} ms done ({rows[-1]['measured']}/{len(records)} measured)")
    return rows


def run_voice(utterances: int, log_dir: Path | None = None) -> dict[str, Any]:
    texts = [DEFAULT_UTTERANCES[i % len(DEFAULT_UTTERANCES)] for i in range(utterances)]
    spoken = [SpokenUtterance.of(text) for text in texts]
    say("part 1: starting Redis, the workers with the local engines (loading models) and a gateway")
    with pipeline(LOCAL_ENGINES, log_dir=log_dir / "voice" if log_dir else None) as running:
        _, base_url = running.start_gateway()
        rows = asyncio.run(_voice_rows(base_url, spoken))
    return {"setup": "1 transcriber, 1 conversation worker, 1 gateway, own Redis", "utterances": utterances,
            "trailing_silence_ms": TRAILING_SILENCE_MS, "warm_up_utterance": WARM_UP_TEXT, "rows": rows}


def run_capacity(sessions: tuple[int, ...], turns_per_s: float, seconds: float, deflate: bool,
                 open_over_s: float = 0.0, log_dir: Path | None = None) -> dict[str, Any]:
    # One worker per tier carries thousands of deterministic turns a second (docs/performance.md);
    # what they must be allowed is the sessions (a step's, and the last step's still ending).
    # As bench.pipeline runs them: no metrics endpoint, warnings only (less work on shared cores).
    worker_env = {"MAX_SESSIONS": str(2 * max(sessions) + 100), "METRICS_ENABLED": "false", "LOG_LEVEL": "WARNING"}
    # The key's session slots live in Redis, across gateways: a stopped gateway's last few may
    # not be released yet (they expire), so the limit is far above any step.
    gateway_env = {"GATEWAY_MAX_SESSIONS_PER_KEY": "1000000", "GATEWAY_EVENTS_PER_S": "1000000"}
    steps = []
    say("part 2: starting Redis and the workers with the deterministic engines")
    with pipeline(DETERMINISTIC_ENGINES, worker_env, log_dir=log_dir / "capacity" if log_dir else None) as running:
        for count in sessions:
            proc, base_url = running.start_gateway(**gateway_env)
            try:
                time.sleep(1.0)  # start-up settles before the idle RSS is read
                plan = StepPlan(count, turns_per_s, seconds, deflate, idle_s=min(3.0, seconds / 2),
                                open_over_s=open_over_s)
                others = [pid for pid in running.pids() if pid != proc.pid]
                steps.append(asyncio.run(run_step(base_url, proc.pid, others, plan)))
            finally:
                running.stop_gateway(proc)
            say(f"part 2: {count} sessions done")
    return {"setup": "simulated transcription, echo answers; 1 transcriber, 1 conversation worker, own Redis",
            "turns_per_s_per_session": turns_per_s, "seconds": seconds, "deflate": deflate,
            "open_over_s": open_over_s, "gateway_settings": gateway_env, "steps": steps}


def _sessions(text: str) -> tuple[int, ...]:
    counts = tuple(int(part) for part in text.split(",") if part.strip())
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of session counts, each at least 1")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"the seconds-long size: {QUICK.utterances} utterances, sessions "
                             f"{','.join(map(str, QUICK.sessions))}, {QUICK.seconds:g} s steps")
    parser.add_argument("--utterances", type=int, help=f"part 1's utterances per row (default {FULL.utterances})")
    parser.add_argument("--sessions", type=_sessions,
                        help=f"part 2's steps (default {','.join(map(str, FULL.sessions))})")
    parser.add_argument("--rate", type=float, help="part 2's turns per second per session "
                                                   f"(default {FULL.turns_per_s_per_session})")
    parser.add_argument("--seconds", type=float, help=f"part 2's window per step (default {FULL.seconds:g})")
    parser.add_argument("--no-deflate", action="store_true",
                        help="part 2 without permessage-deflate (the SDK and browsers offer it: on by default)")
    parser.add_argument("--open-over", type=float, metavar="SECONDS",
                        help=f"part 2: open a step's sessions evenly over this long (default {FULL.open_over_s:g}; "
                             "0: at once, as clients reconnecting after a gateway restart)")
    parser.add_argument("--only", choices=("voice", "capacity"), help="run one part only")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this folder")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    install_fast_loop()
    meta: dict[str, Any] = {
        "git": git_stamp(ROOT), "command": " ".join(["python -m bench.gateway", *(argv or sys.argv[1:])]),
        "cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
        "load_start": [round(x, 2) for x in os.getloadavg()], "mode": "quick" if args.quick else "full",
    }
    results: dict[str, Any] = {"meta": meta}
    started = time.monotonic()
    if args.only in (None, "voice"):
        results["voice"] = run_voice(args.utterances or sizes.utterances, args.logs)
        print("\n".join(voice_lines(results["voice"])) + "\n", flush=True)
    if args.only in (None, "capacity"):
        results["capacity"] = run_capacity(args.sessions or sizes.sessions,
                                           args.rate or sizes.turns_per_s_per_session,
                                           args.seconds or sizes.seconds, not args.no_deflate,
                                           sizes.open_over_s if args.open_over is None else args.open_over,
                                           args.logs)
        print("\n".join(capacity_lines(results["capacity"])) + "\n", flush=True)
    meta["load_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["duration_s"] = round(time.monotonic() - started, 1)
    print("\n".join(summary_lines(results)), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
