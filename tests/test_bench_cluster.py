"""bench.cluster's table and per-utterance costs (pure logic; the benchmark itself is run by hand)."""

from __future__ import annotations

from typing import Any

from bench.cluster_report import HEADER, costs, per, render


def _row(name: str = "one Redis") -> dict[str, Any]:
    return {
        "backend": name,
        "simulator": {"utterances": 200, "conversations": 10, "answered_per_s": 20.5, "missing": 0,
                      "duplicates": 1, "latency_ms": {"response_done": {"p50": 4.25, "p95": 9.0, "p99": 12.0}}},
        "redis": {"peak_used_memory_delta_bytes": 10 * 2048, "commands": 6000, "cpu_s": 0.4},
        "workers": {"cpu_s": 1.0, "peak_rss_delta_bytes": 0},
    }


def test_costs_divide_by_utterances_and_conversations() -> None:
    c = costs(_row())
    assert c["redis_kib_per_conversation"] == 2.0
    assert c["redis_commands_per_utterance"] == 30.0
    assert c["redis_cpu_ms_per_utterance"] == 2.0
    assert c["worker_cpu_ms_per_utterance"] == 5.0


def test_per_refuses_an_empty_run() -> None:
    assert per(5.0, 0) is None
    assert per(None, 3) is None


def test_render_has_one_row_per_backend_with_as_many_cells_as_the_header() -> None:
    text = render({"load": {"conversations": 10, "utterances": 20, "rate": 1.0},
                   "rows": [_row("one Redis"), _row("cluster")]})
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == HEADER
    assert len(table) == 4  # header, separator, two rows
    assert all(line.count("|") == HEADER.count("|") for line in table)
    assert "| one Redis | 200 | 20.5 | 4.2 | 9.0 | 12.0 | 0 | 1 | 2.0 | 30.0 | 2.0 | 5.0 |" in lines
    assert "no speed-up" in text
