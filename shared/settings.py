"""Every setting of every service, read from environment variables.

Field names map to upper-case variables (``lease_s`` <- ``LEASE_S``), after the
class's ``env_prefix`` (``OpenAISettings.timeout_s`` <- ``OPENAI_TIMEOUT_S``).
Units are in the names. Secrets are ``SecretStr`` so they never print.

Services parse their settings once, at start, with :func:`load_settings`: an
invalid value raises :class:`InvalidSettings`, whose text is one line per bad
variable (``invalid setting LEASE_S: Input should be a valid number, ...``).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, FilePath, PrivateAttr, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.acl.deploy import read_password_file
from shared.keys import KEY_PREFIX_PATTERN, Keys
from shared.models import MAX_ENTRY_BYTES

#: Partitions on a Redis Cluster when PARTITIONS is unset: at least 4 per master up to 4
#: masters. Every process must agree on the count, so it is a constant, not 4 x the
#: masters seen at start (that would change when the cluster grows).
CLUSTER_PARTITIONS = 16


def default_worker_id() -> str:
    # hostname (the container id under compose) + pid + a short random part, so a
    # restarted process never reuses a dead one's consumer name.
    return f"{socket.gethostname()[:24]}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class ConnectionSettings(BaseSettings):
    """Where the streams are: every service, the simulator and its tools too."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    #: ``redis://[user@]host:port/db``, or ``rediss://`` for TLS. The user is the service's
    #: ACL user (``shared/acl``); its password is best given by REDIS_PASSWORD_FILE.
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    #: A file whose content (trailing newlines dropped) is the password of REDIS_URL's user,
    #: e.g. a compose secret: the password is then in neither the environment nor the URL.
    redis_password_file: FilePath | None = None
    #: ``rediss://`` only: the CA certificate (PEM) that the server's certificate must chain
    #: to; unset: the system's CAs. The server's name must match its certificate.
    redis_ca_cert: FilePath | None = None
    #: ``rediss://`` only: a client certificate and its key (PEM), for a server that asks
    #: for one (``tls-auth-clients``).
    redis_client_cert: FilePath | None = None
    redis_client_key: FilePath | None = Field(None, validate_default=True)
    key_prefix: str = Field("vab", pattern=KEY_PREFIX_PATTERN)
    #: Unset: 1 on one Redis, CLUSTER_PARTITIONS on a cluster (see ``keys``).
    partitions: int | None = Field(None, ge=1, le=1024)
    #: ``auto``: a cluster client when REDIS_URL's server is a cluster node (INFO cluster).
    redis_cluster: Literal["auto", "yes", "no"] = "auto"
    #: Durability: after each write batch that settles an entry (a gate) or starts or feeds
    #: a conversation, wait until this many replicas have it (WAIT). 0: asynchronous
    #: replication, as Redis does by default (a failover may lose the last writes).
    redis_wait_replicas: int = Field(0, ge=0, le=16)
    #: How long one WAIT may take; past it the batch is not confirmed and is waited on again.
    redis_wait_timeout_ms: int = Field(1000, ge=10, le=60_000)
    _cluster: bool = PrivateAttr(False)

    @field_validator("redis_password_file")
    @classmethod
    def _one_password(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        url = info.data.get("redis_url")
        if url is not None and urlsplit(url.get_secret_value()).password:
            raise ValueError("REDIS_URL carries a password already: give it in one place")
        # Read once now, so that a bad file stops the process here, with this line (never its content).
        try:
            read_password_file(value)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read it ({type(exc).__name__})") from None
        except ValueError:
            raise ValueError("the file holds no password") from None
        return value

    @field_validator("redis_ca_cert", "redis_client_cert", "redis_client_key")
    @classmethod
    def _tls_only(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # (A certificate that failed its own check is not in info.data: that one line is enough.)
        cert_given = info.data.get("redis_client_cert", value) is not None
        if info.field_name == "redis_client_key" and (value is not None) != cert_given:
            raise ValueError("REDIS_CLIENT_CERT and REDIS_CLIENT_KEY go together (a certificate and its key)")
        url = info.data.get("redis_url")
        if value is not None and url is not None and urlsplit(url.get_secret_value()).scheme != "rediss":
            raise ValueError("is for TLS: REDIS_URL must then be a rediss:// URL")
        return value

    def resolve_partitions(self, cluster: bool) -> None:
        """Record whether REDIS_URL is a cluster: an unset PARTITIONS follows it."""
        self._cluster = cluster

    @property
    def partition_count(self) -> int:
        if self.partitions is not None:
            return self.partitions
        return CLUSTER_PARTITIONS if self._cluster else 1

    @property
    def keys(self) -> Keys:
        return Keys(prefix=self.key_prefix, partitions=self.partition_count)

    def redis_password(self) -> str | None:
        """The password of REDIS_URL's user when it comes from REDIS_PASSWORD_FILE (read now)."""
        return None if self.redis_password_file is None else read_password_file(self.redis_password_file)

    def redis_client_options(self) -> dict[str, Any]:
        """redis-py connection options besides the URL: the password from its file, and
        for ``rediss://`` the TLS files (the certificate and the server's name checked)."""
        options: dict[str, Any] = {}
        password = self.redis_password()
        if password is not None:
            options["password"] = password
        if urlsplit(self.redis_url.get_secret_value()).scheme == "rediss":
            options.update(ssl_cert_reqs="required", ssl_check_hostname=True)
            if self.redis_ca_cert is not None:
                options["ssl_ca_certs"] = str(self.redis_ca_cert)
            if self.redis_client_cert is not None:
                options["ssl_certfile"] = str(self.redis_client_cert)
                options["ssl_keyfile"] = str(self.redis_client_key)
        return options


class CommonSettings(ConnectionSettings):
    """What both session services (transcriber, conversation) share."""

    worker_id: str = Field(default_factory=default_worker_id, pattern=r"^[A-Za-z0-9_.:-]{1,96}$")

    #: A claim not refreshed for this long is taken over by a peer.
    lease_s: float = Field(10.0, gt=0.2)
    #: Session slots per worker: a worker at capacity stops reading the control stream.
    max_sessions: int = Field(500, ge=1)
    #: Longest a blocking read waits; also bounds how late a taken-over stream joins the read.
    read_block_ms: int = Field(1000, ge=1)
    #: Most entries fetched per stream by one read (a data read also stops at its queue room).
    read_count: int = Field(1000, ge=1)
    #: Every owned stream is read this often even if it never rang (writers that do not ring).
    sweep_ms: int = Field(1000, ge=10)
    #: Most conversations claimed by one read: a burst of new conversations is
    #: spread over the workers instead of landing on whichever reads first.
    claim_batch: int = Field(2, ge=1)
    #: Most entries a worker holds in memory for one conversation: one that far behind
    #: is not read (its entries wait in Redis) until its queue drains to half.
    queue_max_entries: int = Field(1000, ge=2)
    #: Most payload bytes (the entries' ``d`` fields) held for one conversation, likewise;
    #: a read of it takes what fits above half, counting each entry as the largest valid
    #: one (MAX_ENTRY_BYTES), so the cap holds at least two of those.
    queue_max_bytes: int = Field(4 * 1024 * 1024, ge=2 * MAX_ENTRY_BYTES)
    #: Deliveries of one entry before it goes to the dead-letter stream.
    max_deliveries: int = Field(3, ge=1)
    #: Approximate stream caps (XADD MAXLEN ~).
    input_maxlen: int = Field(20_000, ge=100)
    transcripts_maxlen: int = Field(5_000, ge=100)
    responses_maxlen: int = Field(20_000, ge=100)
    dead_maxlen: int = Field(10_000, ge=100)
    #: A control stream longer than this is reported (its consumed entries are trimmed by
    #: MINID; never by length, which would cut live claims).
    control_maxlen: int = Field(200_000, ge=1000)
    #: A conversation's keys expire this long after it ends.
    conversation_ttl_s: int = Field(3600, ge=1)
    #: A conversation with no entry for this long is closed as if it had ended.
    idle_timeout_s: float = Field(900.0, gt=0)
    #: An owned conversation's entry delivered and left pending this long, with nothing of that
    #: conversation in flight, is claimed and handled again (the gate keeps it exactly-once).
    stuck_after_s: float = Field(30.0, ge=0.5)
    #: On SIGTERM, in-flight work gets this long before its conversations are handed back.
    drain_timeout_s: float = Field(10.0, ge=0)

    #: Move live conversations between workers, between turns, so each holds its fair
    #: share (shared/runtime/rebalance.py); false: a worker takes only new conversations
    #: and those of dead or leaving peers.
    rebalance: bool = True
    #: A worker holding more than its fair share by this fraction hands conversations back.
    rebalance_threshold: float = Field(0.2, ge=0.0, le=10.0)
    #: Most conversations one worker hands back per round (a round every LEASE_S / 2).
    rebalance_max_moves: int = Field(20, ge=1)
    #: Queue delay (how late a 100 ms timer fires: the median over the last LEASE_S) at which a
    #: worker counts as saturated and hands conversations back even at its fair share; 0: never.
    rebalance_saturated_ms: int = Field(250, ge=0)

    #: The /metrics /healthz /readyz port: 0 picks a free one (logged, and published
    #: in the worker's heartbeat), so several workers share a host with no set-up.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    metrics_enabled: bool = True

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def lease_ms(self) -> int:
        return int(self.lease_s * 1000)


class TranscriberSettings(CommonSettings):
    transcriber_engine: Literal["auto", "simulated", "openai", "local"] = "auto"


class ConversationSettings(CommonSettings):
    conversation_engine: Literal["auto", "echo", "openai", "local"] = "auto"
    #: Turns kept in a conversation's context (oldest dropped first).
    history_max_turns: int = Field(20, ge=0)
    #: Words per delta of the echo engine.
    echo_words_per_delta: int = Field(3, ge=1)
    #: Pause of the echo engine before each delta (0: the whole answer at once).
    echo_delta_delay_ms: int = Field(0, ge=0, le=10_000)
    #: The echo engine holds its worker's event loop this long per answer (a blocking pause):
    #: stands in for an engine that saturates its worker, in tests of rebalancing.
    echo_block_ms: int = Field(0, ge=0, le=10_000)
    system_prompt: str = (
        "You are a helpful voice assistant. Answer briefly, in one or two sentences."
    )


class _EngineSettings(BaseSettings):
    # An empty variable is an unset one: compose passes OPENAI_API_KEY="" (and so
    # would any ${VAR:-}) when the host has none.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, env_ignore_empty=True, str_strip_whitespace=True)


class OpenAISettings(_EngineSettings):
    """The ``openai`` engines (``OPENAI_*``). The key is also what the ``auto``
    engine choice looks at: set, ``auto`` means ``openai``."""

    model_config = SettingsConfigDict(env_prefix="OPENAI_")

    api_key: SecretStr | None = None
    #: Base URL of the Realtime API (Azure OpenAI, Realtime-compatible servers).
    realtime_url: str = "wss://api.openai.com/v1/realtime"
    #: Bounds the handshake and every wait for the server (session set-up, events).
    timeout_s: float = Field(30.0, gt=0)
    #: Conversation model.
    realtime_model: str = Field("gpt-realtime", min_length=1)
    #: Most output tokens of one answer.
    max_output_tokens: int = Field(256, ge=1)
    #: Transcription model.
    transcribe_model: str = Field("gpt-4o-transcribe", min_length=1)
    #: Language hint of transcription (e.g. ``en``); unset: detected.
    transcribe_language: str | None = None
    #: ``client``: commit on ``audio.end``; ``server_vad``: the server cuts utterances.
    turn_detection: Literal["client", "server_vad"] = "client"

    @field_validator("api_key", "transcribe_language", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            value = value.strip()
        return None if value in ("", None) else value

    @field_validator("realtime_url")
    @classmethod
    def _websocket_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("ws", "wss"):
            # Names the scheme only: a URL may carry credentials.
            given = f"{scheme}://" if scheme else "one without a scheme"
            raise ValueError(f"must be a ws:// or wss:// URL, not {given}")
        return value


class LocalEngineSettings(_EngineSettings):
    """The ``local`` engines (``LOCAL_*``): faster-whisper and llama.cpp on the CPU."""

    model_config = SettingsConfigDict(env_prefix="LOCAL_")

    #: Recognition threads. On a 2-core machine that also runs the local LLM, 2 + 2
    #: spinning threads oversubscribe the cores: measured, the first response delta
    #: came 1.7 s after the transcript instead of 0.3 s. One thread costs recognition
    #: a real-time factor of 0.21 instead of 0.16.
    asr_threads: int = Field(1, ge=1)
    #: Generation threads.
    llm_threads: int = Field(2, ge=1)
    #: Context window of the LLM, in tokens (prompt + answer).
    llm_ctx: int = Field(2048, ge=256)
    #: Most tokens of one answer; the prompt gets the rest of the context.
    llm_max_tokens: int = Field(64, ge=1)

    @field_validator("llm_max_tokens")
    @classmethod
    def _leaves_room_for_the_prompt(cls, value: int, info: ValidationInfo) -> int:
        ctx = info.data.get("llm_ctx")
        if ctx is not None and value >= ctx:
            raise ValueError(f"must be less than LOCAL_LLM_CTX ({ctx}): the prompt needs room too")
        return value


class GatewaySettings(BaseSettings):
    """The front door (``GATEWAY_*``): the Realtime-compatible WebSocket gateway. Where
    Redis is comes from :class:`ConnectionSettings`, as for every service."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True,
                                      env_ignore_empty=True)

    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    #: Comma-separated API keys (at least 16 characters each); or one per line in the file.
    api_keys: SecretStr | None = None
    api_keys_file: str | None = None
    #: With no keys: serve anyone (a local demo only; the gateway refuses to start otherwise).
    allow_anonymous: bool = False
    #: Let clients replace the deployment's system prompt (session or response ``instructions``).
    allow_client_instructions: bool = False
    #: Per API key: concurrent sessions (across every gateway), client events per second,
    #: seconds of input audio per minute, and the largest client event.
    max_sessions_per_key: int = Field(20, ge=1)
    events_per_s: float = Field(100.0, gt=0)
    audio_s_per_min: float = Field(180.0, gt=0)
    max_event_bytes: int = Field(1_048_576, ge=1024)
    #: A dropped client may resume its conversation (``?conversation_id=``) for this long.
    resume_ttl_s: int = Field(900, ge=10)
    #: Ephemeral keys (``POST /v1/realtime/client_secrets``) live this long unless asked otherwise.
    client_secret_ttl_s: int = Field(600, ge=10, le=7200)
    #: The model name the gateway reports in sessions (the pipeline's engines do the work).
    model_name: str = "local"
    #: On SIGTERM: how long an answer being streamed may take to finish before the open
    #: sockets are closed (1001; their clients resume on another gateway).
    drain_s: float = Field(5.0, ge=0, le=60)


#: Every settings class whose fields are environment variables (the README's table lists them all).
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    ConnectionSettings, CommonSettings, TranscriberSettings, ConversationSettings, OpenAISettings,
    LocalEngineSettings, GatewaySettings,
)

S = TypeVar("S", bound=BaseSettings)


class InvalidSettings(ValueError):
    """A settings class refused the environment; ``str()`` is the operator's message."""


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable of ``cls``'s field ``field``."""
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def describe_invalid(exc: ValidationError, cls: type[BaseSettings], given: Collection[str] = ()) -> str:
    """One line per refused value, naming its variable, never echoing the value
    itself (it may be a secret). ``given``: fields that came from the command line."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = error["loc"]
        field = str(loc[0]) if loc else ""
        name = env_name(cls, field) if field in cls.model_fields else cls.__name__
        source = " (given on the command line)" if field in given else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"invalid setting {name}{source}: {message}")
    return "\n".join(lines)


def load_settings(cls: type[S], overrides: Mapping[str, object] | None = None) -> S:
    """``cls`` from the environment, with ``overrides`` (command-line values) on top.
    Raises InvalidSettings with :func:`describe_invalid`'s text."""
    given: dict[str, Any] = dict(overrides or {})
    try:
        return cls(**given)
    except ValidationError as exc:
        raise InvalidSettings(describe_invalid(exc, cls, given)) from None
