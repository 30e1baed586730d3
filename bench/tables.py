"""The markdown tables of a run: the systems, then one section per phase
(throughput, latency, scaling, capacity, paired runs) and the targets, each
with our figures beside both baselines and the ratios. ``results.md`` is these
tables under a title; ``docs/performance.md`` puts its own head on them.

Ratios are ours / baseline_redis unless said otherwise (throughput: higher is
better; CPU and latency: lower is better).
"""

from __future__ import annotations

import math
from typing import Any

from bench.results import BASE, OURS, QUEUES, SYSTEMS, latency_level, lookup, ratio


def _f(v: Any, digits: int = 2) -> str:
    """A figure as a table shows it: thousands separated, ``-`` for none, yes / NO."""
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


def machine_line(meta: dict[str, Any]) -> str:
    """The machine and the command a run measured, in one paragraph."""
    memory = meta.get("memory_bytes")
    memory_s = f", {memory / 2**30:.0f} GiB memory" if isinstance(memory, int | float) else ""
    redis = f"Redis {lookup(meta, 'redis', 'version')} ({lookup(meta, 'redis', 'origin')})"
    return (f"Machine: {meta.get('cpu_count')} cores ({meta.get('cpu_model')}){memory_s}, "
            f"Python {meta.get('python')}, {redis}. "
            f"Command: `{meta.get('command')}`; run time {meta.get('duration_s')} s. Every process (services, "
            "baseline stages, Redis, the driver) shares these cores.")


def markdown(results: dict[str, Any], plot_links: dict[str, str] | None = None) -> str:
    """results.md: the run's tables; ``plot_links`` (plot file name -> link) puts each plot after its section."""
    meta = results.get("meta", {})
    head = [f"# Benchmark ({meta.get('mode', '?')} run, {meta.get('started_utc', '?')})", "", machine_line(meta), ""]
    return "\n".join(head + sections(results, plot_links or {}))


def sections(results: dict[str, Any], plot_links: dict[str, str]) -> list[str]:
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
        add(f"- **{name}**: {lookup(results, 'systems', name, 'description')}")
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
    base_tp = lookup(results, "systems", BASE, "throughput")
    rows: list[tuple[str, Any]] = [(n, lookup(results, "systems", n, "throughput")) for n in SYSTEMS]
    rows.insert(1, ("ours, default deltas (3 words)", lookup(results, "systems", OURS, "throughput_default_deltas")))
    for name, tp in rows:
        if not tp:
            add(f"| {name} | (failed) | | | | | | | | |")
            continue
        procs = ", ".join(f"{k} {_f(v, 3)}" for k, v in sorted(tp.get("cpu_s_per_1000", {}).items()))
        calls = tp.get("redis_calls_per_utterance", {}) if name != QUEUES else {}
        calls_s = ", ".join(f"{k} {_f(v)}" for k, v in sorted(calls.items()) if k not in ("info",))
        add(f"| {name} | {_f(tp.get('answered_per_s'), 0)} "
            f"| {_f(ratio(tp.get('answered_per_s'), lookup(base_tp, 'answered_per_s')))} "
            f"| {_f(tp.get('system_cpu_s_per_1000'), 3)} "
            f"| {_f(ratio(tp.get('system_cpu_s_per_1000'), lookup(base_tp, 'system_cpu_s_per_1000')))} "
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
        base_p99 = lookup(latency_level(results, BASE, rate), "latency_ms", "e2e", "p99")
        for name in SYSTEMS:
            lvl = latency_level(results, name, rate)
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
                f"| {_f(e2e['p99'])} | {_f(e2e['max'])} | {_f(ratio(e2e['p99'], base_p99))} "
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
        o = lookup(results, "scaling", OURS, w)
        b = lookup(results, "scaling", BASE, w)
        if o is None and b is None:
            continue
        add(f"| {w} | {_f(lookup(o, 'answered_per_s'), 0)} | {_f(lookup(b, 'answered_per_s'), 0)} "
            f"| {_f(ratio(lookup(o, 'answered_per_s'), lookup(b, 'answered_per_s')))} "
            f"| {_f(lookup(o, 'system_cpu_s_per_1000'), 3)} | {_sessions(lookup(o, 'sessions_per_worker'))} |")
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
    pairs = lookup(results, "paired", "pairs") or []
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
