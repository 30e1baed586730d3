"""The stall meters see a GC pass and a loop blocked by synchronous work."""

from __future__ import annotations

import asyncio
import gc
import time

from shared import metrics
from shared.stalls import StallMonitor


def _count(hist: object) -> int:
    return sum(hist.counts)  # type: ignore[attr-defined]


async def test_gc_pauses_and_a_blocked_loop_are_measured() -> None:
    monitor = StallMonitor(log_over_s=0.05)
    full = metrics.GC_PAUSE.labels("2")
    lag = metrics.LOOP_LAG.labels()
    before_gc, before_lag, before_sum = _count(full), _count(lag), lag.sum
    monitor.start()
    try:
        gc.collect()
        await asyncio.sleep(0.05)  # the probe's first timer is set
        time.sleep(0.2)  # noqa: ASYNC251 - on purpose: synchronous work holds the loop, the timer fires late
        await asyncio.sleep(0.15)
    finally:
        monitor.stop()
    assert _count(full) == before_gc + 1
    assert _count(lag) > before_lag
    assert lag.sum - before_sum >= 0.1
    assert monitor._on_gc not in gc.callbacks
