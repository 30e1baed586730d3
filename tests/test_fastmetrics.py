"""shared.fastmetrics exposes exactly what prometheus_client's own metrics
would for the same observations (series, bucket counts, sums)."""

from __future__ import annotations

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared import fastmetrics

BUCKETS = (0.001, 0.0025, 0.01, 1.0)
VALUES = (0.0, 0.0005, 0.001, 0.0011, 0.0025, 0.5, 1.0, 7.0)


def _samples(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_same_series_as_prometheus_client() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    made = {}
    for reg, mod in ((theirs, prometheus_client), (ours, fastmetrics)):
        made[mod] = (
            mod.Histogram("t_seconds", "h", ["svc"], buckets=BUCKETS, registry=reg),
            mod.Histogram("t_plain_seconds", "h", buckets=BUCKETS, registry=reg),
            mod.Counter("t_events_total", "c", ["svc", "kind"], registry=reg),
            mod.Gauge("t_level", "g", ["svc"], registry=reg),
        )
    for hist, plain, counter, gauge in made.values():
        for v in VALUES:
            hist.labels("a").observe(v)
            plain.observe(v)
        hist.labels("b").observe(0.002)
        counter.labels("a", "x").inc()
        counter.labels("a", "x").inc(2.5)
        gauge.labels("a").set(4)
    assert _samples(ours) == _samples(theirs)


def test_rejects_what_prometheus_client_rejects() -> None:
    counter = fastmetrics.Counter("t2_total", "c", ["svc"])
    with pytest.raises(ValueError):
        counter.labels("a").inc(-1)
    with pytest.raises(ValueError):
        counter.labels("a", "extra")
    with pytest.raises(ValueError):
        fastmetrics.Histogram("t2_seconds", "h", buckets=(1.0, 0.5))
