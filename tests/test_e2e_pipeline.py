"""End to end: the three services as real processes on a real Redis.

Each test starts its own workers under its own key prefix, drives them with
the real simulator (or raw stream writes for bad input), and checks the
properties of the design: every utterance answered exactly once, in order,
through crashes, hand-backs and a Redis restart.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as syncredis

from shared.devstack import ServiceProcess, Stack
from shared.keys import Keys
from shared.models import (
    ConversationEnded,
    ConversationStarted,
    DeadLetter,
    ResponseDone,
    UtteranceText,
    decode_fields,
    encode,
)
from shared.redis_server import RedisServer
from tests.conftest import base_env, run_simulator, wait_for_workers

pytestmark = pytest.mark.slow


def _log_events(proc: ServiceProcess) -> list[dict[str, object]]:
    events = []
    for line in proc.log_text().splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def _finished_count(proc: ServiceProcess) -> int:
    return sum(1 for e in _log_events(proc) if str(e.get("msg", "")).endswith(" finished"))


def _start(stack: Stack, transcribers: int = 1, conversations: int = 1, **env: str) -> list[ServiceProcess]:
    procs = [stack.start("transcriber_svc", env) for _ in range(transcribers)]
    procs += [stack.start("conversation_svc", env) for _ in range(conversations)]
    return procs


def test_twenty_conversations_by_ten_utterances(stack: Stack, redis_url: str, prefix: str) -> None:
    _start(stack)
    wait_for_workers(redis_url, prefix, 2)
    rc, summary, err = run_simulator(stack.env, "--conversations", "20", "--utterances", "10", "--rate", "20")
    assert summary["utterances"] == 20 * 11  # greeting + 10 each
    assert summary["missing"] == 0, err
    assert summary["duplicates"] == 0
    assert summary["out_of_order"] == 0
    assert summary["responses_done"] == 220
    assert rc == 0
    assert summary["latency_ms"]["response_done"]["n"] == 220


def test_dialogue_prints_like_the_seed(stack: Stack, redis_url: str, prefix: str) -> None:
    _start(stack)
    wait_for_workers(redis_url, prefix, 2)
    proc = subprocess.run([sys.executable, "-m", "simulator_svc", "--utterances", "2", "--rate", "20"],
                          env=stack.env, capture_output=True, text=True, timeout=60, check=False)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert "[SIMULATION] Sending utterance: Hello, I'm going to send you some audio transcriptions" in out
    assert "[CONVERSATION] Sent: This is a test of the transcription system." in out
    assert '[CONVERSATION] AI: I\'ve received your transcription: "This is a test' in out
    assert out.count("[CONVERSATION] Response complete") == 3


def test_scaling_spreads_conversations_over_workers(stack: Stack, redis_url: str, prefix: str) -> None:
    procs = _start(stack, transcribers=2, conversations=3)
    wait_for_workers(redis_url, prefix, 5)
    rc, summary, err = run_simulator(stack.env, "--conversations", "30", "--utterances", "4", "--rate", "10")
    assert rc == 0 and summary["missing"] == 0 and summary["duplicates"] == 0, err
    time.sleep(1.0)  # let the workers log the ends
    per_worker = {f"{p.module}#{i}": _finished_count(p) for i, p in enumerate(procs)}
    transcribers = [n for k, n in per_worker.items() if k.startswith("transcriber")]
    conversations = [n for k, n in per_worker.items() if k.startswith("conversation")]
    assert sum(transcribers) == 30 and sum(conversations) == 30, per_worker
    assert all(n > 0 for n in transcribers + conversations), per_worker


def _start_simulation(env: dict[str, str], conversations: int = 10, rate: float = 3) -> subprocess.Popen[str]:
    """A simulation of a few seconds (12 utterances and a greeting each), in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "simulator_svc", "--json", "--conversations", str(conversations), "--utterances",
         "12", "--rate", str(rate), "--timeout", "90"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _sessions_by_pid(redis_url: str, prefix: str) -> dict[int, int]:
    """Sessions each worker holds, from the heartbeats (pid -> sessions)."""
    r = syncredis.Redis.from_url(redis_url, decode_responses=True)
    out = {}
    for key in r.scan_iter(match=f"{prefix}:worker:*"):
        h = r.hgetall(key)
        out[int(h["pid"])] = int(h["sessions"])
    r.close()
    return out


def _takeover_delay_s(survivor: ServiceProcess, since_s: float) -> float | None:
    times = [float(str(e["ts"])) for e in _log_events(survivor) if "took over" in str(e.get("msg", ""))]
    later = [t for t in times if t >= since_s]
    return min(later) - since_s if later else None


@pytest.mark.parametrize("module", ["conversation_svc", "transcriber_svc"])
def test_sigkill_mid_run_loses_nothing(stack: Stack, redis_url: str, prefix: str, module: str) -> None:
    if module == "conversation_svc":
        _start(stack, conversations=0)
    else:
        _start(stack, transcribers=0)
    first = stack.start(module)
    second = stack.start(module)
    wait_for_workers(redis_url, prefix, 3)
    sim = _start_simulation(stack.env)
    time.sleep(2.0)
    # Kill the worker that holds the most conversations (a burst may land unevenly on a busy machine).
    held = _sessions_by_pid(redis_url, prefix)
    victim, survivor = (first, second) if held.get(first.pid, 0) >= held.get(second.pid, 0) else (second, first)
    assert held.get(victim.pid, 0) > 0, held
    killed_at = time.time()
    victim.signal(signal.SIGKILL)
    out, err = sim.communicate(timeout=120)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["missing"] == 0, err
    assert summary["duplicates"] == 0
    assert summary["out_of_order"] == 0
    assert sim.returncode == 0
    delay = _takeover_delay_s(survivor, killed_at)
    assert delay is not None, "the survivor never took over"
    lease_s = float(stack.env["LEASE_S"])
    assert delay <= 3 * lease_s, f"takeover after {delay:.1f}s with a {lease_s}s lease"
    _assert_history_survived(redis_url, prefix, conversations=10, turns=13)


def _assert_history_survived(redis_url: str, prefix: str, conversations: int, turns: int) -> None:
    """The echo engine numbers its answers by the turns in its context: after a
    takeover they go on counting only if the new owner rebuilt the history."""
    r = syncredis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"{prefix}:conv:*:responses"))
    assert len(keys) == conversations
    for key in keys:
        numbers = [int(e.text.rsplit("(turn ", 1)[1].rstrip(")")) for _, f in r.xrange(key)
                   if isinstance(e := decode_fields(f), ResponseDone)]
        assert numbers == list(range(1, turns + 1)), (key, numbers)
    r.close()


def test_sigterm_hands_back_at_once(stack: Stack, redis_url: str, prefix: str) -> None:
    _start(stack, conversations=0)
    leaving = stack.start("conversation_svc")
    staying = stack.start("conversation_svc")
    wait_for_workers(redis_url, prefix, 3)
    sim = _start_simulation(stack.env)
    time.sleep(2.0)
    stopped_at = time.time()
    leaving.signal(signal.SIGTERM)
    assert leaving.wait(15) == 0, leaving.log_text()[-2000:]
    out, err = sim.communicate(timeout=120)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["missing"] == 0 and summary["duplicates"] == 0 and summary["out_of_order"] == 0, err
    assert any("handed back" in str(e.get("msg", "")) for e in _log_events(leaving))
    _assert_history_survived(redis_url, prefix, conversations=10, turns=13)
    delay = _takeover_delay_s(staying, stopped_at)
    assert delay is not None
    # Handed back, not waited out: well under one lease.
    assert delay < float(stack.env["LEASE_S"]), f"took {delay:.1f}s"


def test_bad_input_is_dead_lettered_and_the_good_is_answered(stack: Stack, redis_url: str, prefix: str) -> None:
    procs = _start(stack)
    wait_for_workers(redis_url, prefix, 2)
    keys = Keys(prefix)
    r = syncredis.Redis.from_url(redis_url)
    cid = "bad-input-conv"
    control = keys.control_for(cid)

    def utter(uid: str, text: str) -> None:
        entry = UtteranceText(conversation_id=cid, utterance_id=uid, text=text, sent_ms=int(time.time() * 1000))
        r.xadd(keys.input(cid), {"d": encode(entry)})

    r.xadd(control, {"d": b"{this is not json"})
    r.xadd(control, {"d": b'{"type": "conversation.exploded", "conversation_id": "x"}'})
    r.xadd(control, {"d": encode(ConversationEnded(conversation_id="never-started"))})
    r.xadd(control, {"d": encode(ConversationStarted(conversation_id=cid))})
    utter("u1", "first good one")
    r.xadd(keys.input(cid), {"d": b'{"type": "utterance.text", "conversation_id": "' + cid.encode()
                             + b'", "utterance_id": "big", "sent_ms": 1, "text": "' + b"x" * 9000 + b'"}'})
    r.xadd(keys.input(cid), {"d": b'{"type": "audio.chunk", "conversation_id": "' + cid.encode()
                             + b'", "seq": 0, "audio": "' + b"A" * 200_000 + b'"}'})
    r.xadd(keys.input(cid), {"d": b"\xff\xfe garbage"})
    r.xadd(keys.input(cid), {"no_d_field": b"1"})
    r.xadd(keys.input(cid), {"d": encode(UtteranceText(conversation_id="someone-else", utterance_id="u9",
                                                       text="wrong stream", sent_ms=1))})
    r.xadd(keys.input(cid), {"d": encode(ConversationStarted(conversation_id=cid))})
    utter("u2", "second good one")
    # A transcript for a conversation nobody started, written straight into a transcripts stream.
    r.xadd(control, {"d": encode(UtteranceText(conversation_id=cid, utterance_id="x", text="wrong", sent_ms=1))})

    deadline = time.monotonic() + 20
    dones: list[ResponseDone] = []
    while time.monotonic() < deadline:
        rows = r.xrange(keys.responses(cid))
        dones = [e for _, f in rows if isinstance(e := decode_fields(f), ResponseDone)]
        dead = r.xlen(keys.dead(0))
        if len(dones) >= 2 and dead >= 13:
            break
        time.sleep(0.1)
    assert [d.utterance_id for d in dones] == ["u1", "u2"]
    letters = [DeadLetter.model_validate_json(f[b"d"]) for _, f in r.xrange(keys.dead(0))]
    reasons = " | ".join(f"{d.stream.rsplit(':', 1)[-1]}: {d.reason}" for d in letters)
    # Bad control entries are rejected by both groups (each reads the control stream): 7 + 6 on the input stream.
    assert len(letters) == 13, reasons
    for expected in ("Invalid JSON", "does not match any of the expected tags", "unknown conversation",
                     "String should have at most 8000 characters", "audio chunk over",
                     "no 'd' field", "conversation_id does not match", "does not belong"):
        assert expected in reasons, f"{expected!r} not in {reasons}"
    assert all(p.alive() for p in procs)
    r.close()


def test_redis_restart_mid_run(own_redis_server: RedisServer, prefix: str, tmp_path: Path) -> None:
    env = base_env(own_redis_server.url, prefix)
    stack = Stack(env, tmp_path / "logs")
    try:
        _start(stack)
        wait_for_workers(own_redis_server.url, prefix, 2)
        sim = _start_simulation(env, conversations=5, rate=2)
        time.sleep(2.0)
        own_redis_server.stop()
        time.sleep(1.5)
        own_redis_server.start()
        out, err = sim.communicate(timeout=120)
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["missing"] == 0, err
        assert summary["duplicates"] == 0
        assert sim.returncode == 0
        assert all(p.alive() for p in stack.procs)
    finally:
        stack.stop_all()


def test_a_bound_on_unanswered_utterances_holds_and_everything_is_answered(
    stack: Stack, redis_url: str, prefix: str
) -> None:
    """--max-in-flight: a batch of due utterances that reaches the bound is written before
    the simulator waits for answers (it used to wait on its own unwritten utterances)."""
    _start(stack)
    wait_for_workers(redis_url, prefix, 2)
    # 40 conversations due within 0.4 ms of each other: each sending step finds many due at once.
    rc, summary, err = run_simulator(stack.env, "--conversations", "40", "--utterances", "2", "--rate", "100",
                                     "--max-in-flight", "4", "--timeout", "30")
    assert summary["missing"] == 0 and summary["duplicates"] == 0 and summary["out_of_order"] == 0, err
    assert summary["responses_done"] == 40 * 3 and rc == 0
