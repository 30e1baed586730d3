"""Helpers of the gateway tests: start the pipeline and gateways as real
processes, and talk to them through the official openai SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from openai import AsyncOpenAI

from shared import devstack
from shared.devstack import ServiceProcess, Stack

KEY_A = "sk-test-gateway-key-aaaaaaaaaaaaaaaa"
KEY_B = "sk-test-gateway-key-bbbbbbbbbbbbbbbb"


def start_gateway(stack: Stack, **env: str) -> tuple[ServiceProcess, str]:
    """A gateway process on a free port accepting KEY_A and KEY_B; it and its base URL, once ready."""
    return devstack.start_gateway(stack, {"GATEWAY_API_KEYS": f"{KEY_A},{KEY_B}", **env})


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
