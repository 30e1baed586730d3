"""python -m transcriber_svc: run one transcription worker."""

from __future__ import annotations

import argparse
import sys

from shared.process import run_worker
from shared.runtime import Service
from shared.settings import TranscriberSettings
from transcriber_svc.engines import load_engine
from transcriber_svc.worker import TranscriberService


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m transcriber_svc",
        description=(
            "Owns transcription sessions: claims conversations from the control stream, "
            "reads each one's input stream (text or PCM16 audio) and writes transcripts. "
            "Configured by environment variables (see README): REDIS_URL, KEY_PREFIX, "
            "TRANSCRIBER_ENGINE (auto|simulated|local|openai), LEASE_S, MAX_SESSIONS, ..."
        ),
    )
    parser.add_argument("--engine", help="override TRANSCRIBER_ENGINE")
    parser.add_argument("--max-sessions", type=int, help="override MAX_SESSIONS")
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.engine:
        overrides["transcriber_engine"] = args.engine
    if args.max_sessions:
        overrides["max_sessions"] = args.max_sessions
    settings = TranscriberSettings(**overrides)  # type: ignore[arg-type]

    async def make_service() -> Service:
        engine = load_engine(settings)
        await engine.start()
        return TranscriberService(settings, engine)

    return run_worker("transcriber", settings, make_service)


if __name__ == "__main__":
    sys.exit(main())
