"""The interruption benchmark's figures (bench.interrupt_figures): the engine stop
read from the streams, and a kind's figures and report from a tracker. Pure."""

from __future__ import annotations

from bench.interrupt_figures import TARGET_P95_MS, engine_stops, kind_figures, report_lines, stream_ms
from shared.models import Entry, ResponseCancel, ResponseDelta, ResponseDone, Timings, UtteranceText
from simulator_svc.tracker import Tracker


def _done(uid: str, status: str) -> ResponseDone:
    return ResponseDone(conversation_id="c1", utterance_id=uid, response_id=f"r{uid}", text="t", status=status,
                        timings=Timings(sent_ms=1, transcript_final_ms=2, done_ms=3))


def test_engine_stop_runs_from_the_cancel_entry_to_the_cancelled_done() -> None:
    inputs: list[tuple[str, Entry]] = [
        ("1000-0", UtteranceText(conversation_id="c1", utterance_id="u1", text="hi", sent_ms=1)),
        ("5000-0", ResponseCancel(conversation_id="c1", target_id="u1", sent_ms=4990)),
        ("9000-1", ResponseCancel(conversation_id="c1", target_id="u2", sent_ms=8990)),
        ("9500-0", ResponseCancel(conversation_id="c1", target_id="u9", sent_ms=9490)),  # no done yet
    ]
    responses: list[tuple[str, Entry]] = [
        ("4000-0", ResponseDelta(conversation_id="c1", utterance_id="u1", response_id="ru1", index=0, delta="x")),
        ("5012-3", _done("u1", "cancelled")),
        ("8999-0", _done("u2", "completed")),  # done before its cancel: the engine had finished
        ("9100-0", _done("u3", "completed")),  # never cancelled
    ]
    assert engine_stops(inputs, responses) == ([12.0], 1)
    assert stream_ms("1712345678901-7") == 1712345678901


def _tracker(latencies_ms: list[float]) -> Tracker:
    t = Tracker()
    for n, latency in enumerate(latencies_ms):
        t.sent(f"c{n}", "u0", 0, "q", 0.0)
        t.interrupting(f"c{n}", "u0", 100.0)
        t.audio(f"c{n}", "u0", 960, 100.0 + latency)
        t.done(f"c{n}", "u0", "partial", 100.0 + latency + 1, cancelled=True)
    t.sent("late", "u0", 0, "q", 0.0)
    t.interrupting("late", "u0", 100.0)
    t.done("late", "u0", "whole", 90.0)  # complete before the interruption
    return t


def test_kind_figures_and_the_target() -> None:
    figures = kind_figures(_tracker([float(ms) for ms in range(10, 210, 10)]), [3.0, 5.0], 1)
    assert (figures["trials"], figures["cancelled"], figures["completed_first"]) == (21, 20, 1)
    assert figures["cancel_latency_ms"] == {"p50": 100.0, "p95": 190.0, "max": 200.0, "n": 20}
    assert figures["ended_by"] == {"last_audio_delta": 20, "cancelled_done": 0}
    assert figures["engine_stop_ms"]["max"] == 5.0 and figures["engine_finished_first"] == 1
    assert figures["target_met"] and figures["target_p95_ms"] == TARGET_P95_MS
    assert "speech_started_ms" not in figures
    slow = kind_figures(_tracker([150.0] * 18 + [250.0, 300.0]), [], 0)
    assert slow["cancel_latency_ms"]["p95"] == 250.0 and not slow["target_met"]
    assert slow["engine_stop_ms"]["n"] == 0
    nothing = kind_figures(Tracker(), [], 0)
    assert nothing["trials"] == 0 and not nothing["target_met"]


def test_report_names_each_figure_and_the_verdict() -> None:
    speech = _tracker([40.0, 60.0])
    speech.interruption_heard("c0", "u0", 105.0)
    figures = {"trials_per_kind": 2, "engines": "transcriber local, conversation local",
               "speech_over_answer": kind_figures(speech, [2.0], 0),
               "response_cancel": kind_figures(_tracker([500.0, 500.0]), [4.0], 0)}
    text = "\n".join(report_lines(figures))
    assert "speech over an answer: 2 cancelled of 3 (1 answers complete first)" in text
    assert "cancel latency ms p50 / p95 / max: 40.0 / 60.0 / 60.0 (n=2)" in text
    assert "speech heard (speech_started) ms p50 / p95 / max: 5.0 / 5.0 / 5.0 (n=1)" in text
    assert "p95 <= 200 ms: yes" in text and "p95 <= 200 ms: NO" in text
    assert text.count("engine stop (cancel entry -> cancelled done, in the streams)") == 2
