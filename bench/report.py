"""The report of a run, written into its folder: ``results.json`` (every raw
figure, and the issue's targets checked: :mod:`bench.targets`), ``results.md``
(the tables: :mod:`bench.tables`) and PNG plots (:mod:`bench.plots`). A full
run (not ``--quick``, not ``--only``) also writes ``docs/performance.md``
(:mod:`bench.performance_doc`).

    python -m bench.report RUN_FOLDER [--commit HASH [--dirty]]

re-renders a run's report (and, for a full run, ``docs/performance.md``) from
its ``results.json``; ``--commit`` names the measured commit of a run that did
not record it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.performance_doc import PERFORMANCE_DOC, is_full, write_performance
from bench.plots import write_plots
from bench.tables import markdown
from bench.targets import targets


def write(out: Path, results: dict[str, Any]) -> None:
    """results.json, results.md and the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    try:
        results["plots"] = write_plots(out, results)
    except Exception as exc:  # a plot must not cost the figures
        results.setdefault("errors", []).append({"section": "plots", "error": repr(exc)})
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "results.md").write_text(markdown(results, {name: name for name in results.get("plots") or []}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Re-render a run's report (results.md, plots) from its results.json, and, for a full run, "
                    "docs/performance.md.",
    )
    parser.add_argument("run", type=Path, help="a run folder holding results.json")
    parser.add_argument("--commit", help="the measured commit, for a run that did not record it")
    parser.add_argument("--dirty", action="store_true", help="with --commit: the measured tree had uncommitted changes")
    parser.add_argument("--doc", type=Path, default=PERFORMANCE_DOC, help="where the performance document goes")
    args = parser.parse_args(argv)
    source = args.run / "results.json"
    if not source.is_file():
        print(f"error: {source} does not exist", file=sys.stderr)
        return 2
    results = json.loads(source.read_text())
    if args.commit:
        results.setdefault("meta", {})["git"] = {"commit": args.commit, "dirty": args.dirty, "source": "given"}
    run_errors = list(results.get("errors") or [])
    write(args.run, results)
    print(f"re-rendered {args.run}/results.md", file=sys.stderr)
    if not is_full(results):
        print("not a full run: docs/performance.md left as it is", file=sys.stderr)
        return 0
    if run_errors:
        print("the run had errors: docs/performance.md left as it is", file=sys.stderr)
        return 1
    print(f"wrote {write_performance(args.run, results, args.doc)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
