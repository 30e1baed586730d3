"""The figures of ``bench.cluster`` as a markdown table and per-utterance costs (pure logic).

One row per backend: what the simulator measured (answered/s, response.done
latency, missing, duplicates) and what the Redis masters and the workers cost,
divided by the utterances or conversations of the run.
"""

from __future__ import annotations

from typing import Any

NOTE = ("The machine has 2 cores shared by Redis (1 or 6 nodes), 3 workers and the simulator: "
        "no speed-up from the cluster is expected; these rows measure its overhead.")

HEADER = ("| backend | utterances | answered/s | done p50 ms | done p95 ms | done p99 ms | missing | duplicates "
          "| Redis KiB/conv (peak) | Redis cmds/utt | Redis CPU ms/utt | worker CPU ms/utt |")


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def per(total: float | None, count: int) -> float | None:
    """``total / count``, or None when either is unknown or the count is 0."""
    if total is None or count <= 0:
        return None
    return total / count


def costs(row: dict[str, Any]) -> dict[str, float | None]:
    """The per-utterance and per-conversation costs of one backend's raw figures."""
    sim = row["simulator"]
    utterances = int(sim.get("utterances", 0))
    conversations = int(sim.get("conversations", 0))
    redis, workers = row["redis"], row["workers"]
    return {
        "redis_kib_per_conversation": per(redis["peak_used_memory_delta_bytes"] / 1024, conversations),
        "redis_commands_per_utterance": per(redis["commands"], utterances),
        "redis_cpu_ms_per_utterance": per(redis["cpu_s"] * 1000, utterances),
        "worker_cpu_ms_per_utterance": per(workers["cpu_s"] * 1000, utterances),
        "worker_rss_kib_per_conversation": per(workers["peak_rss_delta_bytes"] / 1024, conversations),
    }


def table_row(row: dict[str, Any]) -> str:
    sim = row["simulator"]
    done = sim.get("latency_ms", {}).get("response_done", {})
    c = costs(row)
    cells = [row["backend"], sim.get("utterances"), sim.get("answered_per_s"),
             done.get("p50"), done.get("p95"), done.get("p99"), sim.get("missing"), sim.get("duplicates"),
             c["redis_kib_per_conversation"], c["redis_commands_per_utterance"],
             c["redis_cpu_ms_per_utterance"], c["worker_cpu_ms_per_utterance"]]
    return "| " + " | ".join(_f(v) for v in cells) + " |"


def render(figures: dict[str, Any]) -> str:
    load = figures["load"]
    lines = [
        f"Offered load: {load['conversations']} conversations x {load['utterances']} utterances at "
        f"{load['rate']}/s per conversation (1 transcriber + 2 conversation workers, simulated/echo engines).",
        "",
        HEADER,
        "|" + "---|" * HEADER.count(" | ") + "---|",
        *(table_row(row) for row in figures["rows"]),
        "",
        NOTE,
        "Redis figures are summed over the masters (replicas not counted); memory is the peak of "
        "used_memory during the run minus before it, while the conversations are live (their keys "
        "expire only after they end). Worker CPU is the 3 workers' utime+stime from /proc.",
    ]
    return "\n".join(lines)
