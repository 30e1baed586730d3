"""Reading a run's results (the dict ``results.json`` holds): the names of the
systems, a nested lookup that never raises, one latency level, a ratio."""

from __future__ import annotations

from typing import Any

OURS = "ours"
BASE = "baseline_redis"
QUEUES = "baseline_queues"
SYSTEMS = (OURS, BASE, QUEUES)


def ratio(a: Any, b: Any) -> float | None:
    """``a / b``, or None unless both are numbers and ``b`` is not 0."""
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return float(a) / float(b)


def lookup(d: Any, *path: str | int) -> Any:
    """``d[path[0]][path[1]]...``, or None where a step is missing."""
    for p in path:
        if isinstance(d, dict) and p in d:
            d = d[p]
        elif isinstance(d, list) and isinstance(p, int) and 0 <= p < len(d):
            d = d[p]
        else:
            return None
    return d


def latency_level(results: dict[str, Any], system: str, rate: float) -> dict[str, Any] | None:
    """``system``'s latency figures at offered load ``rate`` (None when it has none)."""
    for lvl in lookup(results, "systems", system, "latency") or []:
        if lvl.get("offered_per_s") == rate:
            return dict(lvl)
    return None
