"""The gateway benchmark's pure pieces: /proc parsing, the client's event-type
fast path, the end of speech, slot scheduling, and the figures and tables made
from measurements (no process, no socket, no clock)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from bench.gateway_capacity import StepPlan, TurnLog, next_slot, step_figures
from bench.gateway_client import event_type, ws_url
from bench.gateway_tables import capacity_lines, fmt, summary_lines, voice_lines
from bench.gateway_voice import MILESTONES, UtteranceRecord, last_voiced_sample, row_figures
from bench.procstat import parse_machine_stat, parse_process_stat

# A real /proc/<pid>/stat line, its command name holding a space and a parenthesis.
_STAT = ("4242 (python -m (x)) S 1 4242 1 0 -1 4194560 9000 0 0 0 250 50 0 0 20 0 3 0 158540 "
         "300000000 12800 18446744073709551615 1 1 0 0 0 0 0 16781312 16386 0 0 0 17 1 0 0 0 0 0")


def test_process_stat_fields_are_counted_after_the_command_name() -> None:
    sample = parse_process_stat(_STAT, ticks_per_s=100, page_bytes=4096)
    assert sample.cpu_s == pytest.approx(3.0)  # utime 250 + stime 50 ticks
    assert sample.rss_bytes == 12800 * 4096


def test_process_stat_refuses_what_is_not_one() -> None:
    with pytest.raises(ValueError):
        parse_process_stat("4242 python S 1", ticks_per_s=100, page_bytes=4096)
    with pytest.raises(ValueError):
        parse_process_stat("4242 (python) S 1 2 3", ticks_per_s=100, page_bytes=4096)


def test_machine_stat_busy_leaves_out_idle_and_iowait() -> None:
    text = "cpu  100 10 40 800 50 0 0 0 7 0\ncpu0 50 5 20 400 25 0 0 0 0 0\nintr 1 2 3\n"
    sample = parse_machine_stat(text, ticks_per_s=100)
    assert sample.total_s == pytest.approx(10.0)  # 1000 ticks: guest (7) is inside user already
    assert sample.busy_s == pytest.approx(1.5)
    with pytest.raises(ValueError):
        parse_machine_stat("cpu0 1 2 3 4\n", ticks_per_s=100)


def test_event_type_fast_path_and_fallback() -> None:
    assert event_type('{"type":"response.done","event_id":"e1","response":{}}') == "response.done"
    assert event_type(json.dumps({"event_id": "e1", "type": "error"})) == "error"  # not first: parsed
    assert event_type('{"event_id": "e1"}') == ""
    assert event_type("not json") == ""
    assert event_type("[1, 2]") == ""


def test_ws_url() -> None:
    assert ws_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/v1/realtime?model=local"
    assert ws_url("https://gw.example") == "wss://gw.example/v1/realtime?model=local"


def _pcm(*samples: int) -> bytes:
    return b"".join(s.to_bytes(2, "little", signed=True) for s in samples)


def test_last_voiced_sample_ignores_a_quiet_tail() -> None:
    # -45 dBFS is 184 of 32768: 200 is voiced, 100 (a quiet tail) is not, nor is a negative -150.
    assert last_voiced_sample(_pcm(0, 5000, -3000, 200, 100, -150, 0)) == 3
    assert last_voiced_sample(_pcm(0, -200, 0)) == 1
    assert last_voiced_sample(_pcm(0, 10, -10)) is None
    assert last_voiced_sample(b"") is None


def test_next_slot_keeps_the_rate_and_counts_what_it_skips() -> None:
    assert next_slot(first_due=10.0, period_s=2.0, after_slot=0, now=10.5) == (1, 0)
    assert next_slot(first_due=10.0, period_s=2.0, after_slot=0, now=12.0) == (1, 0)  # due now, not past
    # A turn that took 5 s from slot 0: slots 1 and 2 are past, slot 3 (at 16.0) is next.
    assert next_slot(first_due=10.0, period_s=2.0, after_slot=0, now=15.0) == (3, 2)


def test_turn_log_counts_only_the_window_and_every_failure() -> None:
    log = TurnLog(window_start=10.0, window_end=20.0)
    log.add(9.0, 9.01, "completed")  # before the window
    log.add(10.0, 10.012, "completed")
    log.add(15.0, None, "timeout")
    log.add(19.9, 20.1, "failed")
    log.add(20.0, 20.01, "completed")  # at the end: outside
    assert log.latencies_ms == [pytest.approx(12.0)]
    assert (log.sent_in_window, log.timeouts, log.not_completed) == (3, 1, 1)


def _step(sessions: int = 100) -> dict[str, Any]:
    plan = StepPlan(sessions=sessions, turns_per_s_per_session=0.5, seconds=20.0, deflate=True)
    log = TurnLog(window_start=0.0, window_end=20.0, latencies_ms=[5.0] * 900 + [50.0] * 100)
    usage = {"elapsed_s": 20.0, "gateway_cpu_s": 3.0, "gateway_rss_bytes": 60 * 2**20,
             "loadgen_cpu_s": 4.0, "pipeline_cpu_s": 6.0, "machine_busy_s": 38.0, "machine_total_s": 40.0}
    errors = {"connect_failures": 0, "error_events": 0, "not_completed": 0, "timeouts": 0, "broken_sessions": 0}
    return step_figures(plan, sessions, 0.01, 50 * 2**20, usage, log, errors, [])


def test_step_figures() -> None:
    step = _step()
    assert step["turns_per_s_offered"] == 50.0 and step["turns_per_s_achieved"] == 50.0
    assert step["gateway_cpu_percent"] == 15.0
    assert step["gateway_cpu_s_per_session_per_min"] == pytest.approx(0.09)  # 3 s / 100 / (1/3 min)
    assert step["gateway_cpu_ms_per_turn"] == 3.0
    assert step["gateway_cpu_ms_per_turn_above_idle"] == pytest.approx(2.8)  # (3 - 0.01 * 20) / 1000
    assert step["gateway_rss_per_session_bytes"] == round(10 * 2**20 / 100)
    assert step["turn_latency_ms"]["p50"] == 5.0 and step["turn_latency_ms"]["p99"] == 50.0
    assert step["machine_busy_percent"] == 95.0 and step["saturated"] is True
    assert step["loadgen_cpu_percent"] == 20.0 and step["pipeline_cpu_percent"] == 30.0
    assert step["other_processes_cpu_percent"] == 125.0  # (38 - 3 - 4 - 6) s over 20 s
    assert step["error_count"] == 0


def _record(end: float, offsets_ms: Mapping[str, float], turns: int = 1) -> UtteranceRecord:
    record = UtteranceRecord("hello", end_of_speech=end, turns=turns, dones=turns)
    record.first = {name: end + ms / 1000 for name, ms in offsets_ms.items()}
    return record


def _row() -> dict[str, Any]:
    whole = {"speech_stopped": 510, "transcript_completed": 900, "first_text": 1000, "first_audio": 1100,
             "response_done": 1500}
    records = [_record(100.0, whole), _record(200.0, {k: v + 100 for k, v in whole.items()}),
               _record(300.0, whole, turns=2)]
    return row_figures(500, records)


def test_row_figures_leave_out_a_split_utterance_and_judge_the_target() -> None:
    row = _row()
    assert row["measured"] == 2 and row["left_out"] == {"split_into_turns": 1, "timed_out": 0, "errors": 0}
    figures = row["ms_from_end_of_speech"]
    assert set(figures) == set(MILESTONES)
    assert figures["first_audio"]["p50"] == pytest.approx(1100.0)
    assert figures["first_audio"]["p95"] == pytest.approx(1200.0)
    assert row["speech_stopped_to_first_audio_ms"]["p50"] == pytest.approx(590.0)
    assert row["target"] == {"first_audio_p50_ms": pytest.approx(1100.0), "limit_ms": 600.0, "met": False,
                             "vad_silence_part_ms": 500}


def test_a_record_with_a_missing_milestone_is_not_clean() -> None:
    record = _record(1.0, {"speech_stopped": 500, "transcript_completed": 900})
    assert not record.clean
    assert row_figures(500, [record])["target"]["met"] is False


def test_tables_show_every_figure() -> None:
    results = {
        "meta": {"git": {"commit": "abc1234", "dirty": False}, "cpu_count": 2, "cpu_model": "cpu",
                 "load_start": [1.0, 0.5, 0.2], "load_end": [1.5, 0.7, 0.3], "duration_s": 12.0,
                 "command": "python -m bench.gateway"},
        "voice": {"setup": "s", "utterances": 3, "trailing_silence_ms": 1000, "rows": [_row()]},
        "capacity": {"setup": "s", "turns_per_s_per_session": 0.5, "seconds": 20.0, "deflate": True,
                     "open_over_s": 10.0, "steps": [_step(50), _step(100)]},
    }
    voice = "\n".join(voice_lines(results["voice"]))
    assert "1,100 / 1,200" in voice and "1 split into turns" in voice
    assert "first audio p50 1,100 ms, target <= 600 ms NOT met; 500 ms of it is the VAD's" in voice
    capacity = capacity_lines(results["capacity"])
    assert len([line for line in capacity if line.startswith("|")]) == 4  # header, rule, two steps
    cells = [cell.strip() for cell in capacity[-1].strip("|").split("|")]
    assert cells[:5] == ["100", "100", "50.0 / 50.0", "15.0", "0.0900"]
    assert cells[-6:] == ["0", "0", "20.0", "30.0", "125.0", "95.0 (saturated)"]
    summary = "\n".join(summary_lines(results))
    assert "commit abc1234; 2 cores" in summary and "100 text sessions at 0.5 turn/s" in summary


def test_fmt() -> None:
    assert (fmt(None), fmt(True), fmt(12345), fmt(1234.5678, 1)) == ("-", "yes", "12,345", "1,234.6")
