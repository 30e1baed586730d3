"""The report: ``results.json`` (every raw figure), ``results.md`` (the tables,
our figures beside both baselines with the ratios, and the issue's targets
checked) and PNG plots (matplotlib, Agg backend):

- ``latency.png``: end-to-end p50 / p99 vs offered load, per system;
- ``scaling.png``: throughput vs workers per tier;
- ``capacity.png``: the conversation worker's RSS and the light load's p99 vs live sessions.

A full run (not ``--quick``, not ``--only``) also writes ``docs/performance.md``:
the same tables, stamped with the measured commit, and the plots copied into
``docs/perf/`` so the document does not depend on the (uncommitted) run folder.

    python -m bench.report RUN_FOLDER [--commit HASH [--dirty]]

re-renders a run's report (and, for a full run, ``docs/performance.md``) from
its ``results.json``; ``--commit`` names the measured commit of a run that did
not record it.

Ratios are ours / baseline_redis unless said otherwise (throughput: higher is
better; CPU and latency: lower is better).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Written by a full run; its plots go into ``perf/`` beside it.
PERFORMANCE_DOC = ROOT / "docs" / "performance.md"

OURS = "ours"
BASE = "baseline_redis"
QUEUES = "baseline_queues"
SYSTEMS = (OURS, BASE, QUEUES)


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _sessions(owned: Any) -> str:
    """``{group: {consumer: n}}`` as ``group n1 + n2``."""
    if not isinstance(owned, dict) or not owned:
        return "-"
    return "; ".join(f"{g} " + " + ".join(str(n) for n in sorted(c.values(), reverse=True))
                     for g, c in owned.items())


def _cpu_pct(pct: Any) -> str:
    if not isinstance(pct, dict):
        return "-"
    return " / ".join(_f(pct.get(k), 0) for k in ("conversation-0", "transcriber-0", "redis-server"))


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return float(a) / float(b)


def _get(d: Any, *path: str | int) -> Any:
    for p in path:
        if isinstance(d, dict) and p in d:
            d = d[p]
        elif isinstance(d, list) and isinstance(p, int) and 0 <= p < len(d):
            d = d[p]
        else:
            return None
    return d


def _level(results: dict[str, Any], system: str, rate: float) -> dict[str, Any] | None:
    for lvl in _get(results, "systems", system, "latency") or []:
        if lvl.get("offered_per_s") == rate:
            return dict(lvl)
    return None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with our value, the limit and whether it holds."""
    out: list[dict[str, Any]] = []
    ours_tp = _get(results, "systems", OURS, "throughput")
    base_tp = _get(results, "systems", BASE, "throughput")
    # The paired (alternating) runs give the fair ratio; the separate sections' ratio is kept beside it.
    paired = results.get("paired") or {}
    for key, metric, target, limit, at_least in (
        ("throughput_ratio_median", "answered_per_s", "throughput >= 0.8x redis-py baseline", 0.8, True),
        ("cpu_ratio_median", "system_cpu_s_per_1000",
         "CPU per 1,000 utterances (services + Redis) <= 1.5x baseline", 1.5, False),
    ):
        separate = _ratio(_get(ours_tp, metric), _get(base_tp, metric))
        r = paired.get(key, separate)
        ok = r is not None and (r >= limit if at_least else r <= limit)
        out.append({"target": target, "value": r, "limit": limit, "ok": ok,
                    "paired": key in paired, "separate_sections": separate})
    rates = _get(results, "meta", "sizes", "latency_rates") or []
    top = max(rates) if rates else None
    if top is not None:
        ours_top, base_top = _level(results, OURS, top), _level(results, BASE, top)
        r = _ratio(_get(ours_top, "latency_ms", "e2e", "p99"), _get(base_top, "latency_ms", "e2e", "p99"))
        sustained = bool(_get(ours_top, "sustained"))
        out.append({"target": f"e2e p99 at {top:g}/s <= 1.5x baseline, and sustained", "value": r, "limit": 1.5,
                    "ok": r is not None and r <= 1.5 and sustained, "sustained": sustained})
    mid_rate = 200.0 if 200.0 in rates else (sorted(rates)[len(rates) // 2] if rates else None)
    if mid_rate is not None:
        lvl = _level(results, OURS, mid_rate)
        for hop in ("hop1_ids", "hop2_ids"):
            p50 = _get(lvl, "latency_ms", hop, "p50")
            p99 = _get(lvl, "latency_ms", hop, "p99")
            out.append({"target": f"{hop[:4]} at {mid_rate:g}/s p50 <= 0.5 ms (ids, 1 ms resolution)",
                        "value": p50, "limit": 0.5, "ok": p50 is not None and p50 <= 0.5,
                        "mean": _get(lvl, "latency_ms", hop, "mean")})
            out.append({"target": f"{hop[:4]} at {mid_rate:g}/s p99 <= 2 ms (ids, 1 ms resolution)",
                        "value": p99, "limit": 2.0, "ok": p99 is not None and p99 <= 2.0})
    steps = _get(results, "capacity", "steps") or []
    fit = [s for s in steps if s.get("sessions", 0) > 0 and s.get("rss_per_session_bytes", 1e12) <= 50 * 1024]
    best = max((s["sessions"] for s in fit), default=0)
    top_step: dict[str, Any] = max(steps, key=lambda s: s.get("sessions", 0), default={})
    out.append({"target": ">= 2,000 live conversations per worker at <= 50 KB RSS each",
                "value": best, "limit": 2000, "ok": best >= 2000,
                "kb_per_session_at_largest": round(top_step.get("rss_per_session_bytes", 0) / 1024, 1)
                if top_step.get("rss_per_session_bytes") else None})
    return out


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


def _machine(meta: dict[str, Any]) -> str:
    memory = meta.get("memory_bytes")
    memory_s = f", {memory / 2**30:.0f} GiB memory" if isinstance(memory, int | float) else ""
    return (f"Machine: {meta.get('cpu_count')} cores ({meta.get('cpu_model')}){memory_s}, "
            f"Python {meta.get('python')}, Redis {_get(meta, 'redis', 'version')} ({_get(meta, 'redis', 'origin')}). "
            f"Command: `{meta.get('command')}`; run time {meta.get('duration_s')} s. Every process (services, "
            "baseline stages, Redis, the driver) shares these cores.")


def markdown(results: dict[str, Any], plot_links: dict[str, str] | None = None) -> str:
    """results.md: the run's tables; ``plot_links`` (plot file name -> link) puts each plot after its section."""
    meta = results.get("meta", {})
    head = [f"# Benchmark ({meta.get('mode', '?')} run, {meta.get('started_utc', '?')})", "", _machine(meta), ""]
    return "\n".join(head + _body(results, plot_links or {}))


def _body(results: dict[str, Any], plot_links: dict[str, str]) -> list[str]:
    """Everything below the title and the machine line: systems, then one section per phase."""
    meta = results.get("meta", {})
    sizes = meta.get("sizes", {})
    lines: list[str] = []
    add = lines.append

    def plot(name: str, alt: str) -> None:
        if name in plot_links:
            add(f"![{alt}]({plot_links[name]})")
            add("")

    add("Systems (what each does per utterance):")
    add("")
    for name in SYSTEMS:
        add(f"- **{name}**: {_get(results, 'systems', name, 'description')}")
    add("")

    # --- throughput
    add(f"## Throughput: {_f(sizes.get('throughput_utterances'))} utterances over {sizes.get('conversations')} "
        f"conversations, at most {_f(sizes.get('max_in_flight'))} in flight (closed loop)")
    add("")
    add("CPU = user + system seconds of each process during the phase, per 1,000 answered utterances. "
        "*system* = the pipeline's processes + Redis (the driver excluded); the queue baseline's stages run in "
        "the driver's process, their CPU is summed around their own work.")
    add("")
    add(f"Each figure is the median of {sizes.get('throughput_reps', 1)} consecutive runs (all runs in the JSON, "
        "`reps`); *other CPU* = what the rest of the machine used meanwhile (a shared machine disturbs the figures).")
    add("")
    add("| system | answered/s | x baseline_redis | system CPU s/1000 | x baseline_redis | CPU s/1000 by process "
        "| Redis calls per utterance | missing / dup / out of order | answered/s of each run | other CPU s |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    base_tp = _get(results, "systems", BASE, "throughput")
    rows: list[tuple[str, Any]] = [(n, _get(results, "systems", n, "throughput")) for n in SYSTEMS]
    rows.insert(1, ("ours, default deltas (3 words)", _get(results, "systems", OURS, "throughput_default_deltas")))
    for name, tp in rows:
        if not tp:
            add(f"| {name} | (failed) | | | | | | | | |")
            continue
        procs = ", ".join(f"{k} {_f(v, 3)}" for k, v in sorted(tp.get("cpu_s_per_1000", {}).items()))
        calls = tp.get("redis_calls_per_utterance", {}) if name != QUEUES else {}
        calls_s = ", ".join(f"{k} {_f(v)}" for k, v in sorted(calls.items()) if k not in ("info",))
        add(f"| {name} | {_f(tp.get('answered_per_s'), 0)} "
            f"| {_f(_ratio(tp.get('answered_per_s'), _get(base_tp, 'answered_per_s')))} "
            f"| {_f(tp.get('system_cpu_s_per_1000'), 3)} "
            f"| {_f(_ratio(tp.get('system_cpu_s_per_1000'), _get(base_tp, 'system_cpu_s_per_1000')))} "
            f"| {procs} | {calls_s or '-'} "
            f"| {_f(tp.get('missing'))} / {_f(tp.get('duplicates'))} / {_f(tp.get('out_of_order'))} "
            f"| {', '.join(_f(r.get('answered_per_s'), 0) for r in tp.get('reps', []))} "
            f"| {_f(tp.get('other_processes_cpu_s'))} |")
    add("")

    # --- latency
    add(f"## Latency under open-loop load ({_f(sizes.get('latency_window_s'), 0)} s per level, spread evenly "
        f"over {sizes.get('conversations')} conversations)")
    add("")
    add("e2e = client clock, sent -> `response.done` (`out`) seen. hop N (ids) = output entry id time - input "
        "entry id time of that hop: **1 ms resolution** (stream ids carry whole ms; the mean is unbiased). "
        "hop N (client) = when the client saw each output (perf_counter, includes the client's read). "
        "Sustained = send rate within 5% of offered, backlog not growing (mid vs end of window), all answered.")
    add("")
    add("| offered/s | system | achieved/s | sustained | backlog mid/end | e2e p50 | p95 | p99 | max "
        "| e2e p99 x base | hop1 ids p50/p99/mean | hop2 ids p50/p99/mean | hop1 client p50/p99 "
        "| hop2 client p50/p99 |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for rate in sizes.get("latency_rates", []):
        base_p99 = _get(_level(results, BASE, rate), "latency_ms", "e2e", "p99")
        for name in SYSTEMS:
            lvl = _level(results, name, rate)
            if lvl is None:
                add(f"| {rate:g} | {name} | (failed) |||||||||||")
                continue
            lat = lvl["latency_ms"]
            e2e = lat["e2e"]

            def hop(key: str, mean: bool = True, lat: dict[str, Any] = lat) -> str:
                h = lat[key]
                s = f"{_f(h['p50'])} / {_f(h['p99'])}"
                return s + (f" / {_f(h['mean'])}" if mean else "")

            add(f"| {rate:g} | {name} | {_f(lvl['achieved_send_per_s'], 0)} | {_f(lvl['sustained'])} "
                f"| {lvl['backlog_mid']} / {lvl['backlog_end']} | {_f(e2e['p50'])} | {_f(e2e['p95'])} "
                f"| {_f(e2e['p99'])} | {_f(e2e['max'])} | {_f(_ratio(e2e['p99'], base_p99))} "
                f"| {hop('hop1_ids')} | {hop('hop2_ids')} | {hop('hop1_client', False)} "
                f"| {hop('hop2_client', False)} |")
    add("")
    plot("latency.png", "end-to-end latency vs offered load")

    # --- scaling
    cores = meta.get("cpu_count")
    add(f"## Scaling: throughput vs workers per tier ({cores} cores: every worker, Redis and the driver "
        "share them, so a second worker per tier can only help as far as a core is idle)")
    add("")
    add("| workers per tier | ours answered/s | baseline_redis answered/s | x baseline | ours system CPU s/1000 "
        "| sessions per worker (ours) |")
    add("|---|---|---|---|---|---|")
    for w in ("1", "2"):
        o = _get(results, "scaling", OURS, w)
        b = _get(results, "scaling", BASE, w)
        if o is None and b is None:
            continue
        add(f"| {w} | {_f(_get(o, 'answered_per_s'), 0)} | {_f(_get(b, 'answered_per_s'), 0)} "
            f"| {_f(_ratio(_get(o, 'answered_per_s'), _get(b, 'answered_per_s')))} "
            f"| {_f(_get(o, 'system_cpu_s_per_1000'), 3)} | {_sessions(_get(o, 'sessions_per_worker'))} |")
    add("")
    plot("scaling.png", "throughput vs workers per tier")

    # --- capacity
    cap = results.get("capacity") or {}
    add(f"## Capacity: live conversations on one conversation worker (light load {_f(cap.get('light_load_per_s'), 0)}"
        f" utterances/s over {cap.get('probes')} probe conversations, the rest idle but open)")
    add("")
    add("RSS/session = (RSS - RSS with no conversation) / live conversations; marginal = slope from the first "
        f"loaded step. p99 doubled at: {_f(cap.get('p99_doubled_at')) if cap.get('p99_doubled_at') else 'never'}"
        f" (reference p99 {_f(cap.get('reference_p99_ms'))} ms).")
    add("")
    add("| live conversations | worker RSS MB | RSS/session KB | marginal KB | transcriber RSS MB | e2e p50 | p99 "
        "| max | sustained | CPU % worker / transcriber / Redis | XREADGROUP µs per call (calls/s) |")
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in cap.get("steps", []):
        e2e = s.get("e2e_ms") or {}
        add(f"| {_f(s['sessions'])} | {_f(s['rss_bytes'] / 2**20, 1)} "
            f"| {_f(s.get('rss_per_session_bytes', 0) / 1024 if 'rss_per_session_bytes' in s else None, 1)} "
            f"| {_f(s['marginal_rss_per_session_bytes'] / 1024 if 'marginal_rss_per_session_bytes' in s else None, 1)}"
            f" | {_f(s['transcriber_rss_bytes'] / 2**20, 1)} | {_f(e2e.get('p50'))} | {_f(e2e.get('p99'))} "
            f"| {_f(e2e.get('max'))} | {_f(s.get('sustained'))} | {_cpu_pct(s.get('cpu_percent'))} "
            f"| {_f(s.get('xreadgroup_usec_per_call'), 0)} ({_f(s.get('xreadgroup_calls_per_s'), 0)}) |")
    add("")
    plot("capacity.png", "conversation worker RSS and p99 vs live conversations")

    # --- paired
    pairs = _get(results, "paired", "pairs") or []
    if pairs:
        add("## Paired throughput: ours and baseline_redis in alternating runs")
        add("")
        add("Both systems up at once, runs alternating baseline, ours, baseline, ours, ...: each ratio compares "
            "two runs a few seconds apart (this shared machine's speed drifts by tens of percent between minutes).")
        add("")
        add("| pair | baseline_redis /s | ours /s | throughput ratio | baseline CPU s/1000 | ours CPU s/1000 "
            "| CPU ratio | ours CPU s/1000 by process |")
        add("|---|---|---|---|---|---|---|---|")
        for i, pr in enumerate(pairs, 1):
            b, o = pr["baseline_redis"], pr["ours"]
            procs = ", ".join(f"{k} {v}" for k, v in sorted(o.get("cpu_s_per_1000", {}).items()))
            add(f"| {i} | {_f(b['answered_per_s'], 0)} | {_f(o['answered_per_s'], 0)} | {_f(pr['throughput_ratio'])} "
                f"| {_f(b['system_cpu_s_per_1000'], 3)} | {_f(o['system_cpu_s_per_1000'], 3)} "
                f"| {_f(pr['cpu_ratio'])} | {procs} |")
        add(f"| median | | | {_f(results['paired'].get('throughput_ratio_median'))} | | "
            f"| {_f(results['paired'].get('cpu_ratio_median'))} | |")
        add("")

    # --- targets
    add("## Targets (issue #7)")
    add("")
    add("| target | value | limit | met |")
    add("|---|---|---|---|")
    for t in results.get("targets", []):
        extra = ""
        if t.get("mean") is not None:
            extra = f" (mean {_f(t['mean'])} ms)"
        if t.get("paired"):
            extra = f" (median of paired runs; {_f(t.get('separate_sections'))} from the separate sections)"
        if t.get("kb_per_session_at_largest") is not None:
            extra = f" ({_f(t['kb_per_session_at_largest'], 1)} KB/session at the largest step)"
        add(f"| {t['target']} | {_f(t['value'])}{extra} | {_f(t['limit'])} | {_f(t['ok'])} |")
    add("")
    if results.get("errors"):
        add("## Errors")
        add("")
        for e in results["errors"]:
            add(f"- {e['section']}: `{e['error']}`")
        add("")
    return lines


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
        _machine(meta) + (f" Load average at start / end: {load[0]} / {load[1]}." if load[0] else ""),
        "",
        f"Raw figures: `{_shown(run_dir)}/results.json`; this document and its plots (in `perf/`) do not "
        "need that folder. Reproduce with `python -m bench` (a few minutes; `--quick` is the CI size and does "
        "not write this document).",
        "",
    ]
    return "\n".join(head + _body(results, plot_links))


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


def plots(out: Path, results: dict[str, Any]) -> list[str]:
    """Write the PNGs; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    rates = _get(results, "meta", "sizes", "latency_rates") or []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, color in zip(SYSTEMS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        for q, style in (("p50", "--"), ("p99", "-")):
            xs, ys = [], []
            for rate in rates:
                v = _get(_level(results, name, rate), "latency_ms", "e2e", q)
                if v is not None:
                    xs.append(rate)
                    ys.append(max(float(v), 0.01))
            if xs:
                ax.plot(xs, ys, style, marker="o", color=color, label=f"{name} {q}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (utterances/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("Latency vs offered load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=3)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    written.append("latency.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.35
    for i, (name, color) in enumerate(((OURS, "tab:blue"), (BASE, "tab:orange"))):
        ws = sorted(int(w) for w in (_get(results, "scaling", name) or {}))
        vals = [_get(results, "scaling", name, str(w), "answered_per_s") or 0 for w in ws]
        ax.bar([w + (i - 0.5) * width for w in ws], vals, width, color=color, label=name)
    qtp = _get(results, "systems", QUEUES, "throughput", "answered_per_s")
    if qtp:
        ax.axhline(qtp, color="tab:green", linestyle=":", label=f"{QUEUES} (1 process)")
    ax.set_xticks([1, 2])
    ax.set_xlabel("workers per tier")
    ax.set_ylabel("answered utterances/s")
    ax.set_title(f"Throughput vs workers ({_get(results, 'meta', 'cpu_count')} cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)
    written.append("scaling.png")

    steps = _get(results, "capacity", "steps") or []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if steps:
        xs = [s["sessions"] for s in steps]
        ax.plot(xs, [s["rss_bytes"] / 2**20 for s in steps], marker="o", color="tab:blue", label="worker RSS")
        ax.set_xlabel("live conversations on one conversation worker")
        ax.set_ylabel("RSS (MB)", color="tab:blue")
        ax2 = ax.twinx()
        lat = [(s["sessions"], s["e2e_ms"]["p99"]) for s in steps if s.get("e2e_ms", {}).get("p99") is not None]
        if lat:
            ax2.plot([x for x, _ in lat], [y for _, y in lat], marker="s", color="tab:red", label="light-load p99")
        ax2.set_ylabel("e2e p99 (ms)", color="tab:red")
        fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88), fontsize=8)
    ax.set_title("Conversation worker RSS and p99 vs live conversations")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "capacity.png", dpi=110)
    plt.close(fig)
    written.append("capacity.png")
    return written


def write(out: Path, results: dict[str, Any]) -> None:
    """results.json, results.md and the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    try:
        results["plots"] = plots(out, results)
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
