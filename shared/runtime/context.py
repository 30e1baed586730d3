"""What every part of a worker's runtime shares: its service, its Redis and
writer, the conversations it owns, its meters, and whether it is stopping."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from shared.bus.program import Scripts
from shared.bus.retry import failure_reason
from shared.bus.writer import BatchWriter, FencedWriter
from shared.keys import Keys
from shared.runtime.conversations import Owned
from shared.runtime.meters import RuntimeMeters
from shared.runtime.saturation import QueueDelay
from shared.service import Service, dead_letter
from shared.settings import CommonSettings

#: A worker stays saturated (takes no conversations) this many leases after its queue delay
#: was last over the mark.
SATURATION_HOLD_LEASES = 20


@dataclass
class WorkerContext:
    settings: CommonSettings
    service: Service
    redis: aioredis.Redis
    scripts: Scripts
    writer: BatchWriter
    owned: Owned
    meters: RuntimeMeters
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: Reads answer (set by the reader; the writer keeps its own flag).
    redis_ok: bool = False
    #: While not ``redis_ok``: why, for readiness (``shared.bus.retry.failure_reason``).
    failing_with: str = ""
    #: When the last refresh that reached Redis began (monotonic): every claim still held
    #: then was re-claimed after that moment, and a peer takes a claim only once it has been
    #: idle for ``lease_s``. So until ``lease_s`` after this, this worker's claims are its own.
    confirmed_s: float = field(default_factory=time.monotonic)
    #: The Redis server's run id when this worker last looked: a new one means it restarted.
    run_id: str = ""
    #: Whether to claim new conversations from the control stream (with a free slot): not
    #: while rebalancing says this worker should hand some back (shared/runtime/balancer.py).
    taking_new: bool = True
    #: Conversations this worker handed back to rebalance that no peer took yet (its heartbeat
    #: says so: peers count them as still its own until one takes them).
    handed_back: int = 0
    #: How long work waits for this worker (saturation; shared/runtime/saturation.py).
    queue_delay: QueueDelay = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.queue_delay = QueueDelay(threshold_s=s.rebalance_saturated_ms / 1000, window_s=s.lease_s,
                                      hold_s=SATURATION_HOLD_LEASES * s.lease_s)

    @property
    def keys(self) -> Keys:
        return self.settings.keys

    @property
    def group(self) -> str:
        return self.service.group

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    def redis_failed(self, exc: BaseException) -> None:
        """A step waiting out a Redis failure (``retry_forever``'s ``on_error``): not ready
        meanwhile, with the reason; the read loop's next good read clears it."""
        self.redis_ok = False
        self.failing_with = failure_reason(exc)

    def unconfirmed_s(self) -> float:
        """Seconds since the last refresh that reached Redis began."""
        return time.monotonic() - self.confirmed_s

    def claims_confirmed(self) -> bool:
        """Are this worker's claims surely still its own? False after two refresh periods
        (of three per lease) without one reaching Redis: the worker was paused or cut off,
        and a peer may take its conversations over soon, or already has. A third of the
        lease is left as margin for a read sent now to arrive before a peer can reap."""
        return self.unconfirmed_s() < self.settings.lease_s * 2 / 3

    def dead(
        self, stream: str, entry_id: str, raw: bytes | None, reason: str, deliveries: int = 1,
        writer: FencedWriter | None = None,
    ) -> None:
        """Ack ``entry_id`` of ``stream`` into the dead-letter stream, with the reason
        (through ``writer``, an owned conversation's, when it is one of its entries)."""
        self.meters.dead(stream).inc()
        dead_letter(writer or self.writer, self.settings, stream, self.group, self.worker_id, entry_id, raw, reason,
                    deliveries)
