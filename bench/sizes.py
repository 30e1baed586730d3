"""How big each phase of the benchmark runs: the full size (a few minutes,
writes ``docs/performance.md``) and the seconds-long ``--quick`` CI size."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    throughput_utterances: int = 20_000
    conversations: int = 200
    max_in_flight: int = 1000
    latency_rates: tuple[float, ...] = (20.0, 200.0, 1000.0)
    latency_window_s: float = 10.0
    drain_s: float = 10.0
    timeout_s: float = 180.0
    capacity_steps: tuple[int, ...] = (0, 50, 500, 1000, 2000, 5000)
    capacity_probes: int = 50
    capacity_rate: float = 50.0
    capacity_window_s: float = 6.0
    scaling_workers: tuple[int, ...] = (1, 2)
    #: Throughput is measured this many times in a row; the median run is reported (all are kept).
    throughput_reps: int = 3


FULL = Sizes()
QUICK = Sizes(
    throughput_utterances=600, conversations=20, max_in_flight=200, latency_window_s=1.0, drain_s=5.0,
    timeout_s=60.0, capacity_steps=(0, 10, 50, 100, 200), capacity_probes=10, capacity_window_s=1.0,
    throughput_reps=1,
)
