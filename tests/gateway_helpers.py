"""Helpers of the gateway tests: start the pipeline and gateways as real
processes, and talk to them through the official openai SDK."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from openai import AsyncOpenAI

from shared.devstack import ServiceProcess, Stack

KEY_A = "sk-test-gateway-key-aaaaaaaaaaaaaaaa"
KEY_B = "sk-test-gateway-key-bbbbbbbbbbbbbbbb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(stack: Stack, **env: str) -> tuple[ServiceProcess, str]:
    """A gateway process on a free port; returns it and its base URL once /readyz answers."""
    port = free_port()
    proc = stack.start("gateway_svc", {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
                                       "GATEWAY_API_KEYS": f"{KEY_A},{KEY_B}", **env})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"gateway exited:\n{proc.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=1) as reply:
                if reply.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"gateway not ready:\n{proc.log_text()[-3000:]}")


def client(base: str, key: str = KEY_A) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=base + "/v1", max_retries=0)


async def collect_until(conn: Any, done: Callable[[Any], bool], timeout_s: float = 60.0) -> list[Any]:
    """Server events, parsed by the SDK, up to and including the first for which ``done`` holds."""
    seen: list[Any] = []
    async with asyncio.timeout(timeout_s):
        while True:
            event = await conn.recv()
            seen.append(event)
            if done(event):
                return seen


def of_type(events: list[Any], type_: str) -> list[Any]:
    return [e for e in events if e.type == type_]
