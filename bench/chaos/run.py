"""One chaos run: a Redis of its own, the worker pool, the simulator's client
sending at a steady rate while the faults strike, then the accounting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.chaos.inject import FaultInjector
from bench.chaos.outcome import Outcome, StreamsRead, account, read_streams
from bench.chaos.plan import ChaosConfig, plan_faults
from bench.chaos.pool import WorkerPool
from bench.chaos.report import build_figures
from shared.bus.resp import connect
from shared.devstack import Stack, deterministic_env, wait_ready
from shared.keys import Keys
from shared.redis_server import RedisServer, start_embedded
from simulator_svc.simulator import Simulation, SimulationPlan, generated_utterances

#: After the client stopped waiting: how long the streams are read again for late answers.
RECHECK_S = 10.0


def service_env(config: ChaosConfig, redis_url: str, prefix: str) -> dict[str, str]:
    return deterministic_env(
        redis_url, prefix,
        LEASE_S=str(config.lease_s),
        STUCK_AFTER_S=str(config.stuck_after_s),
        READ_BLOCK_MS="200",
        DRAIN_TIMEOUT_S="5",
        # Five workers on a busy machine: no HTTP servers nobody scrapes.
        METRICS_ENABLED="false",
    )


def simulation_plan(config: ChaosConfig) -> SimulationPlan:
    return SimulationPlan(
        conversations=config.conversations,
        utterances=generated_utterances(config.per_conversation),
        greeting=False,
        rate=config.rate / config.conversations,
        timeout_s=config.send_s + config.settle_timeout_s,
        settle_s=2.0,  # keep reading a little once all is answered: a late duplicate is seen
        end_conversations=False,
        run_id=f"chaos{config.seed}",
    )


async def _settled_outcome(
    server: RedisServer, keys: Keys, sim: Simulation
) -> tuple[StreamsRead, Outcome]:
    """Read the streams until nothing kept is unanswered, for at most RECHECK_S."""
    redis = connect(server.url)
    try:
        deadline = time.monotonic() + RECHECK_S
        while True:
            read = await read_streams(redis, keys, sim.plan.conversation_ids())
            outcome = account(sim.tracker.records.values(), read)
            if not outcome.lost or time.monotonic() >= deadline:
                return read, outcome
            await asyncio.sleep(2.0)
    finally:
        await redis.aclose()


async def run_chaos(config: ChaosConfig, log_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    server = start_embedded(appendonly=True)  # appendfsync everysec, its own port and data dir
    prefix = f"chaos{config.seed}"
    keys = Keys(prefix)
    pool = WorkerPool(Stack(service_env(config, server.url, prefix), log_dir))
    client, injector_redis = connect(server.url), connect(server.url)
    try:
        for _ in range(config.transcribers):
            pool.start("transcriber")
        for _ in range(config.conversation_workers):
            pool.start("conversation")
        await asyncio.to_thread(wait_ready, pool.stack, server.url, prefix)
        plan = plan_faults(config)
        say(f"[chaos] {config.total_utterances} utterances over {config.conversations} conversations at "
            f"{config.rate}/s (~{config.send_s:.0f} s); {len(plan)} faults planned; logs in {log_dir}/")
        sim = Simulation(client, keys, simulation_plan(config))
        injector = FaultInjector(config, pool, server, injector_redis, keys)
        began = time.monotonic()
        faults = asyncio.create_task(injector.run(plan), name="faults")
        try:
            await sim.run()
        finally:
            await faults  # every fault is due before the last utterance is sent
        await injector.wait_taken_over()
        say(f"[chaos] sent; reading the outcome ({time.monotonic() - began:.0f} s in)")
        read, outcome = await _settled_outcome(server, keys, sim)
        elapsed = time.monotonic() - began
        server_log = (server.data_dir / "server.log").read_text(errors="replace")
        sent_ms = {u: r.sent_ms for u, r in sim.tracker.records.items()}
        return build_figures(config, outcome, read, injector.records, pool.events(), sent_ms, server_log, elapsed,
                             len(pool.workers))
    finally:
        await client.aclose()
        await injector_redis.aclose()
        await asyncio.to_thread(pool.stop)
        server.cleanup()
