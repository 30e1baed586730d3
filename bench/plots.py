"""The plots of a run (matplotlib, Agg backend):

- ``latency.png``: end-to-end p50 / p99 vs offered load, per system;
- ``scaling.png``: throughput vs workers per tier;
- ``capacity.png``: the conversation worker's RSS and the light load's p99 vs live sessions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.results import BASE, OURS, QUEUES, SYSTEMS, latency_level, lookup


def write_plots(out: Path, results: dict[str, Any]) -> list[str]:
    """Write the PNGs; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    rates = lookup(results, "meta", "sizes", "latency_rates") or []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, color in zip(SYSTEMS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        for q, style in (("p50", "--"), ("p99", "-")):
            xs, ys = [], []
            for rate in rates:
                v = lookup(latency_level(results, name, rate), "latency_ms", "e2e", q)
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
        ws = sorted(int(w) for w in (lookup(results, "scaling", name) or {}))
        vals = [lookup(results, "scaling", name, str(w), "answered_per_s") or 0 for w in ws]
        ax.bar([w + (i - 0.5) * width for w in ws], vals, width, color=color, label=name)
    qtp = lookup(results, "systems", QUEUES, "throughput", "answered_per_s")
    if qtp:
        ax.axhline(qtp, color="tab:green", linestyle=":", label=f"{QUEUES} (1 process)")
    ax.set_xticks([1, 2])
    ax.set_xlabel("workers per tier")
    ax.set_ylabel("answered utterances/s")
    ax.set_title(f"Throughput vs workers ({lookup(results, 'meta', 'cpu_count')} cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)
    written.append("scaling.png")

    steps = lookup(results, "capacity", "steps") or []
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
