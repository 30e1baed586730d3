"""The benchmark's phases (see ``python -m bench --help`` for their order):
:class:`Bench` runs each system under test through its sections (throughput
with its CPU accounting, latency at each offered load, scaling, capacity),
records the figures in one results dict, and keeps a failing section from
costing the others. The paired section is in :mod:`bench.paired`.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.baseline_queues import QueuesTarget
from bench.baseline_redis import BaselineRedisTarget, StageProcesses, ensure_groups
from bench.capacity import run_capacity
from bench.cpu import DRIVER, REDIS, CpuMeter, redis_pid
from bench.driver import Driver
from bench.paired import run_paired
from bench.pipeline import PipelineTarget, Services, delete_prefix, worker_sessions
from bench.sizes import Sizes
from shared.keys import Keys

DESCRIPTIONS = {
    "ours": (
        "transcriber_svc + conversation_svc (simulated transcription, echo answer, taken whole) on the "
        "ownership runtime. Per utterance: client XADD utterance.text to the conversation's input stream; "
        "transcriber: one gated EVALSHA (ack input + XADD transcript.final); conversation worker: one gated "
        "EVALSHA (ack transcript + XADD response.done); a doorbell entry (a hint, no data) per write batch. "
        "Each worker blocks on its doorbells and reads the owned streams that rang with one XREADGROUP; the "
        "client likewise reads the transcripts and responses streams that rang with one XREAD. The monitor's "
        "timings batched per worker-second; pydantic validation of every entry; per-conversation order; "
        "exactly-once response.done."
    ),
    "baseline_redis": (
        "hand-written redis-py (hiredis) two-hop pipeline, one process per stage: XREADGROUP COUNT 1000 on one "
        "shared stream, json.loads + json.dumps per entry, one pipeline of XADD MAXLEN~ per entry + one XACK "
        "per read. Per utterance: client XADD to `in`; 1 XADD `mid` + XACK; 1 XADD `out` + XACK. No "
        "ownership, no ordering, no exactly-once gate, no deltas. The client XREADs `mid` and `out`."
    ),
    "baseline_queues": (
        "the same two stages as asyncio tasks on asyncio.Queue in the bench process (same json work, no "
        "broker); the client puts and gets in the same event loop."
    ),
}


def _per_1000(cpu: dict[str, float], answered: int) -> dict[str, float]:
    if answered <= 0:
        return {}
    return {k: round(v / answered * 1000, 4) for k, v in cpu.items() if not math.isnan(v)}


def _cpu_totals(cpu: dict[str, float], system_roles: list[str], answered: int) -> dict[str, Any]:
    """system = the pipeline's own processes (services/stages + Redis); all = plus the driver."""
    system = sum(cpu.get(r, 0.0) for r in system_roles)
    total = system + cpu.get(DRIVER, 0.0)
    per = 1000 / answered if answered else float("nan")
    return {
        "system_cpu_s": round(system, 3),
        "system_cpu_s_per_1000": round(system * per, 4),
        "all_cpu_s": round(total, 3),
        "all_cpu_s_per_1000": round(total * per, 4),
        "system_roles": system_roles,
    }


class Bench:
    """One benchmark run: :meth:`run` goes through the sections in order, their
    figures (and any section's error) collect in :attr:`results`."""

    def __init__(self, sizes: Sizes, out: Path, redis_url: str, client: aioredis.Redis) -> None:
        self.sizes = sizes
        self.out = out
        self.redis_url = redis_url
        self.client = client
        self.run_id = uuid.uuid4().hex[:6]
        self.redis_pid: int | None = None
        #: Run only the sections whose names start with one of these (empty: all).
        self.only: tuple[str, ...] = ()
        self.results: dict[str, Any] = {
            "systems": {name: {"description": d} for name, d in DESCRIPTIONS.items()},
            "scaling": {"ours": {}, "baseline_redis": {}},
            "capacity": {},
            "errors": [],
        }

    def log(self, msg: str) -> None:
        sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
        sys.stderr.flush()

    def _pids(self, pids: dict[str, int]) -> dict[str, int]:
        out = dict(pids)
        if self.redis_pid is not None:
            out[REDIS] = self.redis_pid
        return out

    async def _throughput(
        self, driver: Driver, pids: dict[str, int], system_roles: list[str],
        extra_cpu: Callable[[], dict[str, float]] | None = None,
    ) -> dict[str, Any]:
        """``throughput_reps`` closed-loop runs; the median one (by answered/s), with every run's figures."""
        runs = [await self.throughput_once(driver, pids, system_roles, extra_cpu)
                for _ in range(self.sizes.throughput_reps)]
        ordered = sorted(runs, key=lambda r: float(r["answered_per_s"]))
        res = dict(ordered[len(ordered) // 2])
        res["reps"] = [
            {k: r[k] for k in ("answered_per_s", "system_cpu_s_per_1000", "all_cpu_s_per_1000",
                               "other_processes_cpu_s", "missing")}
            for r in runs
        ]
        return res

    async def throughput_once(
        self, driver: Driver, pids: dict[str, int], system_roles: list[str],
        extra_cpu: Callable[[], dict[str, float]] | None = None,
    ) -> dict[str, Any]:
        s = self.sizes
        meter = CpuMeter(self.client, self._pids(pids))
        extra0 = extra_cpu() if extra_cpu else {}
        await meter.start()
        res = await driver.closed_loop(s.throughput_utterances, s.max_in_flight, s.timeout_s)
        cpu_info = await meter.stop()
        if extra_cpu:
            for role, v in extra_cpu().items():
                cpu_info["cpu_s"][role] = round(v - extra0.get(role, 0.0), 3)
        res.update(cpu_info)
        res["cpu_s_per_1000"] = _per_1000(cpu_info["cpu_s"], res["answered"])
        res.update(_cpu_totals(cpu_info["cpu_s"], system_roles, res["answered"]))
        if res["answered"]:
            res["redis_calls_per_utterance"] = {
                k: round(v / res["answered"], 2) for k, v in cpu_info["redis_calls"].items()
            }
        self.log(f"{driver.target.name}: {res['answered']}/{res['sent']} answered, "
                 f"{res['answered_per_s']}/s, system CPU {res['system_cpu_s_per_1000']} s/1000")
        return res

    async def _latency(self, driver: Driver) -> list[dict[str, Any]]:
        levels = []
        for rate in self.sizes.latency_rates:
            res = await driver.open_loop(rate, self.sizes.latency_window_s, self.sizes.drain_s)
            e2e = res["latency_ms"]["e2e"]
            self.log(f"{driver.target.name} @ {rate:g}/s: e2e p50 {e2e['p50']} p99 {e2e['p99']} ms, "
                     f"sustained={res['sustained']}")
            levels.append(res)
            await asyncio.sleep(0.3)
        return levels

    def conversations(self, tag: str) -> list[str]:
        return [f"b{self.run_id}{tag}-{i:05d}" for i in range(self.sizes.conversations)]

    # --- systems ----------------------------------------------------------------

    async def queues(self) -> None:
        target = QueuesTarget()
        try:
            async with Driver(target, self.conversations("q")) as driver:
                await driver.one_each()
                sysres = self.results["systems"]["baseline_queues"]
                sysres["throughput"] = await self._throughput(
                    driver, {}, ["stage-a", "stage-b"], extra_cpu=lambda: dict(target.stage_cpu_s)
                )
                sysres["latency"] = await self._latency(driver)
        finally:
            await target.aclose()

    async def start_stages(self, stages: StageProcesses, prefix: str, per_stage: int) -> None:
        """The redis-py baseline's groups, then its stage processes, up and reading."""
        import redis as syncredis

        sync = syncredis.Redis.from_url(self.redis_url)
        try:
            ensure_groups(sync, prefix)
        finally:
            sync.close()
        stages.start(per_stage)
        await stages.wait_up(self.client)

    async def warm_ours(self, target: PipelineTarget, driver: Driver, cids: list[str]) -> None:
        """Start our conversations, follow their streams, and see one utterance each answered."""
        await target.start_conversations(cids)
        target.follow(cids)
        if not await driver.one_each(timeout_s=60.0):
            raise RuntimeError("ours: warm-up utterances were not all answered")

    async def baseline_redis(self, per_stage: int, latency: bool) -> dict[str, Any]:
        prefix = f"bb{self.run_id}{per_stage}"
        stages = StageProcesses(self.redis_url, prefix, self.out / "logs")
        out: dict[str, Any] = {"workers_per_tier": per_stage}
        try:
            await self.start_stages(stages, prefix, per_stage)
            target = BaselineRedisTarget(self.client, prefix)
            async with Driver(target, self.conversations(f"r{per_stage}"), health=stages.dead) as driver:
                await driver.one_each()
                pids = stages.pids()
                out["throughput"] = await self._throughput(driver, pids, [*pids, REDIS])
                if latency:
                    out["latency"] = await self._latency(driver)
        finally:
            stages.stop()
            await delete_prefix(self.client, prefix)
        return out

    async def ours(self, workers: int, latency: bool, words_per_delta: int | None, tag: str) -> dict[str, Any]:
        prefix = f"bo{self.run_id}{tag}"
        env: dict[str, str] = {}
        if words_per_delta is not None:
            env["ECHO_WORDS_PER_DELTA"] = str(words_per_delta)
        if workers > 1:
            # Load-based dispatch hands a conversation to whichever worker reads first: cap the
            # slots so both workers of a tier get half of the conversations.
            env["MAX_SESSIONS"] = str(math.ceil(self.sizes.conversations / workers))
        services = Services(self.redis_url, prefix, self.out / "logs" / f"ours-{tag}", **env)
        out: dict[str, Any] = {"workers_per_tier": workers, "echo_words_per_delta": words_per_delta or 3,
                               "env": env}
        keys = Keys(prefix)
        try:
            await services.start(self.client, workers, workers)
            target = PipelineTarget(self.client, keys)
            cids = self.conversations(tag)
            async with Driver(target, cids, health=services.check_alive) as driver:
                await self.warm_ours(target, driver, cids)
                pids = services.pids()
                out["throughput"] = await self._throughput(driver, pids, [*pids, REDIS])
                tp = out["throughput"]
                if latency:
                    out["latency"] = await self._latency(driver)
                out["sessions_per_worker"] = await worker_sessions(self.client, keys)
                out["dead_letters"] = int(await self.client.xlen(keys.dead(0)))
                tp["entries_read_per_utterance"] = round(tp["entries_read"] / max(1, tp["answered"]), 2)
            out["crashed"] = services.check_alive()
        finally:
            services.stop()
            await delete_prefix(self.client, prefix)
        return out

    # --- the run ------------------------------------------------------------------

    async def section(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        if self.only and not any(name.startswith(o) for o in self.only):
            return
        self.log(f"--- {name}")
        t0 = time.monotonic()
        try:
            await run()
        except Exception as exc:
            self.log(f"{name} failed: {exc!r}")
            self.results["errors"].append({"section": name, "error": repr(exc),
                                           "traceback": traceback.format_exc()[-4000:]})
        self.log(f"{name}: {time.monotonic() - t0:.1f}s")

    async def run(self) -> None:
        self.redis_pid = await redis_pid(self.client)
        systems = self.results["systems"]
        scaling = self.results["scaling"]

        async def queues() -> None:
            await self.queues()

        async def base1() -> None:
            res = await self.baseline_redis(1, latency=True)
            systems["baseline_redis"].update(res)
            scaling["baseline_redis"]["1"] = res["throughput"]

        async def base2() -> None:
            scaling["baseline_redis"]["2"] = (await self.baseline_redis(2, latency=False))["throughput"]

        async def ours1() -> None:
            res = await self.ours(1, latency=True, words_per_delta=1000, tag="one")
            systems["ours"].update(res)
            scaling["ours"]["1"] = res["throughput"]

        async def ours_default() -> None:
            res = await self.ours(1, latency=False, words_per_delta=None, tag="def")
            systems["ours"]["throughput_default_deltas"] = res["throughput"]

        async def ours2() -> None:
            res = await self.ours(2, latency=False, words_per_delta=1000, tag="two")
            scaling["ours"]["2"] = res["throughput"]
            scaling["ours"]["2"]["sessions_per_worker"] = res["sessions_per_worker"]

        async def capacity() -> None:
            s = self.sizes
            prefix = f"bc{self.run_id}"
            try:
                self.results["capacity"] = await run_capacity(
                    self.client, self.redis_url, prefix, self.out / "logs" / "capacity",
                    s.capacity_steps, s.capacity_probes, s.capacity_rate, s.capacity_window_s, s.drain_s,
                )
            finally:
                await delete_prefix(self.client, prefix)

        await self.section("baseline_queues", queues)
        await self.section("baseline_redis x1", base1)
        if 2 in self.sizes.scaling_workers:
            await self.section("baseline_redis x2", base2)
        await self.section("ours x1 (one delta)", ours1)
        await self.section("ours x1 (default deltas)", ours_default)
        if 2 in self.sizes.scaling_workers:
            await self.section("ours x2 (one delta)", ours2)

        async def paired() -> None:
            self.results["paired"] = await run_paired(self)

        await self.section("paired (alternating runs)", paired)
        await self.section("capacity", capacity)
