"""The chaos run (python -m bench.chaos): its pure parts (the fault schedule, the
takeover times, a paused worker's writes, the accounting, the verdict), and a
CI-sized run end to end: nothing lost, nothing answered twice, every fault struck."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos.events import (
    FaultRecord,
    LogEvent,
    parse_log,
    response_prefix,
    takeover_delays,
    writes_after,
    zombie_windows,
)
from bench.chaos.outcome import StreamsRead, account, account_conversation
from bench.chaos.plan import QUICK, ChaosConfig, plan_faults
from bench.chaos.report import build_figures, render, verdict
from shared.models import ResponseDone, ResponseFailed, Timings
from simulator_svc.tracker import UtteranceRecord

ROOT = Path(__file__).resolve().parents[1]

# --- the fault schedule -------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [QUICK, ChaosConfig(), dataclasses.replace(QUICK, seed=7)])
def test_the_schedule_has_one_redis_kill_one_pause_and_kills_outside_their_guards(config: ChaosConfig) -> None:
    plan = plan_faults(config)
    kinds = [f.kind for f in plan]
    assert kinds.count("redis") == 1 and kinds.count("stop") == 1
    assert kinds.count("kill") >= 3
    assert [f.at_s for f in plan] == sorted(f.at_s for f in plan)
    assert all(0 < f.at_s < config.send_s for f in plan)
    redis_at = next(f.at_s for f in plan if f.kind == "redis")
    stop_at = next(f.at_s for f in plan if f.kind == "stop")
    for kill in (f for f in plan if f.kind == "kill"):
        assert not redis_at - config.redis_guard[0] <= kill.at_s <= redis_at + config.redis_guard[1]
        assert not stop_at - config.stop_guard[0] <= kill.at_s <= stop_at + config.stop_guard[1]
        assert kill.at_s >= config.first_kill_after_s


def test_the_schedule_is_a_function_of_the_seed() -> None:
    assert plan_faults(QUICK) == plan_faults(dataclasses.replace(QUICK))
    assert plan_faults(QUICK) != plan_faults(dataclasses.replace(QUICK, seed=QUICK.seed + 1))


def test_utterances_are_rounded_to_whole_conversations() -> None:
    config = ChaosConfig(utterances=1000, conversations=30, rate=10)
    assert config.per_conversation == 33 and config.total_utterances == 990 and config.send_s == 99


# --- log lines, takeovers, a paused worker's writes ---------------------------------------------------------


def _took(ts: float, worker: str, cid: str, service: str = "conversation") -> LogEvent:
    return LogEvent(ts, service, worker, f"took over conversation {cid}", cid)


def test_log_lines_are_parsed_and_other_output_is_skipped() -> None:
    text = "\n".join([
        "Traceback (most recent call last):",
        json.dumps({"ts": 5.5, "service": "conversation", "worker_id": "w1",
                    "msg": "response ids of this worker start with rdeadbeef"}),
        json.dumps({"ts": 6.0, "service": "conversation", "worker_id": "w1", "msg": "took over conversation c",
                    "conversation_id": "c"}),
        "{not json",
    ])
    events = parse_log(text)
    assert [e.ts for e in events] == [5.5, 6.0]
    assert events[1].conversation_id == "c"
    assert response_prefix(events) == "rdeadbeef"


def test_takeover_time_is_from_the_fault_to_the_first_peer_of_its_service_taking_it() -> None:
    fault = FaultRecord("kill", 1.0, 1.0, wall=100.0, target="victim", service="conversation", claims=["a", "b", "c"])
    events = [
        _took(99.0, "peer", "a"),  # before the fault: an earlier move
        _took(100.0, "victim", "a"),  # the victim itself
        _took(101.0, "peer", "a", service="transcriber"),  # the other service's takeover
        _took(102.5, "peer", "a"),
        _took(102.0, "other", "b"),
        _took(103.0, "peer", "b"),
        _took(101.0, "peer", "x"),  # not the victim's
    ]
    delays, missed = takeover_delays(fault, events)
    assert sorted(delays) == [2.0, 2.5]
    assert missed == ["c"]


def test_a_paused_workers_writes_count_from_its_continue_until_it_takes_the_conversation_back() -> None:
    pause = FaultRecord("stop", 1.0, 1.0, wall=0.5, target="me", service="conversation", claims=["a", "b", "kept"],
                        ended_wall=1.0)
    events = [_took(0.8, "peer", "a"), _took(0.8, "peer", "b"), _took(3.0, "me", "b")]
    windows = zombie_windows(pause, events)
    assert windows == {"a": (1.0, math.inf), "b": (1.0, 3.0)}  # "kept": never taken from it
    writes = {
        "a": [(999, "rmine1"), (1000, "rmine2"), (1001, "rpeer1"), (5000, "rmine5")],
        "b": [(2000, "rmine3"), (3000, "rmine4")],  # its own again from 3.0 s
        "kept": [(2000, "rmine6")],
    }
    assert writes_after(writes, windows, "rmine") == 3
    assert writes_after(writes, {"a": (1.0005, math.inf)}, "rmine") == 2  # a stream id's time is whole ms
    assert writes_after(writes, windows, "rnobody") == 0


# --- accounting -----------------------------------------------------------------------------------------------


def _sent(cid: str, n: int) -> list[UtteranceRecord]:
    return [UtteranceRecord(cid, f"u{k}", k, f"text {k}", 1000.0 + k) for k in range(n)]


def _done(cid: str, uid: str) -> ResponseDone:
    return ResponseDone(conversation_id=cid, utterance_id=uid, response_id="r1", text="ok",
                        timings=Timings(sent_ms=1, transcript_final_ms=2, done_ms=3))


def _failed(cid: str, uid: str) -> ResponseFailed:
    return ResponseFailed(conversation_id=cid, utterance_id=uid, response_id="r2", code="dead_lettered",
                          reason="delivered 3 times")


def test_a_conversation_is_accounted_from_its_streams() -> None:
    kept = {("c", f"u{k}") for k in range(6)}  # u6 went with Redis
    answers = [
        (2000, _done("c", "u0")),
        (2001, _done("c", "u2")),
        (2002, _done("c", "u1")),  # out of order
        (2003, _done("c", "u2")),  # twice
        (2004, _failed("c", "u3")),
        (2005, _failed("c", "u4")),
        (2006, _done("c", "u4")),  # failed and done
        (2007, _done("c", "nobody-sent-this")),
    ]  # u5: kept, never answered
    out = account_conversation("c", _sent("c", 7), kept, answers)
    assert out.utterances == 7
    assert out.done == 4
    assert out.failed == ["dead_lettered: delivered N times"]
    assert out.lost == ["u5"]
    assert out.lost_by_redis == ["u6"]
    assert out.duplicates == 2
    assert out.out_of_order == 1
    assert out.unknown == 1
    assert out.latencies_ms[0] == 1000.0
    assert not out.clean()


def test_the_outcome_sums_its_conversations_and_lists_those_not_clean() -> None:
    read = StreamsRead(kept={("a", "u0"), ("a", "u1"), ("b", "u0")},
                       answers={"a": [(5, _done("a", "u0")), (6, _done("a", "u1"))], "b": []})
    outcome = account([*_sent("a", 2), *_sent("b", 1)], read)
    figures = outcome.figures()
    assert (figures["utterances"], figures["done"], figures["lost"], figures["duplicates"]) == (3, 2, 1, 0)
    assert outcome.lost == [("b", "u0")]
    assert figures["conversations_clean"] == 1 and list(figures["conversations_not_clean"]) == ["b"]


# --- the verdict ----------------------------------------------------------------------------------------------


def _figures(**overrides: object) -> dict[str, object]:
    read = StreamsRead(kept={("a", "u0")}, answers={"a": [(5, _done("a", "u0"))]})
    faults = [
        FaultRecord("kill", 1.0, 1.0, 100.0, "t0", "transcriber", claims=["a"], replacement="t1"),
        FaultRecord("redis", 2.0, 2.0, 101.0, "redis", ended_wall=102.0),
        FaultRecord("stop", 3.0, 3.0, 103.0, "c0", "conversation", claims=["a"], ended_wall=108.0),
    ]
    events = [
        _took(101.5, "t2", "a", service="transcriber"),
        LogEvent(0.0, "conversation", "c0", "response ids of this worker start with rc0"),
        _took(105.0, "c1", "a"),
        LogEvent(108.5, "conversation", "c0", "claims confirmed again after 5.0s unconfirmed"),
    ]
    figures = build_figures(QUICK, account(_sent("a", 1), read), read, faults, events, {("a", "u0"): 1000.0},
                            "", 10.0, 6)
    figures.update(overrides)
    return figures


def test_a_clean_run_passes_and_renders_its_figures() -> None:
    figures = _figures()
    assert verdict(figures) == []
    assert figures["takeover_s"]["p50"] == 1.5
    assert figures["pause"]["writes_after_continue"] == 0 and figures["pause"]["confirmed_claims_again"]
    text = render(figures)
    for line in ("lost           0", "duplicates     0", "takeover       p50 1.5 s", "SIGSTOP + SIGCONT  c0"):
        assert line in text, text


def test_a_run_fails_on_lost_duplicates_missing_faults_or_a_paused_workers_writes() -> None:
    assert verdict(_figures(lost=1)) == ["1 utterances lost"]
    assert verdict(_figures(duplicates=2)) == ["2 duplicate answers"]
    assert verdict(_figures(faults_injected={"kill": 3, "redis": 0, "stop": 1})) == ["faults not injected: redis"]
    figures = _figures()
    figures["pause"]["writes_after_continue"] = 4  # type: ignore[index]
    assert verdict(figures) == ["the paused worker wrote 4 entries for conversations taken from it"]


# --- a CI-sized run, end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_chaos_run_loses_nothing_and_answers_nothing_twice(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "--out", str(out), "--logs", str(tmp_path / "logs")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert out.is_file(), f"no figures (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    figures = json.loads(out.read_text())
    print(proc.stdout)
    assert figures["utterances"] == QUICK.total_utterances
    assert figures["lost"] == 0, proc.stdout
    assert figures["duplicates"] == 0, proc.stdout
    assert all(n >= 1 for n in figures["faults_injected"].values()), figures["faults_injected"]
    assert figures["takeover_s"]["n"] > 0, proc.stdout
    assert figures["pause"]["taken_over"] > 0 and figures["pause"]["writes_after_continue"] == 0, proc.stdout
    assert figures["redis_crash"]["workers_that_saw_the_restart"] > 0, proc.stdout
    assert proc.returncode == 0, proc.stdout
