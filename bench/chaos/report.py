"""The chaos run's figures (one JSON-able dict), the verdict, and the text printed.
Pure: everything here is computed from what the run gathered."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from bench.chaos.events import (
    CONFIRMED_AGAIN,
    FaultRecord,
    LogEvent,
    response_prefix,
    taken_from,
    takeover_delays,
    writes_after,
    zombie_windows,
)
from bench.chaos.outcome import Outcome, StreamsRead
from bench.chaos.plan import ChaosConfig
from simulator_svc.tracker import summarise

#: What appendfsync everysec may leave unwritten when its host (not just Redis) dies.
FSYNC_WINDOW_S = 1.0
#: The runtime's log line after it saw a new Redis run id.
REDIS_RESTARTED = "redis restarted (run id"


def _delays(delays: list[float]) -> dict[str, Any]:
    s = summarise(delays)
    return {"p50": s["p50"], "max": s["max"], "n": s["n"]}


def _pause_figures(pause: FaultRecord, events: Sequence[LogEvent], read: StreamsRead) -> dict[str, Any]:
    delays, missed = takeover_delays(pause, events)
    own = [e for e in events if e.worker_id == pause.target]
    prefix = response_prefix(own)
    taken = taken_from(pause, events)
    resumed = pause.ended_wall or pause.wall
    windows = zombie_windows(pause, events)
    return {
        "worker": pause.target,
        "paused_s": round(resumed - pause.wall, 2),
        "held": len(pause.claims),
        "taken_over": len(taken),
        "not_taken_over": len(missed),
        "takeover_s": _delays(delays),
        "response_prefix": prefix,
        # None: its response ids are unknown (no start-up line), so its writes cannot be told apart.
        "writes_after_continue": None if prefix is None else writes_after(read.response_writes, windows, prefix),
        # Taken back later by takeover (a peer holding them died): its own again from then on.
        "taken_back": sum(1 for _, until in windows.values() if until != math.inf),
        "confirmed_claims_again": any(e.msg.startswith(CONFIRMED_AGAIN) and e.ts >= resumed for e in own),
    }


def _redis_figures(crash: FaultRecord, outcome: Outcome, sent_ms: dict[tuple[str, str], float],
                   events: Sequence[LogEvent], server_log: str) -> dict[str, Any]:
    window = (crash.wall - FSYNC_WINDOW_S) * 1000, crash.wall * 1000
    return {
        "down_s": round((crash.ended_wall or crash.wall) - crash.wall, 2),
        "lost_by_redis": len(outcome.lost_by_redis),
        "lost_by_redis_sent_in_last_second": sum(1 for u in outcome.lost_by_redis
                                                 if window[0] <= sent_ms.get(u, 0) <= window[1]),
        # Redis answers before it writes while an fsync is slow (up to 2 s): such writes can go with a kill.
        "fsync_too_slow": "fsync is taking too long" in server_log,
        "workers_that_saw_the_restart": len({e.worker_id for e in events if e.msg.startswith(REDIS_RESTARTED)}),
    }


def build_figures(
    config: ChaosConfig,
    outcome: Outcome,
    read: StreamsRead,
    faults: Sequence[FaultRecord],
    events: Sequence[LogEvent],
    sent_ms: dict[tuple[str, str], float],
    server_log: str,
    elapsed_s: float,
    workers_started: int,
) -> dict[str, Any]:
    kills = [f for f in faults if f.kind == "kill"]
    kill_delays: list[float] = []
    not_taken = 0
    for kill in kills:
        delays, missed = takeover_delays(kill, events)
        kill_delays += delays
        not_taken += len(missed)
    pause = next((f for f in faults if f.kind == "stop"), None)
    crash = next((f for f in faults if f.kind == "redis"), None)
    t0 = faults[0].wall - faults[0].at_s if faults else 0.0
    return {
        "config": {k: v for k, v in asdict(config).items()},
        **outcome.figures(),
        "takeover_s": {**_delays(kill_delays), "kills": len(kills), "not_taken_over": not_taken},
        "pause": _pause_figures(pause, events, read) if pause else None,
        "redis_crash": _redis_figures(crash, outcome, sent_ms, events, server_log) if crash else None,
        "faults_injected": {kind: sum(1 for f in faults if f.kind == kind) for kind in ("kill", "redis", "stop")},
        "faults": [
            {"t_s": f.at_s, "kind": f.kind, "target": f.target, "held": len(f.claims),
             "replacement": f.replacement,
             "ended_t_s": None if f.ended_wall is None else round(f.ended_wall - t0, 2)}
            for f in faults
        ],
        "dead_letters": dict(read.dead_letters.most_common()),
        "workers_started": workers_started,
        "elapsed_s": round(elapsed_s, 1),
    }


def verdict(figures: dict[str, Any]) -> list[str]:
    """Why the run failed (empty: it passed)."""
    problems = []
    if figures["lost"]:
        problems.append(f"{figures['lost']} utterances lost")
    if figures["duplicates"]:
        problems.append(f"{figures['duplicates']} duplicate answers")
    missing = [kind for kind, n in figures["faults_injected"].items() if not n]
    if missing:
        problems.append(f"faults not injected: {', '.join(missing)}")
    pause = figures["pause"]
    if pause is not None and pause["writes_after_continue"] is None:
        problems.append("the paused worker's writes could not be told apart (no response-id prefix in its log)")
    elif pause is not None and pause["writes_after_continue"]:
        problems.append(f"the paused worker wrote {pause['writes_after_continue']} entries for conversations "
                        "taken from it")
    return problems


def render(figures: dict[str, Any]) -> str:
    f = figures
    lat, take = f["latency_ms"], f["takeover_s"]
    lines = [
        f"utterances     {f['utterances']}",
        f"done           {f['done']}",
        f"failed         {f['failed']}" + "".join(f"\n  {n:6d}  {why}" for why, n in f["failed_by_reason"].items()),
        f"lost           {f['lost']}   (kept by Redis, never answered: must be 0)",
        f"lost by Redis  {f['lost_by_redis']}   (the client's write was not kept: its client must send it again)",
        f"duplicates     {f['duplicates']}   (must be 0)",
        f"out of order   {f['out_of_order']}",
        f"conversations  {f['conversations']}, {f['conversations_clean']} with every utterance done once, in order"
        + "".join(f"\n  {cid}: {c}" for cid, c in list(f["conversations_not_clean"].items())[:10]),
        f"takeover       p50 {take['p50']} s, max {take['max']} s over {take['n']} conversations of "
        f"{take['kills']} killed workers ({take['not_taken_over']} not taken over)",
        f"done latency   p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms (send to Redis's write)",
    ]
    if f["pause"]:
        p = f["pause"]
        lines.append(
            f"pause          {p['worker']} stopped {p['paused_s']} s holding {p['held']} conversations; "
            f"{p['taken_over']} taken over (p50 {p['takeover_s']['p50']} s, max {p['takeover_s']['max']} s); "
            f"entries it wrote for them once continued (until it took one back: {p['taken_back']}): "
            f"{p['writes_after_continue']}; "
            f"claims confirmed again: {p['confirmed_claims_again']}")
    if f["redis_crash"]:
        r = f["redis_crash"]
        lines.append(
            f"redis crash    down {r['down_s']} s; writes lost by Redis {r['lost_by_redis']} "
            f"({r['lost_by_redis_sent_in_last_second']} sent in its last second); fsync too slow: "
            f"{r['fsync_too_slow']}; workers that saw the restart: {r['workers_that_saw_the_restart']}")
    if f["dead_letters"]:
        lines.append("dead letters" + "".join(f"\n  {n:6d}  {why}" for why, n in f["dead_letters"].items()))
    lines.append(f"faults         {', '.join(f'{k} x{n}' for k, n in f['faults_injected'].items())}; "
                 f"{f['workers_started']} workers started in all; {f['elapsed_s']} s")
    for fault in f["faults"]:
        what = {"kill": "SIGKILL", "redis": "SIGKILL + restart", "stop": "SIGSTOP + SIGCONT"}[fault["kind"]]
        extra = f", held {fault['held']}" if fault["kind"] != "redis" else ""
        extra += f", replaced by {fault['replacement']}" if fault["replacement"] else ""
        extra += f", until {fault['ended_t_s']} s" if fault["ended_t_s"] is not None else ""
        lines.append(f"  {fault['t_s']:7.2f} s  {what:<18} {fault['target']}{extra}")
    return "\n".join(lines)
