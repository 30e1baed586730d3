"""Transcription engines, one module each; ``load_engine`` picks by name."""

from __future__ import annotations

from shared.engines.base import EngineUnavailable, TranscriptionEngine
from shared.engines.choice import LOCAL_REQUIREMENTS, choose, missing_modules
from shared.settings import EngineCredentials, TranscriberSettings


def load_engine(settings: TranscriberSettings) -> TranscriptionEngine:
    creds = EngineCredentials()
    name = choose(
        "transcription",
        settings.transcriber_engine,
        has_api_key=creds.openai_api_key is not None,
        missing_local=missing_modules(LOCAL_REQUIREMENTS["transcription"]),
    )
    if name == "simulated":
        from transcriber_svc.engines.simulated import SimulatedTranscription

        return SimulatedTranscription()
    if name == "local":
        missing = missing_modules(LOCAL_REQUIREMENTS["transcription"])
        if missing:
            raise EngineUnavailable(
                f"TRANSCRIBER_ENGINE=local needs {', '.join(missing)}: "
                "pip install -r requirements/local.lock"
            )
        from transcriber_svc.engines.local import LocalTranscription  # type: ignore[import-not-found,unused-ignore]

        return LocalTranscription()  # type: ignore[no-any-return,unused-ignore]
    if name == "openai":
        from transcriber_svc.engines.openai import OpenAITranscription  # type: ignore[import-not-found,unused-ignore]

        return OpenAITranscription.from_env()  # type: ignore[no-any-return,unused-ignore]
    raise EngineUnavailable(f"unknown transcription engine {name!r}")
