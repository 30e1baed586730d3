"""The benchmark command works and its output parses (``python -m bench --quick``).

No timed assertions: the figures depend on the machine; this only proves that
every phase ran, produced numbers, and wrote its report and plots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=220, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]

    results = json.loads((out / "results.json").read_text())
    assert results["errors"] == []
    assert results["meta"]["mode"] == "quick"

    systems = results["systems"]
    rates = results["meta"]["sizes"]["latency_rates"]
    for name in ("ours", "baseline_redis", "baseline_queues"):
        tp = systems[name]["throughput"]
        assert tp["answered"] == tp["sent"] > 0, name
        assert tp["duplicates"] == 0 and tp["out_of_order"] == 0, name
        assert _number(tp["answered_per_s"]) and _number(tp["system_cpu_s_per_1000"]), name
        levels = systems[name]["latency"]
        assert [lvl["offered_per_s"] for lvl in levels] == rates, name
        for lvl in levels:
            assert isinstance(lvl["sustained"], bool)
            for figure in ("e2e", "hop1_ids", "hop2_ids", "hop1_client", "hop2_client"):
                summary = lvl["latency_ms"][figure]
                assert summary["n"] > 0 and all(_number(summary[q]) for q in ("p50", "p95", "p99", "max")), (
                    name, lvl["offered_per_s"], figure)
    assert _number(systems["ours"]["throughput_default_deltas"]["answered_per_s"])
    # Our pipeline's Redis command counts per utterance are part of the fairness statement.
    assert systems["ours"]["throughput"]["redis_calls_per_utterance"]["xadd"] > 0

    for name in ("ours", "baseline_redis"):
        for workers in ("1", "2"):
            assert _number(results["scaling"][name][workers]["answered_per_s"]), (name, workers)

    paired = results["paired"]
    assert len(paired["pairs"]) == results["meta"]["sizes"]["throughput_reps"]
    for pair in paired["pairs"]:
        assert pair["ours"]["missing"] == 0 and pair["ours"]["duplicates"] == 0 and pair["ours"]["out_of_order"] == 0
        assert pair["baseline_redis"]["missing"] == 0
    assert _number(paired["throughput_ratio_median"]) and _number(paired["cpu_ratio_median"])

    capacity = results["capacity"]
    steps = capacity["steps"]
    assert steps[0]["sessions"] == 0 and len(steps) >= 3
    for step in steps[1:]:
        assert step["sessions"] > 0 and _number(step["rss_bytes"]) and _number(step["rss_per_session_bytes"])
        assert _number(step["e2e_ms"]["p99"])

    assert {t["target"] for t in results["targets"]} and all("ok" in t for t in results["targets"])

    table = (out / "results.md").read_text()
    for heading in ("## Throughput", "## Latency", "## Scaling", "## Paired", "## Capacity", "## Targets"):
        assert heading in table
    for png in ("latency.png", "scaling.png", "capacity.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_interrupt_bench_prints_every_figure(tmp_path: Path) -> None:
    """``python -m bench.interrupt --quick`` with the deterministic engines (echo streaming
    slowly): both kinds of interruption measured, their figures printed and written."""
    out = tmp_path / "interrupt.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ECHO_DELTA_DELAY_MS": "100", "ECHO_WORDS_PER_DELTA": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.interrupt", "--quick", "--engines", "deterministic", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=220, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    figures = json.loads(out.read_text())
    assert figures["trials_per_kind"] == 3
    for kind in ("speech_over_answer", "response_cancel"):
        k = figures[kind]
        assert k["trials"] == 3 and k["cancelled"] + k["completed_first"] == 3 and k["late_deltas"] == 0, kind
        for figure in ("cancel_latency_ms", "engine_stop_ms"):
            assert k[figure]["n"] > 0 and all(_number(k[figure][q]) for q in ("p50", "p95", "max")), (kind, figure)
        assert isinstance(k["target_met"], bool)
    assert _number(figures["speech_over_answer"]["speech_started_ms"]["p95"])
    for line in ("speech over an answer: ", "response.cancel: ", "cancel latency ms p50 / p95 / max: ",
                 "p95 <= 200 ms: ", "speech heard (speech_started)", "engine stop (cancel entry -> cancelled done"):
        assert line in proc.stdout, line


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_gateway_bench_prints_the_capacity_figures(tmp_path: Path) -> None:
    """``python -m bench.gateway --quick --only capacity``: part 2 with the deterministic
    engines, a few sessions for a few seconds. The figures are there; their values are the
    machine's (only the errors, which are not timings, must be none)."""
    out = tmp_path / "gateway.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "--quick", "--only", "capacity", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=220, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    printed = proc.stdout
    for heading in ("Part 2: text sessions on one gateway process", "| sessions |", "CPU s/session/min",
                    "turn ms p50 / p99", "Summary", "cores", "load average", "commit "):
        assert heading in printed, heading
    assert "Part 1" not in printed

    results = json.loads(out.read_text())
    assert "voice" not in results and results["meta"]["mode"] == "quick"
    steps = results["capacity"]["steps"]
    assert [s["sessions"] for s in steps] == [2, 5]
    table_rows = [line for line in printed.splitlines() if line.startswith("|") and not line.startswith("|-")]
    assert len(table_rows) == 1 + len(steps)
    for step in steps:
        assert step["sessions_open"] == step["sessions"]
        assert step["errors"] == {"connect_failures": 0, "error_events": 0, "not_completed": 0, "timeouts": 0,
                                  "broken_sessions": 0}
        assert step["turns_completed"] > 0
        for figure in ("turns_per_s_achieved", "gateway_cpu_percent", "gateway_cpu_s_per_session_per_min",
                       "gateway_cpu_ms_per_turn", "gateway_idle_cpu_percent", "gateway_rss_bytes",
                       "gateway_rss_per_session_bytes", "loadgen_cpu_percent", "pipeline_cpu_percent",
                       "other_processes_cpu_percent", "machine_busy_percent"):
            assert _number(step[figure]), figure
        assert all(_number(step["turn_latency_ms"][q]) for q in ("p50", "p99"))
