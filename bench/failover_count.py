"""The counting of ``bench.failover`` (pure logic): which of the utterances the
simulator sent are still in the input streams after a master died, how many
``response.done`` each has in the surviving responses streams, the rows per
REDIS_WAIT_REPLICAS setting, and their markdown table.

The simulator names its conversations ``sim-<run>-<NNNN>`` and, with
``--no-greeting``, their utterances ``u0000`` ... ``u<K-1>`` (simulator_svc/simulator.py),
so the ids it sent follow from its run id, which any surviving key name shows.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from simulator_svc.tracker import percentile

Utterance = tuple[str, str]

#: ``...:sim-<run>-<NNNN>:<kind>``: a simulator conversation's stream key.
_SIM_KEY = re.compile(r":sim-([0-9a-f]+)-\d{4}:[a-z]+$")


def run_ids(key_names: Iterable[str]) -> set[str]:
    """The simulator run ids that these conversation key names belong to."""
    return {m.group(1) for name in key_names if (m := _SIM_KEY.search(name))}


def sent_utterances(run_id: str, conversations: int, utterances: int) -> set[Utterance]:
    """Every (conversation, utterance) a ``--no-greeting`` simulator run sends."""
    return {(f"sim-{run_id}-{c:04d}", f"u{k:04d}") for c in range(conversations) for k in range(utterances)}


@dataclass(frozen=True)
class StreamCount:
    """One trial's utterances against what the surviving streams hold."""

    sent: int
    #: Sent (and acknowledged to the client) but no longer in its input stream.
    lost_by_redis: int
    #: Kept in the input stream and without a response.done in the responses stream.
    kept_unanswered: int
    #: response.done entries beyond the first of one utterance, in the responses streams.
    duplicate_dones: int
    #: response.done entries for utterances never sent (must be 0: a counting check).
    unknown_dones: int

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "lost_by_redis": self.lost_by_redis, "kept_unanswered": self.kept_unanswered,
                "duplicate_dones": self.duplicate_dones, "unknown_dones": self.unknown_dones}


def count_streams(sent: set[Utterance], kept: Iterable[Utterance], dones: Iterable[Utterance]) -> StreamCount:
    """``kept``: the utterance.text entries read from the input streams (an utterance
    may repeat there: a client's retried write); ``dones``: one item per response.done
    entry read from the responses streams."""
    kept_set = set(kept)
    done_counts = Counter(dones)
    return StreamCount(
        sent=len(sent),
        lost_by_redis=len(sent - kept_set),
        kept_unanswered=sum(1 for u in sent & kept_set if done_counts[u] == 0),
        duplicate_dones=sum(n - 1 for u, n in done_counts.items() if u in sent and n > 1),
        unknown_dones=sum(n for u, n in done_counts.items() if u not in sent),
    )


def row(wait_replicas: int, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one REDIS_WAIT_REPLICAS setting, summed (or the worst) over its trials.
    Each trial holds ``simulator`` (its summary), ``streams`` (``StreamCount.as_dict``),
    ``failover_s`` and ``lag`` (``max_bytes``, ``before_kill_bytes``)."""
    def total(part: str, name: str) -> int:
        return sum(int(t[part].get(name, 0)) for t in trials)

    p99s = [t["simulator"]["latency_ms"]["response_done"]["p99"] for t in trials]
    failovers = sorted(float(t["failover_s"]) for t in trials)
    return {
        "wait_replicas": wait_replicas,
        "trials": len(trials),
        "utterances": total("simulator", "utterances"),
        "answered": total("simulator", "responses_done") + total("simulator", "responses_failed"),
        "lost_by_redis": total("streams", "lost_by_redis"),
        "kept_unanswered": total("streams", "kept_unanswered"),
        "missing": total("simulator", "missing"),
        "duplicates_seen": total("simulator", "duplicates"),
        "duplicate_dones_in_streams": total("streams", "duplicate_dones"),
        "out_of_order": total("simulator", "out_of_order"),
        "done_p99_ms_worst": max((p for p in p99s if p is not None), default=None),
        "failover_s_p50": percentile(failovers, 50),
        "failover_s_max": failovers[-1] if failovers else None,
        "replication_lag_max_bytes": max((int(t["lag"]["max_bytes"]) for t in trials), default=0),
        "replication_lag_samples": sum(int(t["lag"].get("samples", 0)) for t in trials),
        "replication_lag_nonzero_samples": sum(int(t["lag"].get("nonzero_samples", 0)) for t in trials),
        "replication_lag_before_kill_max_bytes": max((int(t["lag"]["before_kill_bytes"]) for t in trials),
                                                     default=0),
    }


HEADER = ("| REDIS_WAIT_REPLICAS | trials | utterances | answered | lost by Redis | missing answers "
          "| duplicates (client saw) | duplicate dones in streams | out of order | done p99 ms (worst trial) "
          "| failover s p50 / max | replica lag max bytes (before kill) |")


def _f(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def render(figures: dict[str, Any]) -> str:
    """One markdown table row per REDIS_WAIT_REPLICAS setting."""
    load = figures["load"]
    lines = [f"{load['conversations']} conversations x {load['utterances']} utterances at {load['rate']}/s each; "
             f"one master SIGKILLed {load['kill_after_s']} s into each run (commit {figures['commit'][:10]})", "",
             HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for r in figures["rows"]:
        lines.append(
            f"| {r['wait_replicas']} | {r['trials']} | {r['utterances']} | {r['answered']} | {r['lost_by_redis']} "
            f"| {r['missing']} | {r['duplicates_seen']} | {r['duplicate_dones_in_streams']} | {r['out_of_order']} "
            f"| {_f(r['done_p99_ms_worst'])} | {_f(r['failover_s_p50'])} / {_f(r['failover_s_max'])} "
            f"| {r['replication_lag_max_bytes']} ({r['replication_lag_before_kill_max_bytes']}) |")
    return "\n".join(lines)
