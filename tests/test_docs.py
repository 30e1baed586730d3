"""The documents: the README stays a user's page (short, names the two
commands), every relative link of README.md and docs/*.md resolves, and
docs/performance.md is rendered from a run's results, stamped with the
measured commit (no benchmark run here: a small results dict)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench import performance_doc, report

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)


def _links(doc: Path) -> list[str]:
    """Relative link targets of a markdown file (code blocks skipped)."""
    text = _FENCE.sub("", doc.read_text())
    return [t for t in _LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = _FENCE.sub("", doc.read_text())
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in _HEADING.findall(text)}


def test_readme_is_short() -> None:
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_readme_names_the_two_commands() -> None:
    text = README.read_text()
    assert "./run.sh" in text
    assert "bash scripts/test.sh" in text


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in _links(doc):
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{doc.name}: links to nothing: {broken}"

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def _summary(**quantiles: float) -> dict[str, float]:
    return {"n": 10, **quantiles}


def _results(mode: str = "full", only: list[str] | None = None) -> dict[str, Any]:
    """The smallest results a report renders: one system, one latency level, one plot."""
    level = {
        "offered_per_s": 20.0, "achieved_send_per_s": 20.0, "sustained": True, "backlog_mid": 1, "backlog_end": 1,
        "latency_ms": {
            "e2e": _summary(p50=2.0, p95=2.5, p99=3.0, max=4.0),
            "hop1_ids": _summary(p50=1.0, p99=1.0, mean=0.7),
            "hop2_ids": _summary(p50=1.0, p99=2.0, mean=0.8),
            "hop1_client": _summary(p50=1.2, p99=2.1),
            "hop2_client": _summary(p50=0.8, p99=1.4),
        },
    }
    return {
        "meta": {
            "mode": mode, "only": only or [], "started_utc": "2026-01-02T03:04:05+00:00",
            "git": {"commit": "abc1234", "dirty": True, "source": "git"},
            "command": "python -m bench", "python": "3.11.7", "cpu_count": 2, "cpu_model": "Test CPU",
            "memory_bytes": 8 * 2**30, "duration_s": 1.5, "redis": {"version": "7.2.4", "origin": "test"},
            "sizes": {"throughput_utterances": 100, "conversations": 2, "max_in_flight": 10,
                      "latency_rates": [20.0], "latency_window_s": 1.0, "throughput_reps": 1},
            "load_average_at_start": [0.5, 0.4, 0.3], "load_average_at_end": [0.6, 0.5, 0.4],
        },
        "systems": {
            "ours": {
                "description": "the pipeline under test",
                "throughput": {"answered_per_s": 1234.0, "system_cpu_s_per_1000": 0.07, "missing": 0,
                               "duplicates": 0, "out_of_order": 0, "reps": [{"answered_per_s": 1234.0}]},
                "latency": [level],
            },
        },
        "targets": [],
        "plots": ["latency.png"],
        "errors": [],
    }


def test_performance_doc_is_stamped_and_self_contained(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "latency.png").write_bytes(PNG)
    doc = tmp_path / "docs" / "performance.md"
    (doc.parent / "perf").mkdir(parents=True)
    (doc.parent / "perf" / "stale.png").write_bytes(PNG)

    assert performance_doc.write_performance(run, _results(), doc) == doc

    text = doc.read_text()
    assert "Measured commit: `abc1234`, with uncommitted changes" in text
    assert "2026-01-02T03:04:05+00:00" in text
    assert "2 cores (Test CPU)" in text and "Redis 7.2.4" in text
    for heading in ("## Throughput", "## Latency"):
        assert heading in text
    assert "| 20 | ours | 20 | yes |" in text
    # The plot is copied beside the document and linked relatively; plots of an older run are gone.
    assert "(perf/latency.png)" in text
    assert (doc.parent / "perf" / "latency.png").read_bytes() == PNG
    assert not (doc.parent / "perf" / "stale.png").exists()


def test_only_full_runs_make_the_document() -> None:
    assert performance_doc.is_full(_results())
    assert not performance_doc.is_full(_results(mode="quick"))
    assert not performance_doc.is_full(_results(only=["ours x1"]))


def test_report_cli_rerenders_a_run_and_names_the_commit_it_was_given(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    results = _results()
    del results["meta"]["git"]  # a run from before the benchmark recorded its commit
    (run / "results.json").write_text(json.dumps(results))
    doc = tmp_path / "docs" / "performance.md"

    assert report.main([str(run), "--commit", "def5678", "--doc", str(doc)]) == 0

    assert "# Benchmark (full run" in (run / "results.md").read_text()
    assert json.loads((run / "results.json").read_text())["meta"]["git"]["commit"] == "def5678"
    text = doc.read_text()
    assert "Measured commit: `def5678`, clean tree; named when the report was re-rendered" in text
    for plot in ("latency.png", "scaling.png", "capacity.png"):
        assert (doc.parent / "perf" / plot).read_bytes()[:8] == PNG[:8]


def test_report_cli_leaves_the_document_alone_for_a_quick_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_results(mode="quick")))
    doc = tmp_path / "docs" / "performance.md"

    assert report.main([str(run), "--doc", str(doc)]) == 0

    assert (run / "results.md").is_file()
    assert not doc.exists()
