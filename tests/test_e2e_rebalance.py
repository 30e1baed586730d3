"""Rebalancing end to end: real worker processes on a real Redis, driven by the
simulator. Workers that join under load get their share of the live
conversations; a saturated worker hands conversations to a peer; either way
every utterance sent before, during and after a move is answered exactly once,
in order, and each conversation's history goes on (the echo engine numbers its
answers by the turns in its context). The time from the join to a balanced pool
is printed, not asserted (a figure; see docs/architecture.md "Rebalancing")."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import redis as syncredis

from shared.devstack import ServiceProcess, Stack
from tests.conftest import wait_for_workers
from tests.test_e2e_pipeline import _assert_history_survived, _log_events

pytestmark = pytest.mark.slow

#: ±20 % of the fair share: what "balanced" means (REBALANCE_THRESHOLD's default).
TOLERANCE = 0.2


def _simulate(env: dict[str, str], conversations: int, utterances: int, rate: float,
              *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulator_svc", "--json", "--conversations", str(conversations), "--utterances",
         str(utterances), "--rate", str(rate), "--timeout", "120", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(sim: subprocess.Popen[str]) -> dict[str, object]:
    out, err = sim.communicate(timeout=180)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"the simulator printed no summary (rc={sim.returncode}):\n{err[-3000:]}"
    summary: dict[str, object] = json.loads(lines[-1])
    assert summary["missing"] == 0, err[-3000:]
    assert summary["duplicates"] == 0 and summary["out_of_order"] == 0, summary
    assert sim.returncode == 0, err[-3000:]
    return summary


def _conversation_sessions(client: syncredis.Redis, prefix: str) -> dict[int, int]:
    """Sessions each conversation worker holds, from the heartbeats (pid -> sessions)."""
    out = {}
    for key in client.scan_iter(match=f"{prefix}:worker:conversation:*"):
        h = client.hgetall(key)
        if h:
            out[int(h[b"pid"])] = int(h[b"sessions"])
    return out


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _said(proc: ServiceProcess, text: str) -> list[str]:
    return [str(e["msg"]) for e in _log_events(proc) if text in str(e.get("msg", ""))]


def test_workers_that_join_under_load_get_their_share_of_the_live_conversations(
    stack: Stack, redis_url: str, prefix: str
) -> None:
    conversations, utterances = 30, 24
    stack.start("transcriber_svc")
    first = stack.start("conversation_svc")
    wait_for_workers(redis_url, prefix, 2)
    client = syncredis.Redis.from_url(redis_url)
    try:
        sim = _simulate(stack.env, conversations, utterances, rate=1.0)
        _wait(lambda: _conversation_sessions(client, prefix).get(first.pid) == conversations, 30,
              "the first worker to hold every conversation")
        joined = [stack.start("conversation_svc") for _ in range(2)]
        wait_for_workers(redis_url, prefix, 4)
        joined_at = time.monotonic()

        def balanced() -> bool:
            held = _conversation_sessions(client, prefix)
            fair = sum(held.values()) / 3
            return len(held) == 3 and all(abs(n - fair) <= TOLERANCE * fair for n in held.values())

        _wait(balanced, 60, "a balanced pool")
        took_s = time.monotonic() - joined_at
        held = sorted(_conversation_sessions(client, prefix).values())
        print(f"\njoin to balanced: {took_s:.2f} s (LEASE_S {stack.env['LEASE_S']}; sessions {held})")
        _finish(sim)
    finally:
        client.close()
    # Greeting + utterances: numbered 1.. without a gap or a repeat, whoever answered.
    _assert_history_survived(redis_url, prefix, conversations=conversations, turns=utterances + 1)
    assert _said(first, "to rebalance"), "the first worker handed nothing back"
    assert all(_said(p, "handed back by") for p in joined), "a joined worker took nothing"


def test_a_saturated_worker_hands_conversations_to_a_peer(stack: Stack, redis_url: str, prefix: str) -> None:
    conversations, utterances = 16, 20
    # Each answer holds the hot worker's event loop 100 ms: more than it can serve at its share. The
    # simulator keeps at most 12 utterances unanswered (users wait for answers), so the hot worker's
    # backlog, and how long its loop is held at a time, stay bounded: saturated, not dead. And a longer
    # lease: it must not miss it (its conversations would move as a dead worker's, not as a hand-back).
    env = {"LEASE_S": "5", "REBALANCE_SATURATED_MS": "100"}
    stack.start("transcriber_svc", env)
    hot = stack.start("conversation_svc", {**env, "ECHO_BLOCK_MS": "100"})
    cool = stack.start("conversation_svc", env)
    wait_for_workers(redis_url, prefix, 3)
    sim = _simulate({**stack.env, **env}, conversations, utterances, 2.0, "--max-in-flight", "12")
    _finish(sim)
    _assert_history_survived(redis_url, prefix, conversations=conversations, turns=utterances + 1)
    shed = _said(hot, "to rebalance (saturated")
    assert shed, "the saturated worker handed nothing back"
    assert _said(cool, "handed back by"), "its peer took nothing"
    assert not _said(hot, "a peer took it over"), "the saturated worker missed its lease"
    print("\n" + "\n".join(shed))
