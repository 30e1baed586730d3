"""Latency recording: what is stamped on each utterance on its way through a
system under test, and the latency figures made from the stamps. The same
for every system, so the three are measured by one piece of code.

Recorded per utterance (:class:`Utt`):

- ``sent_perf`` / ``sent_wall_ms``: the client's clock just before the write
  (one stamp per pipelined batch of writes);
- ``in_id_ms``: the time part of the input entry's id (the broker's clock
  when it stored the utterance);
- ``mid_id_ms``: the id time of the first hop's output (``transcript.final``;
  ``mid`` for the baselines), and ``mid_obs_perf``, when the client saw it;
- ``done_id_ms``: the id time of the second hop's output (``response.done``;
  ``out`` for the baselines), and ``done_obs_perf``, when the client saw it.

Figures (milliseconds):

- end to end = ``done_obs_perf - sent_perf`` (client clock, perf_counter
  resolution: what a user of the system waits);
- per hop from entry ids: hop 1 = ``mid_id_ms - in_id_ms``, hop 2 =
  ``done_id_ms - mid_id_ms``: the time from one hop's input entry being
  stored to its output entry being stored, i.e. queueing + read + handling +
  write of that hop. Redis stream ids carry whole milliseconds only, so these
  are quantised to 1 ms (a 0.3 ms hop reads as 0 or 1); their *mean* is
  still an unbiased estimate, so it is reported too. The queue baseline has
  no ids: its stages stamp ``time.time()`` instead (sub-millisecond);
- per hop as the client saw it: hop 1 = ``mid_obs_perf - sent_perf``, hop 2
  = ``done_obs_perf - mid_obs_perf`` (perf_counter resolution, but each
  includes the client's own read of the stream).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.models import UtteranceText, encode

#: Resolution of a Redis stream entry id's time part.
ID_RESOLUTION_MS = 1.0

MID = "mid"
DONE = "done"
FAILED = "failed"

#: (kind, conversation id, utterance id, entry id time in ms, observed perf_counter or None for "now").
Observation = tuple[str, str, str, float, float | None]


@dataclass(slots=True)
class Utt:
    """One utterance and what the client saw of it (see the module doc)."""

    cid: str
    uid: str
    index: int
    text: str
    sent_wall_ms: float = 0.0
    sent_perf: float = 0.0
    in_id_ms: float = -1.0
    mid_id_ms: float = -1.0
    mid_obs_perf: float = -1.0
    done_id_ms: float = -1.0
    done_obs_perf: float = -1.0
    dones: int = 0
    failed: bool = False

    def payload(self, sent_ms: int) -> bytes:
        return encode(UtteranceText(conversation_id=self.cid, utterance_id=self.uid, text=self.text, sent_ms=sent_ms))


def stamp_batch(batch: Sequence[Utt]) -> list[bytes]:
    """Stamp the client clock on every utterance of a batch and build its payloads.

    Called by a target right before its write, so ``sent_perf`` is the last
    client-side instant before the utterance leaves."""
    wall_ms = time.time() * 1000
    payloads = [u.payload(int(wall_ms)) for u in batch]
    perf = time.perf_counter()
    for u in batch:
        u.sent_wall_ms = wall_ms
        u.sent_perf = perf
    return payloads


def id_ms(entry_id: bytes | str) -> float:
    """The time part of a stream entry id, in ms."""
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return float(s.split("-", 1)[0])


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of a sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarise(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max/mean (ms, 3 decimals) and n of a sample."""
    s = sorted(values)

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {
        "p50": r(percentile(s, 50)),
        "p95": r(percentile(s, 95)),
        "p99": r(percentile(s, 99)),
        "max": r(s[-1] if s else None),
        "mean": r(sum(s) / len(s) if s else None),
        "n": len(s),
    }


def latency_figures(utts: Sequence[Utt]) -> dict[str, Any]:
    """End-to-end and per-hop summaries of the answered utterances (ms)."""
    done = [u for u in utts if u.dones > 0 and u.done_obs_perf > 0]
    with_mid = [u for u in done if u.mid_id_ms >= 0 and u.in_id_ms >= 0 and u.done_id_ms >= 0]
    observed_mid = [u for u in done if u.mid_obs_perf > 0]
    return {
        "e2e": summarise([(u.done_obs_perf - u.sent_perf) * 1000 for u in done]),
        "hop1_ids": summarise([u.mid_id_ms - u.in_id_ms for u in with_mid]),
        "hop2_ids": summarise([u.done_id_ms - u.mid_id_ms for u in with_mid]),
        "client_to_broker": summarise([u.in_id_ms - u.sent_wall_ms for u in done if u.in_id_ms >= 0]),
        "hop1_client": summarise([(u.mid_obs_perf - u.sent_perf) * 1000 for u in observed_mid]),
        "hop2_client": summarise([(u.done_obs_perf - u.mid_obs_perf) * 1000 for u in observed_mid]),
    }
