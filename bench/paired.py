"""The paired section of the benchmark: ours and the redis-py baseline up at
once, throughput runs alternating (baseline, ours, baseline, ours, ...). On a
machine whose speed drifts, the ratios of adjacent runs are the fair ones."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.baseline_redis import BaselineRedisTarget, StageProcesses
from bench.cpu import REDIS
from bench.driver import Driver
from bench.pipeline import PipelineTarget, Services, delete_prefix
from shared.keys import Keys

if TYPE_CHECKING:
    from bench.phases import Bench


async def run_paired(bench: Bench) -> dict[str, Any]:
    """Throughput of ours and of the redis-py baseline in alternating runs (B, O, B, O, ...),
    both systems up at once: on a shared machine whose speed drifts by tens of percent
    between minutes, a ratio of adjacent runs is the fair one."""
    prefix_b, prefix_o = f"bp{bench.run_id}", f"po{bench.run_id}"
    stages = StageProcesses(bench.redis_url, prefix_b, bench.out / "logs" / "paired")
    services = Services(bench.redis_url, prefix_o, bench.out / "logs" / "paired", ECHO_WORDS_PER_DELTA="1000")
    pairs: list[dict[str, Any]] = []
    try:
        await bench.start_stages(stages, prefix_b, 1)
        await services.start(bench.client, 1, 1)
        ours_target = PipelineTarget(bench.client, Keys(prefix_o))
        base_cids, ours_cids = bench.conversations("pb"), bench.conversations("po")
        async with (
            Driver(BaselineRedisTarget(bench.client, prefix_b), base_cids, health=stages.dead) as base,
            Driver(ours_target, ours_cids, health=services.check_alive) as ours,
        ):
            await base.one_each()
            await bench.warm_ours(ours_target, ours, ours_cids)
            base_pids, ours_pids = stages.pids(), services.pids()
            for _ in range(bench.sizes.throughput_reps):
                b = await bench.throughput_once(base, base_pids, [*base_pids, REDIS])
                o = await bench.throughput_once(ours, ours_pids, [*ours_pids, REDIS])
                pairs.append({
                    "baseline_redis": {k: b[k] for k in ("answered_per_s", "system_cpu_s_per_1000",
                                                         "cpu_s_per_1000", "missing")},
                    "ours": {k: o[k] for k in ("answered_per_s", "system_cpu_s_per_1000", "cpu_s_per_1000",
                                               "missing", "duplicates", "out_of_order")},
                    "throughput_ratio": round(o["answered_per_s"] / b["answered_per_s"], 3)
                    if b["answered_per_s"] else None,
                    "cpu_ratio": round(o["system_cpu_s_per_1000"] / b["system_cpu_s_per_1000"], 3)
                    if b["system_cpu_s_per_1000"] else None,
                })
    finally:
        stages.stop()
        services.stop()
        await delete_prefix(bench.client, prefix_b)
        await delete_prefix(bench.client, prefix_o)

    def median(key: str) -> float | None:
        values = sorted(p[key] for p in pairs if p[key] is not None)
        return values[len(values) // 2] if values else None

    return {"pairs": pairs, "throughput_ratio_median": median("throughput_ratio"),
            "cpu_ratio_median": median("cpu_ratio")}
