"""The ownership runtime's metric children, with their labels resolved once
(the hot path observes them per entry)."""

from __future__ import annotations

import time
from typing import Any

from shared import metrics
from shared.metrics import stream_kind
from shared.models import Entry, EntryError


class RuntimeMeters:
    """This service's metric children, with labels resolved once (hot path)."""

    def __init__(self, service: str, data_kind: str) -> None:
        self.service = service
        #: Entries of this service's data streams (all of one kind): children resolved once.
        self.data_read = metrics.ENTRIES_READ.labels(service, data_kind)
        self._data_queue_time = metrics.QUEUE_TIME.labels(service, data_kind)
        self._data_handled: dict[str, Any] = {}
        self._data_kind = data_kind
        self.owned = metrics.SESSIONS_OWNED.labels(service)
        self.capacity = metrics.SESSION_CAPACITY.labels(service)
        self.takeovers = metrics.TAKEOVERS.labels(service)
        self.handbacks = metrics.HANDBACKS.labels(service)
        self.rebalanced = metrics.REBALANCED.labels(service)
        self.saturated = metrics.SATURATED.labels(service)
        self.lost = metrics.LOST_CLAIMS.labels(service)
        self.reclaimed = metrics.RECLAIMED.labels(service)
        self.suppressed = metrics.DUPLICATES_SUPPRESSED.labels(service)
        self.redis_errors_read = metrics.REDIS_ERRORS.labels(service, "read")
        self._cache: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric.name, *labels)
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = metric.labels(self.service, *labels)
        return child

    def dead(self, key: str) -> Any:
        return self._child(metrics.ENTRIES_DEAD, stream_kind(key))

    def lag(self, kind: str) -> Any:
        return self._child(metrics.GROUP_LAG, kind)

    def pending(self, kind: str) -> Any:
        return self._child(metrics.GROUP_PENDING, kind)

    def handled(self, item: Entry | EntryError, entry_id: str) -> None:
        """One data-stream entry handled: count it by type, observe its queue time."""
        type_ = "invalid" if isinstance(item, EntryError) else item.type
        counter = self._data_handled.get(type_)
        if counter is None:
            counter = self._data_handled[type_] = metrics.ENTRIES_HANDLED.labels(self.service, self._data_kind, type_)
        counter.inc()
        ms = int(entry_id[: entry_id.index("-")])
        self._data_queue_time.observe(max(0.0, time.time() - ms / 1000))


