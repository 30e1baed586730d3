"""python -m simulator_svc: the simulated client (and, as sub-commands, the
operator's tools).

    python -m simulator_svc [--mode text] [--conversations N] [--utterances K|FILE] ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from shared.bus import connect
from shared.keys import Keys
from shared.process import install_fast_loop
from simulator_svc.simulator import (
    DEFAULT_UTTERANCES,
    DialoguePrinter,
    Simulation,
    SimulationPlan,
    generated_utterances,
    print_summary,
)


def _utterances(value: str | None) -> list[str]:
    if value is None:
        return list(DEFAULT_UTTERANCES)
    if value.isdigit():
        return generated_utterances(int(value))
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"--utterances: {value!r} is neither a count nor a readable file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if line]
    if not texts:
        raise argparse.ArgumentTypeError(f"--utterances: {value} holds no utterance (one per line)")
    return texts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator_svc",
        description=(
            "Simulated client: starts conversations, sends utterances, prints the answers "
            "as they stream. Exits 0 only when every utterance got exactly one response.done."
        ),
    )
    parser.add_argument("--mode", choices=["text"], default="text", help="what to send (text: utterance.text)")
    parser.add_argument("--conversations", type=int, default=1, metavar="N")
    parser.add_argument("--utterances", metavar="K|FILE",
                        help="K generated utterances, or a file with one utterance per line "
                             "(default: the seed example's phrases)")
    parser.add_argument("--no-greeting", action="store_true", help="skip the greeting turn")
    parser.add_argument("--rate", type=float, default=2.0, metavar="R",
                        help="utterances per second per conversation (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S", help="give up after S seconds")
    parser.add_argument("--max-in-flight", type=int, default=0, help="bound on unanswered utterances (0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary object (and no dialogue)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    parser.add_argument("--key-prefix", default=os.environ.get("KEY_PREFIX", "vab"))
    parser.add_argument("--partitions", type=int, default=int(os.environ.get("PARTITIONS", "1")))
    return parser


async def _simulate(args: argparse.Namespace) -> int:
    try:
        utterances = _utterances(args.utterances)
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan = SimulationPlan(
        conversations=args.conversations,
        utterances=utterances,
        greeting=not args.no_greeting,
        rate=args.rate,
        timeout_s=args.timeout,
        max_in_flight=args.max_in_flight,
    )
    redis = connect(args.redis_url)
    try:
        printer = DialoguePrinter(None if args.json else sys.stdout, plan.conversations)
        sim = Simulation(redis, Keys(args.key_prefix, args.partitions), plan, printer)
        summary = await sim.run()
    finally:
        await redis.aclose()
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)
    ok = summary["missing"] == 0 and summary["duplicates"] == 0 and summary["responses_failed"] == 0
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    install_fast_loop()
    return asyncio.run(_simulate(args))


if __name__ == "__main__":
    sys.exit(main())
