"""Is this worker saturated? Measured by its queue delay (pure).

The queue delay of a conversation is how long its work waited for the worker:
from the moment its drain was asked to run (an entry read, a conversation
adopted) to the moment it began. An idle worker starts it at once (well under a
millisecond); one whose event loop is busy (a CPU-bound engine, more
conversations than it can serve) starts it only after the work ahead of it, and
that wait grows with the overload. Work waiting behind its own conversation's
previous turn is not counted: that is the conversation's pace, and moving it
would not help.

Saturated: the median delay over the last ``window_s`` is over ``threshold_s``,
from at least ``MIN_SAMPLES`` samples. It stays saturated until the median is
back under half the threshold and ``hold_s`` has passed since it was last over
(hysteresis: a worker that sheds load is not sent it back at once).
"""

from __future__ import annotations

import statistics
from collections import deque

#: Fewer samples in the window than this say nothing (a handful of slow starts is noise).
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
        self._saturated = False
        self._over_at = float("-inf")

    def observe(self, delay_s: float, now_s: float) -> None:
        self._samples.append((now_s, max(0.0, delay_s)))

    def median_s(self, now_s: float) -> float | None:
        """The median delay over the window; None with too few samples."""
        while self._samples and now_s - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        if len(self._samples) < MIN_SAMPLES:
            return None
        return statistics.median(d for _, d in self._samples)

    def saturated(self, now_s: float) -> bool:
        if not self.threshold_s:
            return False
        median = self.median_s(now_s)
        if median is not None and median > self.threshold_s:
            self._saturated = True
            self._over_at = now_s
        elif self._saturated and (median is None or median < self.threshold_s / 2) \
                and now_s - self._over_at >= self.hold_s:
            self._saturated = False
        return self._saturated
