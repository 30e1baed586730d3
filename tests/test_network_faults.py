"""A worker cut off from Redis for two leases: by a network that blackholes its
traffic (a proxy, in-process workers) and by SIGSTOP (a real process). It
notices and says so on /readyz, a peer takes its conversations over, and once
it is back it writes nothing for them: every utterance is answered exactly once,
in order, by whoever owned its conversation when the answer was written."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis as syncredis
import redis.asyncio as aioredis

from conversation_svc.worker import ConversationService
from shared.bus.doorbell import add_with_rings
from shared.devstack import ServiceProcess, Stack
from shared.engines.base import Completed, ConversationEngine, ConversationSession, ResponseEvent, TextDelta
from shared.history import Turn
from shared.keys import Keys
from shared.models import (
    ConversationStarted,
    Entry,
    ResponseDelta,
    ResponseDone,
    ResponseStarted,
    encode,
    encode_transcript_final,
    now_ms,
)
from shared.settings import ConversationSettings
from tests.blackhole_proxy import BlackholeProxy
from tests.conftest import wait_for_workers
from tests.runtime_helpers import FAST, entries, running, until
from tests.test_e2e_pipeline import _assert_history_survived, _log_events, _sessions_by_pid, _start, _start_simulation

LEASE_S = FAST["lease_s"]


class HeldEcho(ConversationEngine):
    """Answers signed by the worker (``<who> heard <text>``), each held until the
    test lets this worker's answers go (``go``). ``asked``: what it was asked, in order."""

    def __init__(self, who: str) -> None:
        self.name = "held-echo"
        self.who = who
        self.go = asyncio.Event()
        self.go.set()
        self.asked: list[str] = []
        #: Answers given in full (their Completed yielded).
        self.answered: list[str] = []

    async def open_session(
        self, conversation_id: str, instructions: str, history: Sequence[Turn]
    ) -> ConversationSession:
        return _HeldSession(self)


class _HeldSession(ConversationSession):
    def __init__(self, engine: HeldEcho) -> None:
        self.engine = engine

    async def respond(self, user_text: str) -> AsyncIterator[ResponseEvent]:
        self.engine.asked.append(user_text)
        await self.engine.go.wait()
        yield TextDelta(f"{self.engine.who} heard {user_text}")
        self.engine.answered.append(user_text)
        yield Completed()


async def _utter(redis: aioredis.Redis, keys: Keys, cid: str, uid: str) -> None:
    """A final transcript, as the transcriber writes it (this test runs conversation workers only)."""
    final = encode_transcript_final(cid, uid, uid, now_ms(), now_ms())
    await add_with_rings(redis, keys, [(keys.transcripts(cid), final, 1000)])


def _response_ids(rows: list[Entry], uid: str) -> set[str]:
    return {e.response_id for e in rows
            if isinstance(e, ResponseStarted | ResponseDelta | ResponseDone) and e.utterance_id == uid}


async def test_a_worker_behind_a_blackhole_notices_and_writes_nothing_once_taken_over(
    redis_url: str, redis: aioredis.Redis, prefix: str
) -> None:
    """The old owner is cut off with an answer in progress; a peer takes the
    conversation over and answers that utterance itself. The old owner's answer,
    finished during the cut, reaches Redis after the takeover: the fence refuses
    it (without the fence its gate would ack the entry the peer had claimed and
    write its own answer, and the peer's would be suppressed)."""
    keys = Keys(prefix)
    host, port = redis.connection_pool.connection_kwargs["host"], redis.connection_pool.connection_kwargs["port"]
    proxy = await BlackholeProxy(host, port).start()
    common: dict[str, Any] = {"key_prefix": prefix, "conversation_engine": "echo", **FAST}
    old_engine, new_engine = HeldEcho("old"), HeldEcho("new")
    old_settings = ConversationSettings(redis_url=proxy.url, **common)
    new_settings = ConversationSettings(redis_url=redis_url, **common)
    try:
        async with running(old_settings, ConversationService(old_settings, old_engine)) as old:
            await add_with_rings(redis, keys, [(keys.control_for("c"), encode(ConversationStarted(conversation_id="c")),
                                                None)])

            async def adopted() -> bool:
                return "c" in old.live

            await until(adopted)
            async with running(new_settings, ConversationService(new_settings, new_engine)) as new:
                await _utter(redis, keys, "c", "u0")

                async def answered(*uids: str) -> bool:
                    return [e.utterance_id for e in await entries(redis, keys.responses("c"))
                            if isinstance(e, ResponseDone)] == list(uids)

                await until(lambda: answered("u0"))
                old_engine.go.clear()
                new_engine.go.clear()
                await _utter(redis, keys, "c", "u1")
                await until(_true_when(lambda: old_engine.asked == ["u0", "u1"]))

                # The monitor's stats of u0 go out a second after it: before the cut, so that
                # what the old owner sends into the cut starts with its answer to u1.
                await until(lambda: _has_entries(redis, keys.stats(0)))
                written_before_cut = await redis.xlen(keys.responses("c"))
                proxy.cut()
                cut_at = time.monotonic()
                try:
                    await until(_true_when(lambda: old.not_ready_reason() is not None))  # /readyz: 503
                    assert "claims not confirmed" in (old.not_ready_reason() or ""), old.not_ready_reason()
                    await until(_true_when(lambda: "c" in new.live))  # taken over: the claim went idle
                    await until(_true_when(lambda: new_engine.asked == ["u1"]))  # the peer answers u1 itself
                    await _utter(redis, keys, "c", "u2")
                    # u1 claimed, u2 read: both the peer's.
                    await until(lambda: _pending_for(redis, keys, new.w.worker_id, 2))
                    old_engine.go.set()  # the old owner's answer to u1 is written into the cut
                    # In the cut: its first flush after the answer is in flight (the rest of the answer,
                    # if it did not fit that flush, waits behind it).
                    await until(_true_when(lambda: old.w.writer.backlog > 0 and old_engine.answered == ["u0", "u1"]))
                    await asyncio.sleep(max(0.0, cut_at + 2 * LEASE_S - time.monotonic()))
                finally:
                    proxy.restore()

                await until(_true_when(lambda: "c" not in old.live and old.w.writer.backlog == 0))
                assert old.w.writer.stats.fenced >= 1
                new_engine.go.set()
                await _utter(redis, keys, "c", "u3")
                await until(lambda: answered("u0", "u1", "u2", "u3"))
                await until(_true_when(lambda: old.not_ready_reason() is None))
                assert "c" not in old.live
        rows = await entries(redis, keys.responses("c"))
        dones = {e.utterance_id: e for e in rows if isinstance(e, ResponseDone)}
        assert {uid: d.text for uid, d in dones.items()} == {
            "u0": "old heard u0", "u1": "new heard u1", "u2": "new heard u2", "u3": "new heard u3"}
        # Since the cut, only the new owner's answers: no started or delta of the old owner's either
        # (its response.started of u1 went out before the cut).
        since_cut = rows[written_before_cut:]
        assert {uid: _response_ids(since_cut, uid) for uid in ("u1", "u2", "u3")} == {
            uid: {dones[uid].response_id} for uid in ("u1", "u2", "u3")}
        (group,) = await redis.xinfo_groups(keys.transcripts("c"))
        assert group["pending"] == 0
    finally:
        await proxy.aclose()


async def _has_entries(redis: aioredis.Redis, key: str) -> bool:
    return bool(await redis.xlen(key))


def _true_when(check: Any) -> Any:
    async def wrapped() -> bool:
        return bool(check())
    return wrapped


async def _pending_for(redis: aioredis.Redis, keys: Keys, consumer: str, count: int) -> bool:
    rows = await redis.xpending_range(keys.transcripts("c"), "conversation", min="-", max="+", count=10)
    return [r["consumer"].decode() for r in rows] == [consumer] * count


# --- SIGSTOP: a real process ------------------------------------------------------------------------------------


def _writers_in_turn(redis_url: str, prefix: str) -> dict[str, list[str]]:
    """Per responses stream, the processes that wrote it, in turn (a response id starts
    with its process's random prefix: ``r`` + 8 hex), consecutive repeats folded."""
    r = syncredis.Redis.from_url(redis_url)
    out: dict[str, list[str]] = {}
    for key in r.scan_iter(match=f"{prefix}:conv:*:responses"):
        turns: list[str] = []
        for _, fields in r.xrange(key):
            entry = json.loads(fields[b"d"])
            writer = entry["response_id"][:9] if entry["type"] != "response.failed" else "failed"
            if not turns or turns[-1] != writer:
                turns.append(writer)
        out[key.decode()] = turns
    r.close()
    return out


def _said(proc: ServiceProcess, text: str) -> bool:
    return any(text in str(e.get("msg", "")) for e in _log_events(proc))


@pytest.mark.slow
def test_a_worker_stopped_past_its_lease_writes_nothing_once_continued(
    stack: Stack, redis_url: str, prefix: str
) -> None:
    _start(stack, conversations=0)
    first = stack.start("conversation_svc")
    second = stack.start("conversation_svc")
    wait_for_workers(redis_url, prefix, 3)
    sim = _start_simulation(stack.env)
    time.sleep(2.0)
    held = _sessions_by_pid(redis_url, prefix)
    victim, survivor = (first, second) if held.get(first.pid, 0) >= held.get(second.pid, 0) else (second, first)
    assert held.get(victim.pid, 0) > 0, held
    victim.signal(signal.SIGSTOP)
    try:
        time.sleep(2 * float(stack.env["LEASE_S"]))
        deadline = time.monotonic() + 30
        while not _said(survivor, "took over"):
            assert time.monotonic() < deadline, "the survivor never took over"
            time.sleep(0.1)
    finally:
        victim.signal(signal.SIGCONT)
    out, err = sim.communicate(timeout=120)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["missing"] == 0, err
    assert summary["duplicates"] == 0
    assert summary["out_of_order"] == 0
    assert sim.returncode == 0
    assert victim.alive()
    # Continued, it knew its claims might be gone before reading again, and learned which were.
    deadline = time.monotonic() + 10
    while not (_said(victim, "claims confirmed again after") and _said(victim, "a peer took it over")):
        assert time.monotonic() < deadline, victim.log_text()[-3000:]
        time.sleep(0.1)
    assert _said(victim, "claims not confirmed")
    # Per conversation, the old owner wrote only before the new one: never after it.
    taken = {key: turns for key, turns in _writers_in_turn(redis_url, prefix).items() if len(turns) > 1}
    assert taken, "no conversation changed hands"
    assert all(len(turns) == len(set(turns)) for turns in taken.values()), taken
    _assert_history_survived(redis_url, prefix, conversations=10, turns=13)
