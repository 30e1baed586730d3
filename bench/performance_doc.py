"""``docs/performance.md``: written by a full run only (not ``--quick``, not
``--only``; :func:`is_full`), stamped with the commit the run measured (its
:func:`git_stamp`, taken when the run starts), its plots copied into
``docs/perf/`` so the document does not depend on the (uncommitted) run
folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.tables import machine_line, sections

ROOT = Path(__file__).resolve().parents[1]
#: Written by a full run; its plots go into ``perf/`` beside it.
PERFORMANCE_DOC = ROOT / "docs" / "performance.md"


def git_stamp(root: Path = ROOT) -> dict[str, Any]:
    """The code a run measures: ``{"commit": short hash, "dirty": uncommitted
    changes to tracked files}`` (both None outside a git checkout). Taken when
    the run starts, before it writes anything."""
    def git(*args: str) -> str:
        return subprocess.run(("git", *args), cwd=root, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "source": "git"}
    return {"commit": commit, "dirty": dirty, "source": "git"}


def is_full(results: dict[str, Any]) -> bool:
    """Whether the results are of a full run (every section at full size): only those make docs/performance.md."""
    meta = results.get("meta") or {}
    return meta.get("mode") == "full" and not meta.get("only")


def _stamp(meta: dict[str, Any]) -> str:
    git = meta.get("git") or {}
    commit = git.get("commit")
    if not commit:
        return f"Measured commit: not recorded. Run started {meta.get('started_utc', '?')}."
    dirty = git.get("dirty")
    state = "tree state unknown" if dirty is None else "with uncommitted changes" if dirty else "clean tree"
    given = git.get("source") == "given"
    named = "; named when the report was re-rendered (the run did not record it)" if given else ""
    return f"Measured commit: `{commit}`, {state}{named}. Run started {meta.get('started_utc', '?')}."


def _shown(path: Path) -> str:
    """A run folder as the document names it: relative to the checkout when inside it."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.name


def performance_markdown(results: dict[str, Any], run_dir: Path, plot_links: dict[str, str]) -> str:
    """docs/performance.md: the commit stamp, the machine, the run's tables and its plots."""
    meta = results.get("meta", {})
    load = [" ".join(str(x) for x in meta.get(k) or []) for k in ("load_average_at_start", "load_average_at_end")]
    head = [
        "# Performance",
        "",
        "<!-- Written by `python -m bench` (a full run) from its results; re-render with "
        "`python -m bench.report RUN_FOLDER`. Edits by hand are overwritten. -->",
        "",
        _stamp(meta),
        "",
        machine_line(meta) + (f" Load average at start / end: {load[0]} / {load[1]}." if load[0] else ""),
        "",
        f"Raw figures: `{_shown(run_dir)}/results.json`; this document and its plots (in `perf/`) do not "
        "need that folder. Reproduce with `python -m bench` (a few minutes; `--quick` is the CI size and does "
        "not write this document).",
        "",
    ]
    return "\n".join(head + sections(results, plot_links))


def write_performance(run_dir: Path, results: dict[str, Any], doc: Path = PERFORMANCE_DOC) -> Path:
    """Write ``doc`` from a full run's results and copy the run's plots into ``perf/``
    beside it (stale plots there removed), linked relatively. Returns ``doc``."""
    perf = doc.parent / "perf"
    perf.mkdir(parents=True, exist_ok=True)
    names = [name for name in results.get("plots") or [] if (run_dir / name).is_file()]
    for stale in perf.glob("*.png"):
        if stale.name not in names:
            stale.unlink()
    for name in names:
        shutil.copyfile(run_dir / name, perf / name)
    rel = Path(os.path.relpath(perf, doc.parent)).as_posix()
    doc.write_text(performance_markdown(results, run_dir, {name: f"{rel}/{name}" for name in names}) + "\n")
    return doc
