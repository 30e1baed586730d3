"""Settings: defaults, the environment, refused values named by their variable
(in-process and at a service's start), secrets that never print, and the
README's configuration table against the settings classes."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from conversation_svc.engines.local import LocalConversation
from conversation_svc.engines.openai import OpenAIConversation
from shared.engines.base import EngineUnavailable
from shared.realtime.connection import RealtimeEndpoint
from shared.settings import (
    SETTINGS_CLASSES,
    CommonSettings,
    ConnectionSettings,
    ConversationSettings,
    InvalidSettings,
    LocalEngineSettings,
    OpenAISettings,
    TranscriberSettings,
    describe_invalid,
    env_name,
    load_settings,
)
from transcriber_svc.engines import load_engine as load_transcription_engine
from transcriber_svc.engines.local import LocalTranscription
from transcriber_svc.engines.openai import OpenAITranscription

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-SECRETKEY-0123456789abcdef"


def all_variables() -> dict[str, tuple[type[BaseSettings], str, FieldInfo]]:
    """Every environment variable of every settings class: (class, field, field info)."""
    found: dict[str, tuple[type[BaseSettings], str, FieldInfo]] = {}
    for cls in SETTINGS_CLASSES:
        for field, info in cls.model_fields.items():
            found.setdefault(env_name(cls, field), (cls, field, info))
    return found


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting from the developer's (or CI's) environment: the defaults are the classes'."""
    for name in all_variables():
        monkeypatch.delenv(name, raising=False)


# --- defaults and the environment ---------------------------------------------------------------


def test_defaults() -> None:
    common = CommonSettings()
    assert (common.redis_url.get_secret_value(), common.key_prefix, common.partition_count) == \
        ("redis://localhost:6379/0", "vab", 1)
    assert (common.lease_s, common.lease_ms, common.max_sessions) == (10.0, 10_000, 500)
    openai = OpenAISettings()
    assert openai.api_key is None
    assert (openai.realtime_url, openai.timeout_s) == ("wss://api.openai.com/v1/realtime", 30.0)
    assert (openai.realtime_model, openai.max_output_tokens) == ("gpt-realtime", 256)
    assert (openai.transcribe_model, openai.transcribe_language, openai.turn_detection) == \
        ("gpt-4o-transcribe", None, "client")
    local = LocalEngineSettings()
    assert (local.asr_threads, local.llm_threads, local.llm_ctx, local.llm_max_tokens) == (1, 2, 2048, 64)


def test_the_environment_is_read_with_each_class_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEASE_S", "2.5")
    monkeypatch.setenv("PARTITIONS", "4")
    monkeypatch.setenv("OPENAI_TIMEOUT_S", "7")
    monkeypatch.setenv("OPENAI_TRANSCRIBE_LANGUAGE", " en ")
    monkeypatch.setenv("LOCAL_LLM_CTX", "1024")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert CommonSettings().lease_s == 2.5
    assert CommonSettings().log_level == "DEBUG"
    assert ConnectionSettings().keys.partitions == 4
    assert (OpenAISettings().timeout_s, OpenAISettings().transcribe_language) == (7.0, "en")
    assert LocalEngineSettings().llm_ctx == 1024
    # Explicit values (tests, command-line overrides) win over the environment.
    assert load_settings(OpenAISettings, {"timeout_s": 3}).timeout_s == 3.0


@pytest.mark.parametrize("value", ["", "   "])
def test_a_blank_api_key_is_no_key(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # compose passes OPENAI_API_KEY="" when the host has none.
    monkeypatch.setenv("OPENAI_API_KEY", value)
    monkeypatch.setenv("OPENAI_TIMEOUT_S", "")  # any empty engine variable is an unset one
    assert OpenAISettings().api_key is None
    assert OpenAISettings().timeout_s == 30.0
    assert OpenAISettings(api_key=SecretStr(value)).api_key is None


def test_auto_picks_openai_exactly_when_the_key_is_set() -> None:
    settings = TranscriberSettings(transcriber_engine="auto")
    engine = load_transcription_engine(settings, OpenAISettings(api_key=KEY), LocalEngineSettings())
    assert engine.name == "openai"
    try:
        engine = load_transcription_engine(settings, OpenAISettings(api_key=""), LocalEngineSettings())
    except EngineUnavailable as exc:  # the local engine's packages are not installed here
        assert "OPENAI_API_KEY is not set" in str(exc)
    else:
        assert engine.name == "local"


# --- engines are built from settings objects ------------------------------------------------------


def test_engines_take_their_values_from_the_settings() -> None:
    local = LocalEngineSettings(asr_threads=3, llm_threads=1, llm_ctx=1024, llm_max_tokens=32)
    llm = LocalConversation.from_settings(ConversationSettings(history_max_turns=5), local)
    assert (llm.n_ctx, llm.n_threads, llm.max_tokens, llm.history_max_turns) == (1024, 1, 32, 5)
    assert LocalTranscription.from_settings(local).cpu_threads == 3
    openai = OpenAISettings(api_key=KEY, realtime_url="ws://h:1/rt", timeout_s=4, realtime_model="m1",
                            max_output_tokens=99, transcribe_model="m2", transcribe_language="de",
                            turn_detection="server_vad")
    conv = OpenAIConversation.from_settings(ConversationSettings(history_max_turns=6), openai)
    assert (conv.model, conv.max_output_tokens, conv.history_max_turns) == ("m1", 99, 6)
    assert (conv.endpoint.api_key, conv.endpoint.base_url, conv.endpoint.timeout_s) == (KEY, "ws://h:1/rt", 4.0)
    asr = OpenAITranscription.from_settings(openai)
    assert (asr.model, asr.language, asr.turn_detection) == ("m2", "de", "server_vad")


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_engine_constructor_defaults_are_the_settings_defaults() -> None:
    """The engines' keyword defaults (for tests and the probes) repeat the settings' defaults."""
    local, openai = LocalEngineSettings(), OpenAISettings()
    assert _defaults(LocalConversation)["n_ctx"] == local.llm_ctx
    assert _defaults(LocalConversation)["n_threads"] == local.llm_threads
    assert _defaults(LocalConversation)["max_tokens"] == local.llm_max_tokens
    assert _defaults(LocalTranscription)["cpu_threads"] == local.asr_threads
    assert _defaults(OpenAIConversation)["model"] == openai.realtime_model
    assert _defaults(OpenAIConversation)["max_output_tokens"] == openai.max_output_tokens
    assert _defaults(OpenAITranscription)["model"] == openai.transcribe_model
    assert _defaults(OpenAITranscription)["turn_detection"] == openai.turn_detection
    assert _defaults(OpenAITranscription)["language"] == openai.transcribe_language
    assert _defaults(LocalConversation)["history_max_turns"] == ConversationSettings().history_max_turns


# --- refused values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "variable", "value", "explanation"),
    [
        (CommonSettings, "LEASE_S", "abc",
         "Input should be a valid number, unable to parse string as a number"),
        (CommonSettings, "LEASE_S", "0.1", "Input should be greater than 0.2"),
        (ConnectionSettings, "PARTITIONS", "0", "Input should be greater than or equal to 1"),
        (ConnectionSettings, "KEY_PREFIX", "a b", "String should match pattern"),
        (CommonSettings, "LOG_LEVEL", "LOUD", "Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
        (CommonSettings, "LOG_FORMAT", "xml", "Input should be 'auto', 'json' or 'console'"),
        (TranscriberSettings, "TRANSCRIBER_ENGINE", "whisper", "Input should be"),
        (OpenAISettings, "OPENAI_TIMEOUT_S", "0", "Input should be greater than 0"),
        (OpenAISettings, "OPENAI_TIMEOUT_S", "soon", "Input should be a valid number"),
        (OpenAISettings, "OPENAI_REALTIME_URL", "https://api.openai.com/v1/realtime",
         "must be a ws:// or wss:// URL, not https://"),
        (OpenAISettings, "OPENAI_REALTIME_URL", "api.openai.com", "must be a ws:// or wss:// URL, not one without"),
        (OpenAISettings, "OPENAI_TURN_DETECTION", "semantic",
         "Input should be 'client' or 'server_vad'"),
        (OpenAISettings, "OPENAI_MAX_OUTPUT_TOKENS", "-1", "Input should be"),
        (LocalEngineSettings, "LOCAL_ASR_THREADS", "two",
         "Input should be a valid integer, unable to parse string as an integer"),
        (LocalEngineSettings, "LOCAL_LLM_CTX", "100",
         "Input should be greater than or equal to 256"),
        (LocalEngineSettings, "LOCAL_LLM_MAX_TOKENS", "4096",
         "must be less than LOCAL_LLM_CTX (2048): the prompt needs room too"),
    ],
)
def test_a_refused_value_is_one_line_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, cls: type[BaseSettings], variable: str, value: str, explanation: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidSettings) as caught:
        load_settings(cls)
    message = str(caught.value)
    assert message.startswith(f"invalid setting {variable}: {explanation}"), message
    assert "\n" not in message


def test_describe_invalid_lists_every_refused_value_without_its_input() -> None:
    with pytest.raises(ValidationError) as caught:
        CommonSettings(lease_s="hunter2", max_sessions=0)  # type: ignore[arg-type]
    message = describe_invalid(caught.value, CommonSettings, given={"max_sessions"})
    assert message.splitlines() == [
        "invalid setting LEASE_S: Input should be a valid number, unable to parse string as a number",
        "invalid setting MAX_SESSIONS (given on the command line): Input should be greater than or equal to 1",
    ]
    assert "hunter2" not in message  # a refused value may be a secret: it is never echoed


def test_describe_invalid_names_prefixed_variables() -> None:
    with pytest.raises(ValidationError) as caught:
        OpenAISettings(timeout_s=-1)
    assert describe_invalid(caught.value, OpenAISettings) == \
        "invalid setting OPENAI_TIMEOUT_S: Input should be greater than 0"


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        (["transcriber_svc"], "LEASE_S", "abc"),
        (["conversation_svc", "--engine", "echo"], "OPENAI_TIMEOUT_S", "soon"),
        (["conversation_svc"], "LOCAL_LLM_THREADS", "0"),
        (["simulator_svc", "owners"], "PARTITIONS", "many"),
    ],
)
def test_a_service_with_a_refused_value_stops_at_start_with_one_line(
    command: list[str], variable: str, value: str
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), variable: value,
           # Nothing may be reached: a bad setting stops the process before any connection.
           "REDIS_URL": "redis://127.0.0.1:9/0"}
    proc = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"invalid setting {variable}: "), proc.stderr
    assert "Traceback" not in proc.stderr


# --- secrets ---------------------------------------------------------------------------------------------


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("REDIS_URL", "redis://:redis-PASSWORD@db:6379/0")
    openai = OpenAISettings()
    common = CommonSettings()
    assert openai.api_key is not None and openai.api_key.get_secret_value() == KEY
    for text in (repr(openai), str(openai), openai.model_dump_json(), repr(openai.model_dump()),
                 repr(RealtimeEndpoint.from_settings(openai))):
        assert KEY not in text
    for text in (repr(common), str(common), common.model_dump_json(), repr(ConnectionSettings())):
        assert "redis-PASSWORD" not in text


# --- the configuration reference (docs/configuration.md) and the README's short table -----------------------

#: The table format: under ``## Settings`` (the reference) or ``## Configuration`` (the README),
#: tables with this header, whose rows are ``| `VARIABLE` | `default` | meaning |``
#: (``(unset)``: None; ``(random)``: computed per process).
TABLE_HEADER = "| variable | default | meaning |"
ROW = re.compile(r"^\| `(?P<variable>[A-Z][A-Z0-9_]*)` \| (?P<default>`[^`|]*`|\(unset\)|\(random\)) \| .*\S.* \|$")


def render_default(info: FieldInfo) -> str:
    """A setting's default as the table's default cell shows it."""
    if info.default_factory is not None:
        return "(random)"
    value = info.default
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`"


def configuration_rows(text: str, heading: str) -> list[tuple[str, str]]:
    """(variable, default cell) of every row of the tables under ``heading``."""
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    rows: list[tuple[str, str]] = []
    in_table = False
    for line in section.splitlines():
        if line.strip() == TABLE_HEADER:
            in_table = True
        elif in_table and line.startswith("|"):
            if set(line) <= set("|-: "):
                continue  # the separator row
            match = ROW.match(line.strip())
            assert match, f"a configuration row not in the table format: {line!r}"
            rows.append((match["variable"], match["default"]))
        else:
            in_table = False
    return rows


def test_configuration_reference_matches_settings() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert "\n## Settings\n" in reference, "docs/configuration.md has no '## Settings' section"
    rows = configuration_rows(reference, "## Settings")
    assert rows, f"no table with the header {TABLE_HEADER!r} under '## Settings'"
    in_readme = dict(rows)
    duplicated = sorted({v for v, _ in rows if [r for r, _ in rows].count(v) > 1})
    assert not duplicated, f"listed twice in docs/configuration.md: {duplicated}"

    settings = {name: render_default(info) for name, (_, _, info) in all_variables().items()}
    missing = sorted(set(settings) - set(in_readme))
    unknown = sorted(set(in_readme) - set(settings))
    assert not missing, f"settings missing from docs/configuration.md: {missing}"
    assert not unknown, f"docs/configuration.md variables that are no setting: {unknown}"
    wrong = {name: (in_readme[name], settings[name]) for name in settings if in_readme[name] != settings[name]}
    assert not wrong, f"documented default != code default (docs, code): {wrong}"


def test_the_readme_names_settings_with_their_true_defaults() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n## Configuration\n" in readme, "the README has no '## Configuration' section"
    rows = configuration_rows(readme, "## Configuration")
    settings = {name: render_default(info) for name, (_, _, info) in all_variables().items()}
    assert rows and all(settings.get(name) == default for name, default in rows), [
        (name, default, settings.get(name)) for name, default in rows if settings.get(name) != default]
