"""Part 2 of the gateway benchmark: the capacity of one gateway process for
text sessions, with the deterministic engines behind it.

One step: S sessions are opened on a fresh gateway (text out, ``turn_detection:
null``; evenly over ``open_over_s``, else all at once, a few handshakes at a
time), then, once all are open, each runs the two-step flow
(``conversation.item.create`` + ``response.create``, then waits for
``response.done``) at a fixed rate, its first turn at a random phase within
one period so the turns are spread evenly. A turn slower than the period makes its session skip the slots it
missed (counted: the gateway, or the machine, did not keep up).

Measured over a window that starts one period after the first turns (all
sessions then run) and lasts the step's seconds:

- the gateway process's CPU seconds (``/proc/<pid>/stat``, all its threads),
  per session per minute and per completed turn, and its RSS with the
  sessions open (and before they were: the RSS per session);
- turn latency, ``response.create`` sent -> ``response.done`` received, of
  the turns sent in the window;
- errors: failed connections, ``error`` events, answers not ``completed``,
  turns with no answer within 30 s;
- the CPU of this load generator, of the workers and Redis, of every other
  process on the machine, and the machine's busy share of all its cores, so a
  step that saturated the cores shows it, and who took them. The load generator is a process of its own
  (this one): its CPU is not in the gateway's figures, but it shares the cores.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed

from bench.gateway_client import listen, open_socket, receive_until, send_event, sleep_until
from bench.latency import summarise
from bench.procstat import read_machine, read_process

TURN_TIMEOUT_S = 30.0
#: Handshakes in flight at once while a step's sessions are opened.
CONNECT_CONCURRENCY = 20
#: The machine counts as saturated in a step above this share of all its cores.
SATURATED_BUSY_PERCENT = 90.0


@dataclass(frozen=True)
class StepPlan:
    sessions: int
    turns_per_s_per_session: float
    seconds: float
    deflate: bool
    #: The gateway's CPU with no session is measured this long first (its fixed cost: polling, timers).
    idle_s: float = 3.0
    #: Session i is opened at ``i * open_over_s / sessions`` (0: all at once, CONNECT_CONCURRENCY at a time).
    open_over_s: float = 0.0

    @property
    def period_s(self) -> float:
        return 1.0 / self.turns_per_s_per_session


@dataclass
class TurnLog:
    """The turns of one step; only those whose ``response.create`` was sent in the window count."""

    window_start: float
    window_end: float
    latencies_ms: list[float] = field(default_factory=list)
    sent_in_window: int = 0
    timeouts: int = 0
    not_completed: int = 0
    skipped_slots: int = 0
    broken_sessions: int = 0

    def add(self, sent: float, done_at: float | None, status: str) -> None:
        if status == "timeout":
            self.timeouts += 1
        elif status != "completed":
            self.not_completed += 1
        if self.window_start <= sent < self.window_end:
            self.sent_in_window += 1
            if done_at is not None and status == "completed":
                self.latencies_ms.append((done_at - sent) * 1000)


class TextSession:
    """One socket doing two-step text turns."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.error_events = 0
        self.first_error: str | None = None
        self._waiter: asyncio.Future[tuple[float, str]] | None = None

    def on_event(self, type_: str, at: float, text: str) -> None:
        if type_ == "response.done":
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result((at, str(json.loads(text)["response"]["status"])))
        elif type_ == "error":
            self.error_events += 1
            self.first_error = self.first_error or text[:300]

    async def turn(self, number: int) -> tuple[float, float | None, str]:
        """(response.create sent, response.done received or None, the response's status or "timeout")."""
        self._waiter = asyncio.get_running_loop().create_future()
        await send_event(self.ws, "conversation.item.create", item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"turn {number}"}]})
        sent = time.perf_counter()
        await send_event(self.ws, "response.create")
        try:
            done_at, status = await asyncio.wait_for(self._waiter, TURN_TIMEOUT_S)
        except TimeoutError:
            return sent, None, "timeout"
        return sent, done_at, status


async def open_text_session(base_url: str, deflate: bool) -> TextSession:
    ws = await open_socket(base_url, deflate)
    try:
        await receive_until(ws, "session.created")
        await send_event(ws, "session.update", session={"type": "realtime", "output_modalities": ["text"],
                                                        "audio": {"input": {"turn_detection": None}}})
        await receive_until(ws, "session.updated")
    except BaseException:
        await ws.close()
        raise
    return TextSession(ws)


def next_slot(first_due: float, period_s: float, after_slot: int, now: float) -> tuple[int, int]:
    """(the next slot not already past, slots skipped) after slot ``after_slot`` at ``now``."""
    slot = after_slot + 1
    if first_due + slot * period_s < now:
        caught_up = math.ceil((now - first_due) / period_s)
        return caught_up, caught_up - slot
    return slot, 0


async def _drive(session: TextSession, first_due: float, period_s: float, log: TurnLog) -> None:
    slot, number = 0, 0
    try:
        while (due := first_due + slot * period_s) < log.window_end:
            await sleep_until(due)
            log.add(*await session.turn(number))
            number += 1
            slot, skipped = next_slot(first_due, period_s, slot, time.perf_counter())
            log.skipped_slots += skipped
    except ConnectionClosed:
        log.broken_sessions += 1


def _cpu_s(pids: list[int]) -> float:
    return sum(read_process(pid).cpu_s for pid in pids)


async def _sample_window(gateway_pid: int, pipeline_pids: list[int], start: float, end: float) -> dict[str, float]:
    """CPU of the gateway, of this process, of the pipeline's other processes (workers, Redis)
    and of the whole machine over [start, end]."""
    me = os.getpid()
    await sleep_until(start)
    gateway0, me0, pipeline0, machine0 = read_process(gateway_pid), read_process(me), _cpu_s(pipeline_pids), \
        read_machine()
    t0 = time.perf_counter()
    await sleep_until(end)
    gateway1, me1, pipeline1, machine1 = read_process(gateway_pid), read_process(me), _cpu_s(pipeline_pids), \
        read_machine()
    t1 = time.perf_counter()
    return {"elapsed_s": t1 - t0, "gateway_cpu_s": gateway1.cpu_s - gateway0.cpu_s,
            "gateway_rss_bytes": gateway1.rss_bytes, "loadgen_cpu_s": me1.cpu_s - me0.cpu_s,
            "pipeline_cpu_s": pipeline1 - pipeline0, "machine_busy_s": machine1.busy_s - machine0.busy_s,
            "machine_total_s": machine1.total_s - machine0.total_s}


async def _idle_cpu_s_per_s(gateway_pid: int, seconds: float) -> float:
    before, started = read_process(gateway_pid), time.perf_counter()
    await asyncio.sleep(seconds)
    return (read_process(gateway_pid).cpu_s - before.cpu_s) / (time.perf_counter() - started)


async def run_step(base_url: str, gateway_pid: int, pipeline_pids: list[int], plan: StepPlan) -> dict[str, Any]:
    """One step against the gateway at ``base_url`` (process ``gateway_pid``); ``pipeline_pids``:
    the workers and Redis, whose CPU is reported beside the gateway's."""
    idle_cpu = await _idle_cpu_s_per_s(gateway_pid, plan.idle_s)
    rss_idle = read_process(gateway_pid).rss_bytes
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    opening = time.perf_counter()

    async def opened(index: int) -> TextSession:
        await sleep_until(opening + index * plan.open_over_s / plan.sessions)
        async with gate:
            return await open_text_session(base_url, plan.deflate)

    tried = await asyncio.gather(*(opened(i) for i in range(plan.sessions)), return_exceptions=True)
    sessions = [s for s in tried if isinstance(s, TextSession)]
    refused = [repr(e)[:300] for e in tried if not isinstance(e, TextSession)]
    listeners = [asyncio.create_task(listen(s.ws, s.on_event)) for s in sessions]
    start = time.perf_counter() + 0.2
    log = TurnLog(window_start=start + plan.period_s, window_end=start + plan.period_s + plan.seconds)
    sampler = asyncio.create_task(_sample_window(gateway_pid, pipeline_pids, log.window_start, log.window_end))
    phases = random.Random(plan.sessions)
    await asyncio.gather(*(_drive(s, start + phases.random() * plan.period_s, plan.period_s, log)
                           for s in sessions))
    usage = await sampler

    async def closed(session: TextSession) -> None:
        async with gate:
            await session.ws.close()

    await asyncio.gather(*(closed(s) for s in sessions))
    await asyncio.gather(*listeners)
    # The gateway ends each closed session's conversation and frees its slot after the close
    # handshake: give it a moment before it is stopped.
    await asyncio.sleep(1.0)
    errors = {"connect_failures": len(refused), "error_events": sum(s.error_events for s in sessions),
              "not_completed": log.not_completed, "timeouts": log.timeouts,
              "broken_sessions": log.broken_sessions}
    samples = refused[:3] + [s.first_error for s in sessions if s.first_error][:3]
    return step_figures(plan, len(sessions), idle_cpu, rss_idle, usage, log, errors, samples)


def step_figures(plan: StepPlan, sessions_open: int, idle_cpu_s_per_s: float, rss_idle_bytes: int,
                 usage: dict[str, float], log: TurnLog, errors: dict[str, int], error_samples: list[str]
                 ) -> dict[str, Any]:
    """The step's figures from what was measured (pure). "Above idle" takes away what the
    gateway burns with no session at all, leaving what the sessions and their turns cost."""
    elapsed = usage["elapsed_s"]
    cpu = usage["gateway_cpu_s"]
    above_idle = max(0.0, cpu - idle_cpu_s_per_s * elapsed)
    completed = len(log.latencies_ms)
    busy_percent = 100 * usage["machine_busy_s"] / usage["machine_total_s"] if usage["machine_total_s"] else None
    return {
        "sessions": plan.sessions,
        "sessions_open": sessions_open,
        "window_s": round(elapsed, 2),
        "turns_per_s_offered": round(sessions_open * plan.turns_per_s_per_session, 2),
        "turns_per_s_achieved": round(completed / elapsed, 2) if elapsed else None,
        "turns_in_window": log.sent_in_window,
        "turns_completed": completed,
        "skipped_slots": log.skipped_slots,
        "gateway_cpu_s": round(cpu, 3),
        "gateway_cpu_percent": round(100 * cpu / elapsed, 1) if elapsed else None,
        "gateway_cpu_s_per_session_per_min": round(cpu / sessions_open / (elapsed / 60), 4)
        if sessions_open and elapsed else None,
        "gateway_cpu_ms_per_turn": round(1000 * cpu / completed, 3) if completed else None,
        "gateway_idle_cpu_percent": round(100 * idle_cpu_s_per_s, 2),
        "gateway_cpu_ms_per_turn_above_idle": round(1000 * above_idle / completed, 3) if completed else None,
        "gateway_rss_bytes": usage["gateway_rss_bytes"],
        "gateway_rss_idle_bytes": rss_idle_bytes,
        "gateway_rss_per_session_bytes": round((usage["gateway_rss_bytes"] - rss_idle_bytes) / sessions_open)
        if sessions_open else None,
        "turn_latency_ms": summarise(log.latencies_ms),
        "errors": errors,
        "error_count": sum(errors.values()),
        "error_samples": error_samples,
        "loadgen_cpu_percent": round(100 * usage["loadgen_cpu_s"] / elapsed, 1) if elapsed else None,
        "pipeline_cpu_percent": round(100 * usage["pipeline_cpu_s"] / elapsed, 1) if elapsed else None,
        "other_processes_cpu_percent": round(100 * max(0.0, usage["machine_busy_s"] - cpu - usage["loadgen_cpu_s"]
                                                       - usage["pipeline_cpu_s"]) / elapsed, 1) if elapsed else None,
        "machine_busy_percent": round(busy_percent, 1) if busy_percent is not None else None,
        "saturated": busy_percent is not None and busy_percent > SATURATED_BUSY_PERCENT,
    }
