"""What the OpenAI engine tests share (the ``fake`` server fixture is in
conftest): the API key the fake accepts, retry delays that do not make a test
wait, and an endpoint that points an engine at the fake."""

from __future__ import annotations

from collections.abc import Iterator

from shared.realtime.connection import RealtimeEndpoint
from tests.fake_realtime import FakeRealtimeServer

KEY = "sk-test-SECRETKEY-0123456789abcdef"


def fast_delays() -> Iterator[float]:
    """Backoff delays for the engines: 10 ms each, however many."""
    while True:
        yield 0.01


def endpoint(server: FakeRealtimeServer, key: str = KEY, timeout_s: float = 5.0) -> RealtimeEndpoint:
    """The fake's endpoint, with ``key``; no pings (tests are short)."""
    return RealtimeEndpoint(api_key=key, base_url=server.url, timeout_s=timeout_s, ping_interval_s=None)
