"""Seeing what stalls a worker: garbage-collector pauses and event-loop lag.

A latency tail that comes and goes is usually the event loop not running the
ready work for a while: a GC pass, a long synchronous step, or a machine that
took the CPU away. These two meters tell which: ``vab_gc_pause_seconds`` times
every collection (``gc.callbacks``), and ``vab_event_loop_lag_seconds`` records
how late a periodic timer fires. A stall longer than ``log_over_s`` is also
logged, with the GC pause that overlapped it, if any.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from shared import metrics

log = logging.getLogger(__name__)

#: How often the lag probe's timer is set.
PROBE_INTERVAL_S = 0.1


class StallMonitor:
    def __init__(self, log_over_s: float = 0.1) -> None:
        self._log_over_s = log_over_s
        self._gc_started = 0.0
        #: The longest GC pause since the lag probe last looked (to name a stall's cause).
        self._gc_worst_s = 0.0
        self._pauses = [metrics.GC_PAUSE.labels(str(g)) for g in range(3)]
        self._lag = metrics.LOOP_LAG.labels()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._probe(), name="stall-probe")

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause_s = time.perf_counter() - self._gc_started
        self._pauses[min(int(info.get("generation", 0)), 2)].observe(pause_s)
        self._gc_worst_s = max(self._gc_worst_s, pause_s)

    async def _probe(self) -> None:
        while True:
            due = time.perf_counter() + PROBE_INTERVAL_S
            await asyncio.sleep(PROBE_INTERVAL_S)
            late_s = max(0.0, time.perf_counter() - due)
            self._lag.observe(late_s)
            if late_s > self._log_over_s:
                log.warning("event loop stalled %.0f ms (longest GC pause meanwhile: %.1f ms)",
                            late_s * 1000, self._gc_worst_s * 1000)
            self._gc_worst_s = 0.0
