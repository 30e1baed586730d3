"""python -m conversation_svc: run one conversation worker."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

from conversation_svc.engines import load_engine
from conversation_svc.worker import ConversationService
from shared.process import worker_cli
from shared.service import Service
from shared.settings import ConversationSettings, LocalEngineSettings, OpenAISettings

DESCRIPTION = (
    "Owns conversation sessions: claims conversations from the control stream, answers each final "
    "transcript (the two-step 'send the message, then ask for a response'), and streams the answer to "
    "the responses stream. Configured by environment variables (see README): REDIS_URL, KEY_PREFIX, "
    "CONVERSATION_ENGINE (auto|echo|local|openai), LEASE_S, MAX_SESSIONS, HISTORY_MAX_TURNS, ..."
)


def service_factory(
    settings: ConversationSettings, openai: OpenAISettings, local: LocalEngineSettings
) -> Callable[[], Awaitable[Service]]:
    async def make_service() -> Service:
        engine = load_engine(settings, openai, local)
        await engine.start()
        return ConversationService(settings, engine)

    return make_service


def main(argv: list[str] | None = None) -> int:
    return worker_cli("conversation", DESCRIPTION, ConversationSettings, "CONVERSATION_ENGINE", argv, service_factory)


if __name__ == "__main__":
    sys.exit(main())
