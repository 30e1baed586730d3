"""The issue's targets, checked against a run's results: throughput and CPU
against the redis-py baseline (the paired runs' ratios when there are any),
p99 at the top load, the per-hop latencies, and the live conversations one
worker holds."""

from __future__ import annotations

from typing import Any

from bench.results import BASE, OURS, latency_level, lookup, ratio


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with our value, the limit and whether it holds."""
    out: list[dict[str, Any]] = []
    ours_tp = lookup(results, "systems", OURS, "throughput")
    base_tp = lookup(results, "systems", BASE, "throughput")
    # The paired (alternating) runs give the fair ratio; the separate sections' ratio is kept beside it.
    paired = results.get("paired") or {}
    for key, metric, target, limit, at_least in (
        ("throughput_ratio_median", "answered_per_s", "throughput >= 0.8x redis-py baseline", 0.8, True),
        ("cpu_ratio_median", "system_cpu_s_per_1000",
         "CPU per 1,000 utterances (services + Redis) <= 1.5x baseline", 1.5, False),
    ):
        separate = ratio(lookup(ours_tp, metric), lookup(base_tp, metric))
        r = paired.get(key, separate)
        ok = r is not None and (r >= limit if at_least else r <= limit)
        out.append({"target": target, "value": r, "limit": limit, "ok": ok,
                    "paired": key in paired, "separate_sections": separate})
    rates = lookup(results, "meta", "sizes", "latency_rates") or []
    top = max(rates) if rates else None
    if top is not None:
        ours_top, base_top = latency_level(results, OURS, top), latency_level(results, BASE, top)
        r = ratio(lookup(ours_top, "latency_ms", "e2e", "p99"), lookup(base_top, "latency_ms", "e2e", "p99"))
        sustained = bool(lookup(ours_top, "sustained"))
        out.append({"target": f"e2e p99 at {top:g}/s <= 1.5x baseline, and sustained", "value": r, "limit": 1.5,
                    "ok": r is not None and r <= 1.5 and sustained, "sustained": sustained})
    mid_rate = 200.0 if 200.0 in rates else (sorted(rates)[len(rates) // 2] if rates else None)
    if mid_rate is not None:
        lvl = latency_level(results, OURS, mid_rate)
        for hop in ("hop1_ids", "hop2_ids"):
            p50 = lookup(lvl, "latency_ms", hop, "p50")
            p99 = lookup(lvl, "latency_ms", hop, "p99")
            out.append({"target": f"{hop[:4]} at {mid_rate:g}/s p50 <= 0.5 ms (ids, 1 ms resolution)",
                        "value": p50, "limit": 0.5, "ok": p50 is not None and p50 <= 0.5,
                        "mean": lookup(lvl, "latency_ms", hop, "mean")})
            out.append({"target": f"{hop[:4]} at {mid_rate:g}/s p99 <= 2 ms (ids, 1 ms resolution)",
                        "value": p99, "limit": 2.0, "ok": p99 is not None and p99 <= 2.0})
    steps = lookup(results, "capacity", "steps") or []
    fit = [s for s in steps if s.get("sessions", 0) > 0 and s.get("rss_per_session_bytes", 1e12) <= 50 * 1024]
    best = max((s["sessions"] for s in fit), default=0)
    top_step: dict[str, Any] = max(steps, key=lambda s: s.get("sessions", 0), default={})
    out.append({"target": ">= 2,000 live conversations per worker at <= 50 KB RSS each",
                "value": best, "limit": 2000, "ok": best >= 2000,
                "kb_per_session_at_largest": round(top_step.get("rss_per_session_bytes", 0) / 1024, 1)
                if top_step.get("rss_per_session_bytes") else None})
    return out
