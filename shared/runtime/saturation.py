"""Is this worker saturated? Measured by its queue delay (pure).

The queue delay is how long work that is ready waits for the worker: how late a
timer set every ``PROBE_INTERVAL_S`` fires (``Chores.probe_queue_delay``). Every
entry read, every answer and every write of a worker runs on its event loop;
when the loop is held (a CPU-bound engine, more conversations than it serves),
all of that waits behind the work ahead, unread entries in Redis included, and
the timer fires late by as much. An idle worker's fires within a millisecond.

Overloaded: the median delay over the last ``window_s`` is over ``threshold_s``,
from at least ``MIN_SAMPLES`` samples, or from fewer that were late for half the
window in all (a loop held that long fires its timer that rarely). An
overloaded worker sheds conversations. Saturated: overloaded now, or within
``hold_s`` (hysteresis: a worker that shed load is not sent it back at once,
and takes none meanwhile).
"""

from __future__ import annotations

import statistics
from collections import deque

#: How often the probe's timer is set.
PROBE_INTERVAL_S = 0.1
#: Fewer samples in the window than this say nothing.
MIN_SAMPLES = 10
#: Samples kept (the newest): bounds memory and the median's cost on a busy worker.
MAX_SAMPLES = 1000


class QueueDelay:
    def __init__(self, threshold_s: float, window_s: float, hold_s: float) -> None:
        #: 0: never saturated (the measure is still kept, for the heartbeat).
        self.threshold_s = threshold_s
        self.window_s = window_s
        self.hold_s = hold_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)
        self._over_at = float("-inf")

    def observe(self, delay_s: float, now_s: float) -> None:
        self._samples.append((now_s, max(0.0, delay_s)))

    def median_s(self, now_s: float) -> float | None:
        """The median delay over the window; None with too few samples."""
        while self._samples and now_s - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        if len(self._samples) < MIN_SAMPLES and sum(d for _, d in self._samples) < self.window_s / 2:
            return None
        return statistics.median(d for _, d in self._samples)

    def overloaded(self, now_s: float) -> bool:
        """Over the mark now (it sheds conversations)."""
        if not self.threshold_s:
            return False
        median = self.median_s(now_s)
        if median is not None and median > self.threshold_s:
            self._over_at = now_s
            return True
        return False

    def saturated(self, now_s: float) -> bool:
        """Over the mark now or within ``hold_s`` (it takes no conversations)."""
        return self.overloaded(now_s) or now_s - self._over_at < self.hold_s
