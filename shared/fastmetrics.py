"""Lock-free Prometheus counters, gauges and histograms for the hot path.

prometheus_client's own metrics take a ``threading.Lock`` per ``inc`` and
walk the bucket list per ``observe``: measured with py-spy at about 12 % of a
conversation worker's CPU under load (seven observations per answered
utterance). A worker is one asyncio thread, and every observation happens on
its event loop, so plain attribute updates are safe; these classes keep the
subset of the prometheus_client API the services use (``labels``, ``inc``,
``set``, ``observe``) and expose the same series through a collector on a
prometheus_client registry (the exposition format stays prometheus_client's).
Do not observe these from another thread.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        #: Per bucket (not cumulative); the last one is +Inf.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, Prometheus' "le" (less or equal).
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)
V = TypeVar("V", CounterChild, GaugeChild)


class _Family(Generic[C]):
    """One metric name with its label names; children by label values."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        if not self.labelnames:
            self._children[()] = self._new_child()  # exposed at zero from the start
        if registry is not None:
            registry.register(self)

    def _new_child(self) -> C:
        raise NotImplementedError

    def labels(self, *values: str) -> C:
        if not values and not self.labelnames:
            return self._children[()]  # the hot path of an unlabelled metric: no key to build
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {key}")
            child = self._children[key] = self._new_child()
        return child

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class _ValueFamily(_Family[V]):
    """A family whose children hold one ``value`` (counters, gauges)."""

    family_type: type[CounterMetricFamily] | type[GaugeMetricFamily]

    def collect(self) -> Iterator[Metric]:
        family = self.family_type(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family


class Counter(_ValueFamily[CounterChild]):
    family_type = CounterMetricFamily

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)


class Gauge(_ValueFamily[GaugeChild]):
    family_type = GaugeMetricFamily

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self.labels().set(value)


class Histogram(_Family[HistogramChild]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = (), registry: CollectorRegistry | None = None) -> None:
        bounds = tuple(float(b) for b in buckets if b != float("inf"))
        if not bounds or list(bounds) != sorted(bounds):
            raise ValueError(f"{name}: buckets must be given in increasing order")
        self.bounds = bounds
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for values, child in list(self._children.items()):
            cumulative, running = [], 0
            for le, count in zip(les, child.counts, strict=True):
                running += count
                cumulative.append((le, running))
            family.add_metric(list(values), cumulative, child.sum)
        yield family
