"""The gateway benchmark's printed figures: its two tables and the closing
summary, made from the results (pure: strings from dicts)."""

from __future__ import annotations

from typing import Any

VOICE_COLUMNS = (
    ("speech_stopped", "speech_stopped"),
    ("transcript_completed", "transcript completed"),
    ("first_audio", "first audio delta"),
    ("first_text", "first text delta"),
    ("response_done", "response.done"),
)


def fmt(value: Any, digits: int = 0) -> str:
    """A figure as the tables show it: thousands separated, ``-`` for none, yes / NO."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)]


def target_line(row: dict[str, Any]) -> str:
    t = row["target"]
    p50 = t["first_audio_p50_ms"]
    if p50 is None:
        return f"VAD silence {row['silence_duration_ms']} ms: no utterance measured, target not judged"
    silence = t["vad_silence_part_ms"]
    after = row["speech_stopped_to_first_audio_ms"]["p50"]
    return (f"VAD silence {row['silence_duration_ms']} ms: first audio p50 {fmt(p50)} ms, target <= "
            f"{fmt(t['limit_ms'])} ms {'met' if t['met'] else 'NOT met'}; {fmt(silence)} ms of it is the VAD's "
            f"silence_duration_ms, {fmt(p50 - silence)} ms the rest (speech_stopped -> first audio p50 "
            f"{fmt(after)} ms)")


def voice_lines(voice: dict[str, Any]) -> list[str]:
    rows = []
    for row in voice["rows"]:
        left = row["left_out"]
        cells = [f"{row['silence_duration_ms']} ms", f"{row['measured']}/{row['utterances']}"]
        for key, _ in VOICE_COLUMNS:
            figure = row["ms_from_end_of_speech"][key]
            cells.append(f"{fmt(figure['p50'])} / {fmt(figure['p95'])}")
        cells.append(", ".join(f"{n} {k.replace('_', ' ')}" for k, n in left.items() if n) or "-")
        rows.append(cells)
    header = ["VAD silence", "measured", *(f"{title} p50 / p95" for _, title in VOICE_COLUMNS), "left out"]
    return [
        f"Part 1: voice through the gateway, local engines ({voice['setup']})",
        f"{voice['utterances']} utterances per row (espeak-ng), 100 ms appends at real-time pace, "
        f"{voice['trailing_silence_ms']} ms of silence after each, default session (server VAD, audio out); "
        "ms from the end of speech (the append carrying the last voiced sample), client clock",
        "",
        *_table(header, rows),
        "",
        *(target_line(row) for row in voice["rows"]),
    ]


def capacity_lines(capacity: dict[str, Any]) -> list[str]:
    rows = []
    for s in capacity["steps"]:
        lat = s["turn_latency_ms"]
        rows.append([
            fmt(s["sessions"]), fmt(s["sessions_open"]),
            f"{fmt(s['turns_per_s_offered'], 1)} / {fmt(s['turns_per_s_achieved'], 1)}",
            fmt(s["gateway_cpu_percent"], 1), fmt(s["gateway_cpu_s_per_session_per_min"], 4),
            f"{fmt(s['gateway_cpu_ms_per_turn'], 2)} ({fmt(s['gateway_cpu_ms_per_turn_above_idle'], 2)})",
            fmt(s["gateway_idle_cpu_percent"], 1),
            f"{fmt(s['gateway_rss_bytes'] / 2**20, 1)} ({fmt(s['gateway_rss_idle_bytes'] / 2**20, 1)})",
            fmt(s["gateway_rss_per_session_bytes"] / 1024 if s["gateway_rss_per_session_bytes"] is not None
                else None, 1),
            f"{fmt(lat['p50'], 1)} / {fmt(lat['p99'], 1)}", fmt(s["error_count"]), fmt(s["skipped_slots"]),
            fmt(s["loadgen_cpu_percent"], 1), fmt(s["pipeline_cpu_percent"], 1),
            fmt(s["other_processes_cpu_percent"], 1),
            fmt(s["machine_busy_percent"], 1) + (" (saturated)" if s["saturated"] else ""),
        ])
    header = ["sessions", "open", "turns/s offered / done", "gateway CPU %", "CPU s/session/min",
              "CPU ms/turn (above idle)", "idle CPU %",
              "RSS MiB (idle)", "RSS KiB/session", "turn ms p50 / p99", "errors", "skipped slots",
              "load gen CPU %", "workers + Redis CPU %", "other processes CPU %", "machine busy % (all cores)"]
    lines = [
        f"Part 2: text sessions on one gateway process ({capacity['setup']})",
        f"each session: conversation.item.create + response.create, waits for response.done, "
        f"{capacity['turns_per_s_per_session']} turn/s; window {capacity['seconds']} s per step; "
        f"permessage-deflate {'on' if capacity['deflate'] else 'off'}; a fresh gateway per step, its sessions "
        f"opened over {capacity['open_over_s']:g} s; "
        "CPU % of one core (machine busy: of all cores); turn = response.create sent -> response.done received",
        "",
        *_table(header, rows),
    ]
    for s in capacity["steps"]:
        if s["error_count"]:
            lines.append(f"{s['sessions']} sessions: errors {s['errors']}; e.g. {s['error_samples'][:2]}")
    return lines


def summary_lines(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    git = meta["git"]
    lines = [
        "Summary",
        f"commit {git['commit']}{' (uncommitted changes)' if git['dirty'] else ''}; {meta['cpu_count']} cores "
        f"({meta['cpu_model']}); load average (1/5/15 min) at start {' '.join(map(str, meta['load_start']))}, "
        f"at end {' '.join(map(str, meta['load_end']))}; run {fmt(meta['duration_s'], 0)} s; "
        f"command: {meta['command']}",
    ]
    for row in (results.get("voice") or {}).get("rows", []):
        t = row["target"]
        lines.append(f"voice, VAD silence {row['silence_duration_ms']} ms: first audio p50 "
                     f"{fmt(t['first_audio_p50_ms'])} ms (target <= {fmt(t['limit_ms'])} ms: "
                     f"{'met' if t['met'] else 'not met'}), response.done p50 "
                     f"{fmt(row['ms_from_end_of_speech']['response_done']['p50'])} ms")
    steps = (results.get("capacity") or {}).get("steps", [])
    if steps:
        top = steps[-1]
        lines.append(f"one gateway, {top['sessions_open']} text sessions at "
                     f"{results['capacity']['turns_per_s_per_session']} turn/s: "
                     f"{fmt(top['gateway_cpu_percent'], 1)}% of a core, "
                     f"{fmt(top['gateway_cpu_ms_per_turn'], 2)} ms CPU per turn, turn p99 "
                     f"{fmt(top['turn_latency_ms']['p99'], 1)} ms, {top['error_count']} errors"
                     + ("; the machine was saturated" if top["saturated"] else ""))
    return lines
