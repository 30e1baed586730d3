"""Retry policy as pure functions (the websockets pattern).

``backoff()`` yields growing, jittered delays; a caller makes a new generator
after a good connection so the next failure starts small again.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff(
    initial_s: float = 0.1,
    factor: float = 2.0,
    max_s: float = 5.0,
    jitter: float = 0.2,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Yield delays initial_s, initial_s*factor, ... capped at max_s, each +-jitter."""
    r = rng or random.Random()
    delay = initial_s
    while True:
        yield delay * (1 + jitter * (2 * r.random() - 1))
        delay = min(delay * factor, max_s)
