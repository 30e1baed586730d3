"""python -m conversation_svc: run one conversation worker."""

from __future__ import annotations

import argparse
import sys

from conversation_svc.engines import load_engine
from conversation_svc.worker import ConversationService
from shared.process import run_worker
from shared.runtime import Service
from shared.settings import ConversationSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conversation_svc",
        description=(
            "Owns conversation sessions: claims conversations from the control stream, "
            "answers each final transcript (the two-step 'send the message, then ask for a "
            "response'), and streams the answer to the responses stream. Configured by "
            "environment variables (see README): REDIS_URL, KEY_PREFIX, CONVERSATION_ENGINE "
            "(auto|echo|local|openai), LEASE_S, MAX_SESSIONS, HISTORY_MAX_TURNS, ..."
        ),
    )
    parser.add_argument("--engine", help="override CONVERSATION_ENGINE")
    parser.add_argument("--max-sessions", type=int, help="override MAX_SESSIONS")
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.engine:
        overrides["conversation_engine"] = args.engine
    if args.max_sessions:
        overrides["max_sessions"] = args.max_sessions
    settings = ConversationSettings(**overrides)  # type: ignore[arg-type]

    async def make_service() -> Service:
        engine = load_engine(settings)
        await engine.start()
        return ConversationService(settings, engine)

    return run_worker("conversation", settings, make_service)


if __name__ == "__main__":
    sys.exit(main())
