"""``OwnershipRuntime``: one service's worker, wired from the runtime's parts.

Start-up: load the scripts, create the control streams' group, publish a
heartbeat, then run the reader with the writer and the periodic chores beside
it (with REBALANCE, the rebalancer's rounds too). Shutdown (SIGTERM,
:meth:`stop`): stop reading, let queued work finish up to ``drain_timeout_s``,
flush the writer, hand every owned conversation back, close connections last.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aioredis

from shared.bus.groups import ensure_group
from shared.bus.program import Fence, QueuedOp, Scripts
from shared.bus.resp import server_run_id
from shared.bus.retry import is_transient, retry_forever
from shared.bus.writer import BatchWriter, FencedWriter
from shared.metrics import stream_kind
from shared.runtime.balancer import Balancer
from shared.runtime.context import WorkerContext
from shared.runtime.conversations import Live, Owned, QueueLimits
from shared.runtime.drain import Drainer
from shared.runtime.leases import Leases
from shared.runtime.maintenance import Chores, periodic
from shared.runtime.meters import RuntimeMeters
from shared.runtime.reading import ReadScheduler
from shared.service import Service
from shared.settings import CommonSettings
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class OwnershipRuntime:
    """Runs one service's worker: reads, ownership, per-conversation ordering."""

    def __init__(
        self, settings: CommonSettings, service: Service, redis: aioredis.Redis, metrics_port: int | None = None
    ) -> None:
        scripts = Scripts()
        meters = RuntimeMeters(service.name, stream_kind(service.data_key(settings.keys, "x")))
        writer = BatchWriter(redis, scripts, bells=settings.keys, wait_replicas=settings.redis_wait_replicas,
                             wait_timeout_ms=settings.redis_wait_timeout_ms)
        writer.on_suppressed = meters.suppressed.inc
        writer.on_gate_failed = self._gate_failed
        writer.on_fenced = self._fenced
        meters.capacity.set(settings.max_sessions)
        owned = Owned(settings.max_sessions, QueueLimits.from_settings(settings))
        self.w = WorkerContext(settings, service, redis, scripts, writer, owned, meters)
        self.drainer = Drainer(self.w, on_finished=self._finished, on_room=self._on_room, refill=self._refill)
        self.leases = Leases(self.w, self.drainer, read_soon=self._read_soon)
        self.reader = ReadScheduler(self.w, self.drainer, on_control=self.leases.on_control,
                                    on_unreadable=self.leases.reject, on_restart=self.leases.resume_all)
        self.chores = Chores(self.w, self.drainer, metrics_port)
        #: Live rebalancing (REBALANCE); None: a worker takes only new and orphaned conversations.
        self.balancer = (Balancer(self.w, self.leases, self.drainer, self.chores.heartbeat) if settings.rebalance
                         else None)
        self.started = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        #: Conversations being forgotten after a fenced write (kept: a task needs a reference).
        self._losing: set[asyncio.Task[None]] = set()

    @property
    def live(self) -> dict[str, Live]:
        """The owned conversations by id (for tests and tools)."""
        return self.w.owned.live

    async def run(self) -> None:
        """Run until :meth:`stop` is called; then drain and hand back."""
        w = self.w
        await retry_forever("start-up", self._prepare)
        began = time.monotonic()
        await retry_forever("heartbeat", self.chores.heartbeat)
        w.confirmed_s = began
        w.redis_ok = True
        lease_s = w.settings.lease_s
        table = w.owned.table
        self._tasks = [
            asyncio.create_task(w.writer.run(), name="writer"),
            # A refresh not answered within its period is sent again at once on a fresh connection:
            # a silently dead one would otherwise hold it for a socket timeout, longer than a lease.
            asyncio.create_task(periodic("refresh", lease_s / 3, self._refresh, timeout_s=lease_s / 3),
                                name="refresher"),
            asyncio.create_task(periodic("reaper", min(lease_s / 4, 1.0),
                                         self.balancer.reap_once if self.balancer else self.leases.reap_once,
                                         when=lambda: table.accepting), name="reaper"),
            asyncio.create_task(periodic("control trim", max(5.0, lease_s), self.chores.trim_controls),
                                name="control-trimmer"),
            asyncio.create_task(periodic("lag sampling", 5.0, self.chores.sample_lag), name="lag-sampler"),
            asyncio.create_task(self.chores.probe_queue_delay(), name="queue-delay-probe"),
            asyncio.create_task(periodic("stuck entries", w.settings.stuck_after_s / 2, self.leases.reclaim_stuck_once),
                                name="stuck-reclaimer"),
        ]
        if self.balancer is not None:
            self._tasks.append(asyncio.create_task(periodic("rebalance", self.balancer.interval_s, self.balancer.round),
                                                   name="rebalancer"))
        self.started.set()
        log.info("worker %s of %s up: %d session slots, lease %.1fs",
                 w.worker_id, w.service.name, table.capacity, lease_s)
        try:
            await self.reader.run()
        finally:
            await self._shutdown()

    def not_ready_reason(self) -> str | None:
        """Why /readyz should say 503, or None when ready."""
        if not self.started.is_set():
            return "connecting to redis"
        if self.w.owned.table.draining:
            return "draining"
        if not self.w.redis_ok:
            return self.w.failing_with or "redis unreachable"
        if not self.w.writer.redis_ok:
            return self.w.writer.failing_with or "redis unreachable"
        if not self.w.claims_confirmed():
            # A cut that no command has failed on yet (a socket timeout is longer than a lease).
            return f"claims not confirmed for {self.w.unconfirmed_s():.1f}s (redis unreachable?)"
        return None

    def stop(self) -> None:
        if not self.w.stopping.is_set():
            log.info("stopping: no new conversations; draining in-flight work")
        self.w.owned.table.draining = True
        self.w.stopping.set()

    async def _prepare(self) -> None:
        w = self.w
        w.run_id = await server_run_id(w.redis)
        await w.scripts.load(w.redis)
        for key in w.keys.controls():
            await ensure_group(w.redis, key, w.group)

    async def _refresh(self) -> None:
        w = self.w
        began = time.monotonic()
        before = len(w.owned.table.claims)
        await self.leases.refresh_once()
        await self.chores.heartbeat()  # a round trip even with no claim to refresh
        if not w.claims_confirmed():
            log.warning("claims confirmed again after %.1fs unconfirmed (was this worker paused or cut off?): "
                        "%d of %d still ours", w.unconfirmed_s(), len(w.owned.table.claims), before)
        w.confirmed_s = began
        self.chores.expire_idle()

    async def _finished(self, live: Live) -> None:
        await self.leases.finish(live)

    def _read_soon(self, data_key: str) -> None:
        self.reader.read_soon(data_key)

    def _gate_failed(self, op: QueuedOp, reason: str) -> None:
        """Redis refused a gate's effect (nothing was written, the source is still
        pending): dead-letter the source entry with the reason, so it is acked with a trace
        instead of being retried forever. A dead letter that cannot be written is logged."""
        src, dst = op.keys
        entry_id = str(op.args[1])
        if dst in self.w.keys.deads():
            log.error("dead letter of %s %s could not be written: %s", src, entry_id, reason)
            return
        writer = FencedWriter(self.w.writer, op.fence) if op.fence is not None else None
        self.w.dead(src, entry_id, None, f"its effect could not be written to {dst}: {reason}", writer=writer)

    def _fenced(self, fence: Fence) -> None:
        """A write was refused because a peer holds its conversation's claim: forget
        that conversation now (the writer calls this synchronously; the rest is a task)."""
        task = asyncio.create_task(self.leases.fenced(fence), name="fenced")
        self._losing.add(task)
        task.add_done_callback(self._losing.discard)

    def _on_room(self, live: Live) -> None:
        self.reader.read_soon(live.ctx.data_key)

    async def _refill(self, live: Live) -> None:
        await self.leases.claim_pending_page(live)

    async def _shutdown(self) -> None:
        w = self.w
        w.owned.table.draining = True
        deadline = time.monotonic() + w.settings.drain_timeout_s
        busy = [live.task for live in w.owned.live.values() if live.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=max(0.0, deadline - time.monotonic()))
        for live in list(w.owned.live.values()):
            await cancel_and_wait(live.task)
        try:
            await asyncio.wait_for(w.writer.flushed(), timeout=max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            log.error("writes still pending at shutdown; their entries stay pending for a peer")
        await self.leases.hand_back()
        for task in [*self._tasks, *self._losing]:
            await cancel_and_wait(task)
        await w.writer.aclose()
        try:
            pipe = w.redis.pipeline(transaction=False)
            pipe.delete(w.keys.worker(w.service.name, w.worker_id))
            pipe.zrem(w.keys.workers(w.service.name), w.worker_id)
            await pipe.execute()
        except Exception as exc:
            if not is_transient(exc):
                raise
