"""The load generator, the same for every system under test.

A system is a :class:`Target`: it writes utterances (the client's side of
hop 0) and reads back what the two hops produced. The :class:`Driver` owns the
schedule (closed loop with a bounded in-flight count; open loop on an evenly
spread schedule) and the bookkeeping of what came back; what it records per
utterance and the figures made of it are in :mod:`bench.latency`.

An open-loop window is *sustained* when the achieved send rate is within 5%
of the offered rate, the backlog (sent - answered) at the end of the window
is not more than ``max(10, 0.1 s x rate)`` above the backlog at its middle (a
growing backlog is flagged, never averaged away), and every utterance of the
window was answered before the drain deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.latency import FAILED, MID, Observation, Utt, latency_figures, summarise

TEXTS = [
    "This is a test of the transcription system.",
    "The weather today is sunny with a chance of rain.",
    "Can you tell me what time it is?",
    "I'd like to order a pizza with extra cheese.",
    "Please remind me to call my mother tomorrow.",
]


class Target(Protocol):
    """A system under test, seen from the client."""

    name: str

    async def start_conversations(self, cids: Sequence[str]) -> None:
        """Open conversations (ours: ``conversation.started``; the baselines: nothing)."""
        ...

    def follow(self, cids: Sequence[str]) -> None:
        """Read these conversations' outputs from now on (idempotent)."""
        ...

    def unfollow(self, cids: Sequence[str]) -> None: ...

    async def send(self, batch: Sequence[Utt]) -> None:
        """Write a batch in one round trip: call :func:`bench.latency.stamp_batch` right
        before the write and set each ``in_id_ms`` from the reply."""
        ...

    async def read(self, block_ms: int) -> tuple[list[Observation], int]:
        """Wait up to ``block_ms`` for outputs; return the observations and how
        many entries were read in all (deltas and other entries included)."""
        ...

    async def aclose(self) -> None: ...


class SharedStreamsTarget:
    """The baselines: one shared stream (or queue) per hop, so no conversation to
    open and nothing per conversation to follow."""

    async def start_conversations(self, cids: Sequence[str]) -> None:
        return None

    def follow(self, cids: Sequence[str]) -> None:
        return None

    def unfollow(self, cids: Sequence[str]) -> None:
        return None


@dataclass
class Driver:
    """Drives one target: a reader task records what comes back; the phase
    methods send on their schedule. Use as ``async with Driver(...)``."""

    target: Target
    conversations: list[str]
    #: Returns the processes of the system that have died (checked while waiting: fail fast).
    health: Callable[[], list[str]] | None = None
    records: dict[tuple[str, str], Utt] = field(default_factory=dict)
    answered: int = 0
    duplicates: int = 0
    failed: int = 0
    unknown: int = 0
    out_of_order: int = 0
    entries_read: int = 0
    _next_index: dict[str, int] = field(default_factory=dict)
    _last_done: dict[str, int] = field(default_factory=dict)
    _in_flight: int = 0
    _space: asyncio.Event = field(default_factory=asyncio.Event)
    _progress: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None
    _closing: bool = False

    async def __aenter__(self) -> Driver:
        self._closing = False
        self._reader = asyncio.create_task(self._read_loop(), name=f"reader:{self.target.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        # The loop ends by itself after its current read (<= 100 ms); cancel only if it does not.
        self._closing = True
        await asyncio.wait({reader}, timeout=2.0)
        if not reader.done():
            reader.cancel()
            await asyncio.wait({reader}, timeout=2.0)
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            raise RuntimeError(f"the {self.target.name} reader failed") from reader.exception()

    def _check_health(self) -> None:
        dead = self.health() if self.health is not None else []
        if dead:
            raise RuntimeError(f"{self.target.name}: process(es) exited during the run: {', '.join(dead)}")
        if self._reader is not None and self._reader.done():
            exc = None if self._reader.cancelled() else self._reader.exception()
            raise RuntimeError(f"the {self.target.name} reader stopped: {exc!r}")

    # --- bookkeeping ------------------------------------------------------------

    def new_utt(self, cid: str) -> Utt:
        k = self._next_index.get(cid, 0)
        self._next_index[cid] = k + 1
        utt = Utt(cid, f"u{k:06d}", k, TEXTS[k % len(TEXTS)] + f" Number {k + 1}.")
        self.records[(cid, utt.uid)] = utt
        return utt

    async def _read_loop(self) -> None:
        while not self._closing:
            observations, n = await self.target.read(100)
            now = time.perf_counter()
            self.entries_read += n
            for kind, cid, uid, ms, obs in observations:
                self._observe(kind, cid, uid, ms, now if obs is None else obs)

    def _observe(self, kind: str, cid: str, uid: str, ms: float, obs_perf: float) -> None:
        utt = self.records.get((cid, uid))
        if utt is None:
            self.unknown += 1
            return
        if kind == MID:
            if utt.mid_obs_perf < 0:
                utt.mid_id_ms, utt.mid_obs_perf = ms, obs_perf
            return
        utt.dones += 1
        if utt.dones > 1:
            self.duplicates += 1
            return
        if kind == FAILED:
            utt.failed = True
            self.failed += 1
        utt.done_id_ms, utt.done_obs_perf = ms, obs_perf
        last = self._last_done.get(cid, -1)
        if utt.index < last:
            self.out_of_order += 1
        self._last_done[cid] = max(last, utt.index)
        self.answered += 1
        self._in_flight -= 1
        self._space.set()
        self._progress.set()

    async def _send(self, batch: list[Utt]) -> None:
        self._in_flight += len(batch)
        await self.target.send(batch)

    async def _wait_answered(self, utts: Sequence[Utt], timeout_s: float) -> bool:
        """Wait until every utterance of ``utts`` has an answer, or the timeout."""
        deadline = time.monotonic() + timeout_s
        pending = [u for u in utts if u.dones == 0]
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._check_health()
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), timeout=min(remaining, 0.5))
            pending = [u for u in pending if u.dones == 0]
        return True

    def _counters(self) -> dict[str, int]:
        return {
            "duplicates": self.duplicates,
            "failed": self.failed,
            "unknown": self.unknown,
            "out_of_order": self.out_of_order,
            "entries_read": self.entries_read,
        }

    # --- phases -----------------------------------------------------------------

    async def one_each(self, cids: Sequence[str] | None = None, timeout_s: float = 60.0) -> bool:
        """One utterance per conversation (opens every session); True once all are answered."""
        utts = [self.new_utt(cid) for cid in (self.conversations if cids is None else cids)]
        for start in range(0, len(utts), 1000):
            await self._send(utts[start : start + 1000])
        return await self._wait_answered(utts, timeout_s)

    async def closed_loop(self, total: int, max_in_flight: int, timeout_s: float) -> dict[str, Any]:
        """Send ``total`` utterances round-robin over the conversations, never
        more than ``max_in_flight`` unanswered. Throughput = answered / (last
        answer - first send), client clock."""
        before = self._counters()
        utts: list[Utt] = []
        n_conv = len(self.conversations)
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while len(utts) < total and time.monotonic() < deadline:
            while self._in_flight >= max_in_flight and time.monotonic() < deadline:
                self._check_health()
                self._space.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._space.wait(), timeout=0.5)
            room = min(max_in_flight - self._in_flight, total - len(utts), 1000)
            if room <= 0:
                continue
            batch = [self.new_utt(self.conversations[(len(utts) + i) % n_conv]) for i in range(room)]
            utts.extend(batch)
            await self._send(batch)
        complete = await self._wait_answered(utts, max(0.0, deadline - time.monotonic()))
        answered = [u for u in utts if u.dones > 0]
        t_end = max((u.done_obs_perf for u in answered), default=time.perf_counter())
        elapsed = max(1e-9, t_end - t0)
        after = self._counters()
        return {
            "utterances": total,
            "sent": len(utts),
            "answered": len(answered),
            "missing": len(utts) - len(answered),
            "complete": complete,
            "max_in_flight": max_in_flight,
            "conversations": n_conv,
            "elapsed_s": round(elapsed, 3),
            "answered_per_s": round(len(answered) / elapsed, 1),
            "latency_ms": latency_figures(utts),
            **{k: after[k] - before[k] for k in after},
        }

    async def open_loop(
        self, rate_per_s: float, window_s: float, drain_s: float, conversations: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Send at ``rate_per_s`` overall for ``window_s``: utterance i is due
        at ``t0 + i / rate`` and goes to conversation ``i mod C``, so each
        conversation gets ``rate / C`` per second, offset evenly from its
        neighbours (no lock-step bursts). Due utterances are sent together
        when the loop wakes late; how late is reported (``send_lag_ms``)."""
        cids = list(conversations) if conversations is not None else self.conversations
        before = self._counters()
        gap_s = 1.0 / rate_per_s
        total = max(1, int(rate_per_s * window_s))
        utts: list[Utt] = []
        lags_ms: list[float] = []
        backlog: list[tuple[float, int]] = []
        t0 = time.perf_counter() + 0.005
        mid_at = t0 + window_s / 2
        backlog_mid: int | None = None
        answered_at_start = self.answered
        while len(utts) < total:
            now = time.perf_counter()
            due = min(total, int((now - t0) / gap_s) + 1) if now >= t0 else 0
            if due > len(utts):
                first_due = t0 + len(utts) * gap_s
                lags_ms.append((now - first_due) * 1000)
                batch = [self.new_utt(cids[(len(utts) + i) % len(cids)]) for i in range(due - len(utts))]
                utts.extend(batch)
                await self._send(batch)
                if backlog_mid is None and now >= mid_at:
                    backlog_mid = len(utts) - (self.answered - answered_at_start)
                if not backlog or now - backlog[-1][0] >= 0.25:
                    backlog.append((now, len(utts) - (self.answered - answered_at_start)))
                continue
            await asyncio.sleep(max(0.0, t0 + len(utts) * gap_s - time.perf_counter()))
        t_last_send = max(u.sent_perf for u in utts)
        t_first_send = min(u.sent_perf for u in utts)
        backlog_end = len(utts) - (self.answered - answered_at_start)
        if backlog_mid is None:
            backlog_mid = backlog_end
        complete = await self._wait_answered(utts, drain_s)
        answered = [u for u in utts if u.dones > 0]
        achieved = (len(utts) - 1) / (t_last_send - t_first_send) if len(utts) > 1 and t_last_send > t_first_send \
            else rate_per_s
        rate_ok = abs(achieved - rate_per_s) <= 0.05 * rate_per_s
        growth = backlog_end - backlog_mid
        growing = growth > max(10, 0.1 * rate_per_s)
        after = self._counters()
        return {
            "offered_per_s": rate_per_s,
            "achieved_send_per_s": round(achieved, 1),
            "window_s": window_s,
            "conversations": len(cids),
            "sent": len(utts),
            "answered": len(answered),
            "missing": len(utts) - len(answered),
            "backlog_mid": backlog_mid,
            "backlog_end": backlog_end,
            "backlog_growing": growing,
            "sustained": bool(rate_ok and not growing and complete),
            "send_lag_ms": summarise(lags_ms),
            "backlog_samples": [(round(t - t0, 3), b) for t, b in backlog],
            "latency_ms": latency_figures(utts),
            **{k: after[k] - before[k] for k in after},
        }
