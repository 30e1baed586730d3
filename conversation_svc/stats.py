"""The answers' timings for the monitor (``python -m simulator_svc monitor``)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic_core import to_json

from shared.bus.writer import BatchWriter

#: Entries of the monitor's stats stream: each holds up to a second of answers.
STATS_MAXLEN = 5_000
STATS_FLUSH_S = 1.0


class StatsBuffer:
    """The answers' timings for the monitor, written as one stats entry per
    second (per partition) instead of one per answer: off the hot path."""

    def __init__(self) -> None:
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._writer: BatchWriter | None = None

    def add(self, writer: BatchWriter, key: str, record: dict[str, Any]) -> None:
        self._writer = writer
        records = self._pending.get(key)
        if records is None:
            records = self._pending[key] = []
            asyncio.get_running_loop().call_later(STATS_FLUSH_S, self._flush, key)
        records.append(record)

    def _flush(self, key: str) -> None:
        records = self._pending.pop(key, None)
        if records and self._writer is not None:
            self._writer.add(key, to_json(records), STATS_MAXLEN)
