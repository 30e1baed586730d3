"""One settings object per service, read from environment variables.

Field names map to upper-case variables (``lease_s`` <- ``LEASE_S``). Units are
in the names. Secrets are ``SecretStr`` so they never print.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.keys import Keys


def default_worker_id() -> str:
    # hostname (the container id under compose) + pid + a short random part, so a
    # restarted process never reuses a dead one's consumer name.
    return f"{socket.gethostname()[:24]}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    key_prefix: str = Field("vab", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    partitions: int = Field(1, ge=1, le=1024)
    worker_id: str = Field(default_factory=default_worker_id, pattern=r"^[A-Za-z0-9_.:-]{1,96}$")

    #: A claim not refreshed for this long is taken over by a peer.
    lease_s: float = Field(10.0, gt=0.2)
    #: Session slots per worker: a worker at capacity stops reading the control stream.
    max_sessions: int = Field(500, ge=1)
    #: Longest a blocking read waits; also bounds how late a taken-over stream joins the read.
    read_block_ms: int = Field(1000, ge=1)
    #: Most entries fetched by one read.
    read_count: int = Field(1000, ge=1)
    #: Every owned stream is read this often even if it never rang (writers that do not ring).
    sweep_ms: int = Field(1000, ge=10)
    #: Most conversations claimed by one read: a burst of new conversations is
    #: spread over the workers instead of landing on whichever reads first.
    claim_batch: int = Field(2, ge=1)
    #: Deliveries of one entry before it goes to the dead-letter stream.
    max_deliveries: int = Field(3, ge=1)
    #: Approximate stream caps (XADD MAXLEN ~).
    input_maxlen: int = Field(20_000, ge=100)
    transcripts_maxlen: int = Field(5_000, ge=100)
    responses_maxlen: int = Field(20_000, ge=100)
    dead_maxlen: int = Field(10_000, ge=100)
    #: Hard cap of a control stream; below it, consumed entries are trimmed by MINID.
    control_maxlen: int = Field(200_000, ge=1000)
    #: A conversation's keys expire this long after it ends.
    conversation_ttl_s: int = Field(3600, ge=1)
    #: A conversation with no entry for this long is closed as if it had ended.
    idle_timeout_s: float = Field(900.0, gt=0)
    #: On SIGTERM, in-flight work gets this long before its conversations are handed back.
    drain_timeout_s: float = Field(10.0, ge=0)

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
    def keys(self) -> Keys:
        return Keys(prefix=self.key_prefix, partitions=self.partitions)

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
    system_prompt: str = (
        "You are a helpful voice assistant. Answer briefly, in one or two sentences."
    )


class EngineCredentials(BaseSettings):
    """What the `auto` engine choice looks at; never logged."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    openai_api_key: SecretStr | None = None

    @field_validator("openai_api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # compose passes OPENAI_API_KEY="" when the host has none: that is "no key".
        return None if value in ("", None) else value
