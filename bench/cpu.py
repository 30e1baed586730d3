"""CPU seconds and memory per process, measured as deltas around a phase.

- ``cpu_s[role]``: user + system CPU seconds that process used during the
  phase (psutil ``cpu_times``, ~10 ms kernel tick resolution);
- ``redis_info_cpu_s``: the same for Redis from its own ``INFO cpu``
  (``used_cpu_user + used_cpu_sys``, all its threads), which also works for a
  Redis that is not a child of this machine's process table;
- ``other_processes_cpu_s``: CPU the whole machine used during the phase
  beyond the measured processes (other work on a shared machine disturbs
  the figures: this shows how much);
- ``cpu_percent[role]``: ``cpu_s`` over the phase's wall time (100 = one core);
- ``redis_calls``: commands Redis executed during the phase, by command, from
  ``INFO commandstats`` (commands run inside Lua scripts are counted too);
  divided by the utterances they give what each system asks of Redis per
  utterance; ``redis_usec_per_call``: Redis' own time per call of each.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis.asyncio as aioredis

#: The role name of the process running the bench itself (the client, and the queue baseline).
DRIVER = "driver"
#: The role name of the Redis server.
REDIS = "redis-server"


def _machine_busy_s() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


async def redis_pid(client: aioredis.Redis) -> int | None:
    """The Redis server's pid when it runs on this machine (else None)."""
    info = await client.info("server")
    pid = int(info.get("process_id", 0))
    try:
        psutil.Process(pid)
    except (psutil.NoSuchProcess, ValueError):
        return None
    return pid


async def _info_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _commandstats(client: aioredis.Redis) -> dict[str, tuple[int, int]]:
    """command -> (calls, microseconds spent in it)."""
    info = await client.info("commandstats")
    out: dict[str, tuple[int, int]] = {}
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            out[key[len("cmdstat_"):]] = (int(value.get("calls", 0)), int(value.get("usec", 0)))
    return out


@dataclass
class CpuMeter:
    """Snapshot with :meth:`start`, read the deltas with :meth:`stop`."""

    client: aioredis.Redis
    pids: dict[str, int]
    _procs: dict[str, psutil.Process] = field(default_factory=dict)
    _start: dict[str, float] = field(default_factory=dict)
    _info_start: float = 0.0
    _calls_start: dict[str, tuple[int, int]] = field(default_factory=dict)
    _t0: float = 0.0
    _busy0: float = 0.0

    async def start(self) -> None:
        self._procs = {role: psutil.Process(pid) for role, pid in self.pids.items()}
        self._procs[DRIVER] = psutil.Process(os.getpid())
        self._info_start = await _info_cpu(self.client)
        self._calls_start = await _commandstats(self.client)
        self._start = {role: _cpu_s(p) for role, p in self._procs.items()}
        self._t0 = time.perf_counter()
        self._busy0 = _machine_busy_s()

    async def stop(self) -> dict[str, Any]:
        cpu: dict[str, float] = {}
        for role, p in self._procs.items():
            try:
                cpu[role] = round(_cpu_s(p) - self._start[role], 3)
            except psutil.NoSuchProcess:
                cpu[role] = float("nan")
        elapsed_s = time.perf_counter() - self._t0
        busy = _machine_busy_s() - self._busy0
        ours = sum(v for v in cpu.values() if v == v)
        info = await _info_cpu(self.client)
        stats = await _commandstats(self.client)
        calls: dict[str, int] = {}
        usec_per_call: dict[str, float] = {}
        for cmd, (n, usec) in stats.items():
            n0, usec0 = self._calls_start.get(cmd, (0, 0))
            if n > n0:
                calls[cmd] = n - n0
                usec_per_call[cmd] = round((usec - usec0) / (n - n0), 2)
        return {
            "elapsed_s": round(elapsed_s, 3),
            "cpu_s": cpu,
            "cpu_percent": {k: round(v / elapsed_s * 100, 1) for k, v in cpu.items() if elapsed_s > 0},
            "redis_info_cpu_s": round(info - self._info_start, 3),
            "machine_busy_cpu_s": round(busy, 3),
            "other_processes_cpu_s": round(max(0.0, busy - ours), 3),
            "redis_calls": calls,
            "redis_usec_per_call": usec_per_call,
        }
