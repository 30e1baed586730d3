"""Baseline 2: the same two hops on in-process asyncio queues (no broker at all).

Stage A and stage B are tasks in the bench's own process, sharing its event
loop with the driver. Each takes everything queued (up to 1000), runs the
same per-entry work as the redis-py baseline (:func:`transform_a` /
:func:`transform_b`: ``json.loads`` + ``json.dumps``) and puts the results on
the next queue. There are no entry ids: the client's put and each stage's
output are stamped with ``time.time()`` (sub-millisecond) in their place, and
each stage's CPU time is summed with ``time.thread_time()`` around its work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

from bench.baseline_redis import transform_a, transform_b
from bench.driver import SharedStreamsTarget
from bench.latency import DONE, MID, Observation, Utt, stamp_batch

#: (payload, mid stamp ms, mid perf, out stamp ms)
_Item = tuple[bytes, float, float, float]


class QueuesTarget(SharedStreamsTarget):
    """The pipeline and its client in one: ``send`` puts, ``read`` gets."""

    name = "baseline_queues"

    def __init__(self) -> None:
        self.in_q: asyncio.Queue[bytes] = asyncio.Queue()
        self.mid_q: asyncio.Queue[tuple[bytes, float, float]] = asyncio.Queue()
        self.out_q: asyncio.Queue[_Item] = asyncio.Queue()
        #: CPU seconds spent in each stage's work.
        self.stage_cpu_s = {"stage-a": 0.0, "stage-b": 0.0}
        self._tasks = [
            asyncio.create_task(self._stage_a(), name="queue-stage-a"),
            asyncio.create_task(self._stage_b(), name="queue-stage-b"),
        ]

    async def _stage_a(self) -> None:
        while True:
            batch = [await self.in_q.get()]
            while len(batch) < 1000 and not self.in_q.empty():
                batch.append(self.in_q.get_nowait())
            t0 = time.thread_time()
            for raw in batch:
                out = transform_a(raw)
                self.mid_q.put_nowait((out, time.time() * 1000, time.perf_counter()))
            self.stage_cpu_s["stage-a"] += time.thread_time() - t0

    async def _stage_b(self) -> None:
        while True:
            batch = [await self.mid_q.get()]
            while len(batch) < 1000 and not self.mid_q.empty():
                batch.append(self.mid_q.get_nowait())
            t0 = time.thread_time()
            for raw, mid_ms, mid_perf in batch:
                out = transform_b(raw)
                self.out_q.put_nowait((out, mid_ms, mid_perf, time.time() * 1000))
            self.stage_cpu_s["stage-b"] += time.thread_time() - t0

    async def send(self, batch: Sequence[Utt]) -> None:
        payloads = stamp_batch(batch)
        for u, payload in zip(batch, payloads, strict=True):
            u.in_id_ms = time.time() * 1000
            self.in_q.put_nowait(payload)

    async def read(self, block_ms: int) -> tuple[list[Observation], int]:
        try:
            first = await asyncio.wait_for(self.out_q.get(), timeout=block_ms / 1000)
        except TimeoutError:
            return [], 0
        items = [first]
        while len(items) < 1000 and not self.out_q.empty():
            items.append(self.out_q.get_nowait())
        out: list[Observation] = []
        for raw, mid_ms, mid_perf, out_ms in items:
            d: dict[str, Any] = json.loads(raw)
            cid, uid = d["conversation_id"], d["utterance_id"]
            out.append((MID, cid, uid, mid_ms, mid_perf))
            out.append((DONE, cid, uid, out_ms, None))
        return out, 2 * len(items)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
