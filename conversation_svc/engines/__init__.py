"""Conversation engines, one module each; ``load_engine`` picks by name."""

from __future__ import annotations

from shared.engines.base import ConversationEngine, EngineUnavailable
from shared.engines.choice import LOCAL_INSTALL_HINT, LOCAL_REQUIREMENTS, choose, missing_modules
from shared.settings import ConversationSettings, LocalEngineSettings, OpenAISettings


def load_engine(
    settings: ConversationSettings, openai: OpenAISettings, local: LocalEngineSettings
) -> ConversationEngine:
    name = choose(
        "conversation",
        settings.conversation_engine,
        has_api_key=openai.api_key is not None,
        missing_local=missing_modules(LOCAL_REQUIREMENTS["conversation"]),
    )
    if name == "echo":
        from conversation_svc.engines.echo import EchoConversation

        return EchoConversation(words_per_delta=settings.echo_words_per_delta,
                                delta_delay_ms=settings.echo_delta_delay_ms, block_ms=settings.echo_block_ms)
    if name == "local":
        missing = missing_modules(LOCAL_REQUIREMENTS["conversation"])
        if missing:
            raise EngineUnavailable(
                f"CONVERSATION_ENGINE=local needs {', '.join(missing)}: "
                f"{LOCAL_INSTALL_HINT}"
            )
        from conversation_svc.engines.local import LocalConversation  # type: ignore[import-not-found,unused-ignore]

        return LocalConversation.from_settings(settings, local)  # type: ignore[no-any-return,unused-ignore]
    if name == "openai":
        from conversation_svc.engines.openai import OpenAIConversation  # type: ignore[import-not-found,unused-ignore]

        return OpenAIConversation.from_settings(settings, openai)  # type: ignore[no-any-return,unused-ignore]
    raise EngineUnavailable(f"unknown conversation engine {name!r}")
