"""python -m bench.chaos [--utterances 10000] [--conversations N] [--rate R]
[--seed S] [--out FILE] [--quick] [--logs DIR]

Prints the figures; exits 1 when an utterance was lost or answered twice, a
fault was not injected, or the paused worker wrote for a conversation taken
from it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

from bench.chaos.plan import QUICK, ChaosConfig
from bench.chaos.report import render, verdict
from bench.chaos.run import run_chaos
from shared.process import install_fast_loop


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="Utterances through 2 transcribers and 3 conversation workers while workers are SIGKILLed "
                    "every few seconds, Redis is SIGKILLed and restarted once (AOF) and a worker is SIGSTOPped "
                    "past its lease once; then lost, duplicates, out of order and takeover times.",
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"a CI-sized run: {QUICK.total_utterances} utterances, ~{QUICK.send_s:.0f} s of sending")
    parser.add_argument("--utterances", type=int, help=f"default {ChaosConfig.utterances}")
    parser.add_argument("--conversations", type=int, metavar="N", help=f"default {ChaosConfig.conversations}")
    parser.add_argument("--rate", type=float, metavar="R",
                        help=f"utterances per second over all conversations (default {ChaosConfig.rate})")
    parser.add_argument("--seed", type=int, metavar="S", help="seeds the fault schedule and the victims (default 1)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--logs", type=Path, metavar="DIR",
                        help="keep the workers' logs here (default: a temporary folder, removed after a clean run)")
    return parser


def config_from(args: argparse.Namespace) -> ChaosConfig:
    config = QUICK if args.quick else ChaosConfig()
    given = {name: getattr(args, name) for name in ("utterances", "conversations", "rate", "seed")}
    return dataclasses.replace(config, **{k: v for k, v in given.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from(args)
    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="vab-chaos-"))
    install_fast_loop()
    figures = asyncio.run(run_chaos(config, log_dir, lambda line: print(line, file=sys.stderr, flush=True)))
    figures["command"] = "python -m bench.chaos " + " ".join(sys.argv[1:] if argv is None else argv)
    print(render(figures))
    problems = verdict(figures)
    figures["problems"] = problems
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    if problems:
        print(f"FAILED: {'; '.join(problems)} (logs in {log_dir}/)")
        return 1
    print("PASSED: nothing lost, nothing answered twice")
    if args.logs is None:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
