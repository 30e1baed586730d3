"""What the simulator saw, per utterance, and the summary it prints. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from shared.wer import word_errors


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarise(values: list[float]) -> dict[str, float | None]:
    s = sorted(values)
    return {
        "p50": _r(percentile(s, 50)),
        "p95": _r(percentile(s, 95)),
        "p99": _r(percentile(s, 99)),
        "max": _r(s[-1] if s else None),
        "n": len(s),
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


@dataclass
class UtteranceRecord:
    conversation_id: str
    utterance_id: str
    index: int
    text: str
    sent_ms: float
    transcript: str | None = None
    transcript_ms: float | None = None
    first_delta_ms: float | None = None
    done_ms: float | None = None
    answer: str | None = None
    dones: int = 0
    failed: str | None = None
    #: Spoken answers (through the gateway with audio out): first audio and its bytes.
    first_audio_ms: float | None = None
    audio_bytes: int = 0


@dataclass
class Tracker:
    """Counts answers per utterance: exactly one ``response.done`` each is the goal."""

    records: dict[tuple[str, str], UtteranceRecord] = field(default_factory=dict)
    last_done_index: dict[str, int] = field(default_factory=dict)
    out_of_order: int = 0
    unknown: int = 0

    def sent(self, conversation_id: str, utterance_id: str, index: int, text: str, now_ms: float) -> None:
        self.records[(conversation_id, utterance_id)] = UtteranceRecord(
            conversation_id, utterance_id, index, text, now_ms
        )

    def _get(self, conversation_id: str, utterance_id: str) -> UtteranceRecord | None:
        rec = self.records.get((conversation_id, utterance_id))
        if rec is None:
            self.unknown += 1
        return rec

    def transcript(self, conversation_id: str, utterance_id: str, text: str, now_ms: float) -> UtteranceRecord | None:
        rec = self._get(conversation_id, utterance_id)
        if rec is not None and rec.transcript_ms is None:
            rec.transcript, rec.transcript_ms = text, now_ms
        return rec

    def delta(self, conversation_id: str, utterance_id: str, now_ms: float) -> UtteranceRecord | None:
        rec = self._get(conversation_id, utterance_id)
        if rec is not None and rec.first_delta_ms is None:
            rec.first_delta_ms = now_ms
        return rec

    def audio(self, conversation_id: str, utterance_id: str, n_bytes: int, now_ms: float) -> UtteranceRecord | None:
        rec = self._get(conversation_id, utterance_id)
        if rec is not None:
            rec.audio_bytes += n_bytes
            if rec.first_audio_ms is None:
                rec.first_audio_ms = now_ms
        return rec

    def done(self, conversation_id: str, utterance_id: str, text: str, now_ms: float) -> UtteranceRecord | None:
        rec = self._get(conversation_id, utterance_id)
        if rec is None:
            return None
        rec.dones += 1
        if rec.dones == 1:
            rec.done_ms, rec.answer = now_ms, text
            if rec.first_delta_ms is None:
                # A fast answer arrives whole, in its done entry (no delta was written).
                rec.first_delta_ms = now_ms
            last = self.last_done_index.get(conversation_id, -1)
            if rec.index < last:
                self.out_of_order += 1
            self.last_done_index[conversation_id] = max(last, rec.index)
        return rec

    def failed(self, conversation_id: str, utterance_id: str, reason: str) -> UtteranceRecord | None:
        rec = self._get(conversation_id, utterance_id)
        if rec is not None and rec.failed is None:
            rec.failed = reason
        return rec

    def settled(self) -> bool:
        return all(r.dones > 0 or r.failed is not None for r in self.records.values())

    def summary(self) -> dict[str, Any]:
        recs = list(self.records.values())
        done = [r for r in recs if r.dones > 0]
        def lat(attr: str) -> dict[str, float | None]:
            return summarise([getattr(r, attr) - r.sent_ms for r in recs if getattr(r, attr) is not None])
        latency = {
            "transcript_final": lat("transcript_ms"),
            "first_delta": lat("first_delta_ms"),
            "response_done": lat("done_ms"),
        }
        spoken = [r for r in recs if r.audio_bytes]
        if spoken:  # only answers spoken through the gateway have audio
            latency["first_audio"] = lat("first_audio_ms")
        summary: dict[str, Any] = {
            "conversations": len({r.conversation_id for r in recs}),
            "utterances": len(recs),
            "responses_done": len(done),
            "responses_failed": sum(1 for r in recs if r.failed is not None and r.dones == 0),
            "missing": sum(1 for r in recs if r.dones == 0),
            "duplicates": sum(r.dones - 1 for r in done),
            "out_of_order": self.out_of_order,
            "latency_ms": latency,
        }
        if spoken:
            summary["audio_out_bytes"] = sum(r.audio_bytes for r in spoken)
        return summary

    def word_error_rate(self) -> float | None:
        """Of the transcripts against what was said (None: no transcript)."""
        errors = words = 0
        for rec in self.records.values():
            if rec.transcript is not None:
                e, n = word_errors(rec.text, rec.transcript)
                errors, words = errors + e, words + n
        return round(errors / words, 4) if words else None


def succeeded(summary: dict[str, Any]) -> bool:
    """The simulator's exit rule: every utterance got exactly one response.done, none failed."""
    return bool(summary["missing"] == 0 and summary["duplicates"] == 0 and summary["responses_failed"] == 0)
