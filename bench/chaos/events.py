"""What happened during a chaos run, and the figures made of it: the faults
injected, the workers' own log lines (takeovers), and the writes of a paused
worker once continued. Pure: the run gathers the inputs, this reads them."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.chaos.plan import FaultKind

#: The runtime's log line when a worker adopts a conversation whose claim went idle
#: (shared/runtime/leases.py); its ``ts`` is when the new owner took it.
TOOK_OVER = "took over conversation "
#: The conversation worker's start-up line naming the prefix of the response ids it writes.
_RESPONSE_PREFIX = re.compile(r"response ids of this worker start with (r[0-9a-f]+)")
#: A paused worker, continued, learns from a refresh which claims are still its own.
CONFIRMED_AGAIN = "claims confirmed again after"


@dataclass(frozen=True)
class LogEvent:
    ts: float
    service: str
    worker_id: str
    msg: str
    conversation_id: str | None = None


def parse_log(text: str) -> list[LogEvent]:
    """A worker's JSON log lines (LOG_FORMAT=json); anything else (a traceback
    printed before logging was set up) is skipped."""
    events = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
            events.append(LogEvent(float(doc["ts"]), str(doc["service"]), str(doc["worker_id"]), str(doc["msg"]),
                                   doc.get("conversation_id")))
        except (ValueError, KeyError, TypeError):
            continue
    return events


def response_prefix(events: Iterable[LogEvent]) -> str | None:
    for event in events:
        found = _RESPONSE_PREFIX.search(event.msg)
        if found:
            return found.group(1)
    return None


@dataclass
class FaultRecord:
    """One fault as injected. Times are wall-clock seconds (``time.time()``), as in
    the workers' logs and, in milliseconds, in Redis's stream ids."""

    kind: FaultKind
    #: When it was planned and when it struck, in seconds after the first utterance.
    planned_s: float
    at_s: float
    wall: float
    #: A worker id, or "redis".
    target: str
    service: str | None = None
    #: The conversations the worker held when it was killed or paused.
    claims: list[str] = field(default_factory=list)
    #: Redis started again / the worker continued, and when (wall clock).
    ended_wall: float | None = None
    #: The replacement started for a killed worker.
    replacement: str | None = None


def takeover_delays(fault: FaultRecord, events: Sequence[LogEvent]) -> tuple[list[float], list[str]]:
    """For each conversation the faulted worker held: seconds from the fault to the
    first peer of its service taking it over. Also the conversations nobody took."""
    first: dict[str, float] = {}
    for e in events:
        if (e.service == fault.service and e.worker_id != fault.target and e.ts >= fault.wall
                and e.msg.startswith(TOOK_OVER) and e.conversation_id is not None):
            cid = e.conversation_id
            if cid not in first or e.ts < first[cid]:
                first[cid] = e.ts
    delays = [round(first[cid] - fault.wall, 3) for cid in fault.claims if cid in first]
    return delays, [cid for cid in fault.claims if cid not in first]


def taken_from(fault: FaultRecord, events: Sequence[LogEvent]) -> set[str]:
    """The conversations a peer took from the faulted worker."""
    _, missed = takeover_delays(fault, events)
    return set(fault.claims) - set(missed)


def zombie_windows(fault: FaultRecord, events: Sequence[LogEvent]) -> dict[str, tuple[float, float]]:
    """For each conversation taken from a paused worker: from when it was continued
    until it took that conversation back itself, if it did (a later takeover, after
    a peer died: from then on it is the owner again), wall clock."""
    since = fault.ended_wall if fault.ended_wall is not None else fault.wall
    windows = {}
    for cid in taken_from(fault, events):
        back = [e.ts for e in events if e.worker_id == fault.target and e.conversation_id == cid
                and e.msg.startswith(TOOK_OVER) and e.ts >= since]
        windows[cid] = (since, min(back, default=math.inf))
    return windows


def writes_after(
    response_writes: Mapping[str, Sequence[tuple[float, str]]],
    windows: Mapping[str, tuple[float, float]],
    prefix: str,
) -> int:
    """Response entries (started, delta, done, failed) with ``prefix`` in their response
    id written to a conversation within its window (``zombie_windows``): what a paused
    worker wrote, once continued, for conversations taken from it (must be 0).
    ``response_writes``: per conversation, (stream id time in ms, response id)."""
    count = 0
    for cid, (since, until) in windows.items():
        # A stream id's time is whole milliseconds.
        since_ms, until_ms = math.floor(since * 1000), until * 1000
        count += sum(1 for at_ms, rid in response_writes.get(cid, ())
                     if rid.startswith(prefix) and since_ms <= at_ms < until_ms)
    return count
