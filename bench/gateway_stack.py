"""The processes the gateway benchmark measures: a Redis of its own, the
workers (transcriber_svc, conversation_svc) and a gateway, each a process of
its own, started and stopped here (also on errors)."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.gateway_client import BENCH_KEY
from shared.devstack import ServiceProcess, Stack, deterministic_env, start_gateway, wait_ready
from shared.redis_server import RedisServer, start_embedded


@dataclass
class Pipeline:
    """Redis and the workers, running; gateways are started on it with :meth:`start_gateway`."""

    stack: Stack
    server: RedisServer

    def pids(self) -> list[int]:
        """The workers' and Redis' processes that are alive (gateways included)."""
        redis = [self.server.proc.pid] if self.server.proc is not None else []
        return [p.pid for p in self.stack.procs if p.alive()] + redis

    def start_gateway(self, **env: str) -> tuple[ServiceProcess, str]:
        """A gateway on a free loopback port, accepting :data:`BENCH_KEY`; returns it and its
        base URL once ``/readyz`` answers. ``env``: more ``GATEWAY_*`` settings."""
        return start_gateway(self.stack, {"GATEWAY_API_KEYS": BENCH_KEY, **env})

    @staticmethod
    def stop_gateway(proc: ServiceProcess) -> None:
        """SIGTERM (it closes its sockets and exits), SIGKILL if it lingers."""
        proc.signal(signal.SIGTERM)
        if proc.wait(15) is None:
            proc.signal(signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def pipeline(engines: dict[str, str], worker_env: dict[str, str] | None = None,
             ready_timeout_s: float = 180.0, log_dir: Path | None = None) -> Iterator[Pipeline]:
    """A fresh Redis (no persistence) and one transcriber and one conversation worker
    with ``engines`` (``TRANSCRIBER_ENGINE`` / ``CONVERSATION_ENGINE``); everything is
    stopped on exit. ``worker_env``: more settings of the workers (and gateways).
    ``log_dir``: keep the processes' logs there (else in a folder removed at the end)."""
    server = start_embedded(appendonly=False)
    prefix = f"gwbench{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
            env = deterministic_env(server.url, prefix, **engines, **(worker_env or {}))
            stack = Stack(env, log_dir or Path(tmp) / "logs")
            try:
                stack.start("transcriber_svc")
                stack.start("conversation_svc")
                # Before any gateway: wait_ready counts every started process as a worker.
                wait_ready(stack, server.url, prefix, timeout_s=ready_timeout_s)
                yield Pipeline(stack, server)
            finally:
                stack.stop_all()
    finally:
        server.cleanup()
