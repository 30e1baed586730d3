"""Strike the planned faults, one after another, and record each as it struck:
a worker SIGKILLed (and replaced), Redis SIGKILLed and started again on its
port and data, a conversation worker SIGSTOPped past its lease and continued.
The victims are drawn from a random generator seeded by the run's seed."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence

import redis.asyncio as aioredis

from bench.chaos.events import FaultRecord, takeover_delays
from bench.chaos.plan import ChaosConfig, PlannedFault
from bench.chaos.pool import Worker, WorkerPool
from shared.bus.retry import retry_forever
from shared.keys import Keys
from shared.redis_server import RedisServer
from simulator_svc.observe import owners

#: A paused worker is continued at the latest this many leases after its pause, taken over or not;
#: at the end, the takeovers of every fault are waited for as long.
MAX_PAUSE_LEASES = 10


async def claims_of(redis: aioredis.Redis, keys: Keys, group: str, worker_id: str) -> list[str]:
    """The conversations a worker holds: its pending control entries (a pending
    ``conversation.started`` is the claim), as the operators' ``owners`` tool reads them."""
    return [o.conversation_id for o in await owners(redis, keys, limit=100_000)
            if o.group == group and o.worker_id == worker_id]


async def claim_counts(redis: aioredis.Redis, keys: Keys, group: str) -> Counter[str]:
    """Claims held per worker id."""
    return Counter(o.worker_id for o in await owners(redis, keys, limit=100_000) if o.group == group)


class FaultInjector:
    def __init__(
        self, config: ChaosConfig, pool: WorkerPool, server: RedisServer, redis: aioredis.Redis, keys: Keys,
    ) -> None:
        self.config = config
        self.pool = pool
        self.server = server
        self.redis = redis
        self.keys = keys
        self.rng = random.Random(f"{config.seed}-victims")
        self.records: list[FaultRecord] = []
        #: The paused worker is never killed afterwards: what it writes once continued is checked.
        self._spared: set[str] = set()
        self._t0_mono = 0.0
        self._t0_wall = 0.0

    async def run(self, plan: Sequence[PlannedFault]) -> None:
        """Strike ``plan`` with its times counted from now (the first utterance)."""
        self._t0_mono, self._t0_wall = time.monotonic(), time.time()
        for fault in plan:
            await asyncio.sleep(max(0.0, self._t0_mono + fault.at_s - time.monotonic()))
            if fault.kind == "kill":
                await self._kill(fault)
            elif fault.kind == "redis":
                await self._kill_redis(fault)
            else:
                await self._pause(fault)

    def _record(self, fault: PlannedFault, target: str, service: str | None) -> FaultRecord:
        wall = time.time()
        record = FaultRecord(fault.kind, round(fault.at_s, 3), round(wall - self._t0_wall, 3), wall, target, service)
        self.records.append(record)
        return record

    async def _claims(self, worker: Worker) -> list[str]:
        return await retry_forever("chaos claims", lambda: claims_of(self.redis, self.keys, worker.service,
                                                                     worker.worker_id))

    async def _held(self, service: str) -> Counter[str]:
        return await retry_forever("chaos claim counts", lambda: claim_counts(self.redis, self.keys, service))

    async def _kill(self, fault: PlannedFault) -> None:
        """Kill a random worker among those holding conversations (a replacement holds
        none until it takes some over: killing it would test nothing)."""
        held = await self._held("transcriber") + await self._held("conversation")
        alive = [w for w in self.pool.alive() if w.worker_id not in self._spared]
        victim = self.rng.choice([w for w in alive if held[w.worker_id]] or alive)
        record = self._record(fault, victim.worker_id, victim.service)
        replacement = await asyncio.to_thread(self.pool.kill, victim)
        record.replacement = replacement.worker_id
        # Read after the kill: a dead worker's claims no longer change until a peer takes them.
        record.claims = await self._claims(victim)

    async def _kill_redis(self, fault: PlannedFault) -> None:
        record = self._record(fault, "redis", None)
        await asyncio.to_thread(self.server.kill)
        await asyncio.sleep(self.config.redis_down_s)
        await asyncio.to_thread(self.server.start)  # same port, same data dir: it loads its append-only file
        record.ended_wall = time.time()

    async def _pause(self, fault: PlannedFault) -> None:
        """Pause a conversation worker that holds conversations (its answers carry its
        response-id prefix, so what it writes once continued can be told apart), past its
        lease and until peers took every conversation it held (bounded)."""
        held = await self._held("conversation")
        candidates = [w for w in self.pool.alive("conversation") if held[w.worker_id]]
        victim = self.rng.choice(candidates or self.pool.alive("conversation"))
        self._spared.add(victim.worker_id)
        record = self._record(fault, victim.worker_id, victim.service)
        self.pool.pause(victim)
        record.claims = await self._claims(victim)
        await asyncio.sleep(self.config.stop_hold_s)
        deadline = time.monotonic() + MAX_PAUSE_LEASES * self.config.lease_s
        # Polled: the evidence is in the peers' log files, nothing to wait on.
        while time.monotonic() < deadline and not await asyncio.to_thread(self._all_taken, record):  # noqa: ASYNC110
            await asyncio.sleep(0.25)
        record.ended_wall = time.time()
        self.pool.resume(victim)

    async def wait_taken_over(self) -> None:
        """Until peers took every conversation of every worker killed or paused (bounded):
        the last kill may come as the last utterances are answered."""
        deadline = time.monotonic() + MAX_PAUSE_LEASES * self.config.lease_s
        records = [r for r in self.records if r.kind != "redis"]
        # Polled: the evidence is in the peers' log files, nothing to wait on.
        while time.monotonic() < deadline and not await asyncio.to_thread(self._all_taken, *records):  # noqa: ASYNC110
            await asyncio.sleep(0.5)

    def _all_taken(self, *records: FaultRecord) -> bool:
        """Every conversation each of ``records`` held was taken by a peer since (the logs read once)."""
        events = self.pool.events()
        return all(not takeover_delays(record, events)[1] for record in records)
