"""python -m transcriber_svc: run one transcription worker."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

from shared.process import worker_cli
from shared.service import Service
from shared.settings import LocalEngineSettings, OpenAISettings, TranscriberSettings
from transcriber_svc.engines import load_engine
from transcriber_svc.worker import TranscriberService

DESCRIPTION = (
    "Owns transcription sessions: claims conversations from the control stream, reads each one's input "
    "stream (text or PCM16 audio) and writes transcripts. Configured by environment variables (see "
    "README): REDIS_URL, KEY_PREFIX, TRANSCRIBER_ENGINE (auto|simulated|local|openai), LEASE_S, "
    "MAX_SESSIONS, ..."
)


def service_factory(
    settings: TranscriberSettings, openai: OpenAISettings, local: LocalEngineSettings
) -> Callable[[], Awaitable[Service]]:
    async def make_service() -> Service:
        engine = load_engine(settings, openai, local)
        await engine.start()
        return TranscriberService(settings, engine)

    return make_service


def main(argv: list[str] | None = None) -> int:
    return worker_cli("transcriber", DESCRIPTION, TranscriberSettings, "TRANSCRIBER_ENGINE", argv, service_factory)


if __name__ == "__main__":
    sys.exit(main())
