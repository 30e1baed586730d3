"""Transcription engines, one module each; ``load_engine`` picks by name."""

from __future__ import annotations

from shared.engines.base import EngineUnavailable, TranscriptionEngine
from shared.engines.choice import LOCAL_INSTALL_HINT, LOCAL_REQUIREMENTS, choose, missing_modules
from shared.settings import LocalEngineSettings, OpenAISettings, TranscriberSettings


def load_engine(
    settings: TranscriberSettings, openai: OpenAISettings, local: LocalEngineSettings
) -> TranscriptionEngine:
    name = choose(
        "transcription",
        settings.transcriber_engine,
        has_api_key=openai.api_key is not None,
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
                f"{LOCAL_INSTALL_HINT}"
            )
        from transcriber_svc.engines.local import LocalTranscription  # type: ignore[import-not-found,unused-ignore]

        return LocalTranscription.from_settings(local)  # type: ignore[no-any-return,unused-ignore]
    if name == "openai":
        from transcriber_svc.engines.openai import OpenAITranscription  # type: ignore[import-not-found,unused-ignore]

        return OpenAITranscription.from_settings(openai)  # type: ignore[no-any-return,unused-ignore]
    raise EngineUnavailable(f"unknown transcription engine {name!r}")
