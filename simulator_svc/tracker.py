"""What the simulator saw, per utterance, and the summary it prints. Pure.

Interruptions (through the gateway: speech over an answer, or ``response.cancel``):
an interrupted answer still gets exactly one ``response.done``, with status
``cancelled``, and nothing of it after that done. Its cancel latency runs from
the moment the client began the interruption (sent the first voiced audio of
the speech over it, or the ``response.cancel``) to the last delta of the answer
the client received (its audio deltas for a spoken answer, its text deltas
otherwise); when none came after that moment, to its cancelled ``response.done``.
The summary says how many latencies were measured each way.
"""

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
    #: The last text (or transcript) delta and the last audio delta of the answer.
    last_text_ms: float | None = None
    last_audio_ms: float | None = None
    #: When the client began interrupting this answer (see the module's doc), and when
    #: the gateway said it heard the speech over it (``input_audio_buffer.speech_started``).
    interrupt_ms: float | None = None
    interrupt_heard_ms: float | None = None
    #: Its one response.done was ``cancelled`` (and deltas of it that came after that done).
    cancelled: bool = False
    late_deltas: int = 0

    def cancel_latency(self) -> tuple[float, str] | None:
        """(ms, what ended it: ``last_delta`` or ``cancelled_done``) of an answer the client
        interrupted and that was cancelled; None otherwise."""
        if not self.cancelled or self.interrupt_ms is None or self.done_ms is None:
            return None
        last = self.last_audio_ms if self.audio_bytes else self.last_text_ms
        if last is not None and last >= self.interrupt_ms:
            return last - self.interrupt_ms, "last_delta"
        return max(0.0, self.done_ms - self.interrupt_ms), "cancelled_done"


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
        if rec is not None:
            if rec.first_delta_ms is None:
                rec.first_delta_ms = now_ms
            rec.last_text_ms = now_ms
            if rec.cancelled:  # its done came already: nothing of it should follow
                rec.late_deltas += 1
        return rec

    def audio(self, conversation_id: str, utterance_id: str, n_bytes: int, now_ms: float) -> UtteranceRecord | None:
        rec = self._get(conversation_id, utterance_id)
        if rec is not None:
            rec.audio_bytes += n_bytes
            if rec.first_audio_ms is None:
                rec.first_audio_ms = now_ms
            rec.last_audio_ms = now_ms
            if rec.cancelled:  # its done came already: nothing of it should follow
                rec.late_deltas += 1
        return rec

    def interrupting(self, conversation_id: str, utterance_id: str, now_ms: float) -> UtteranceRecord | None:
        """The client began interrupting that utterance's answer (first call counts)."""
        rec = self._get(conversation_id, utterance_id)
        if rec is not None and rec.interrupt_ms is None:
            rec.interrupt_ms = now_ms
        return rec

    def interruption_heard(self, conversation_id: str, utterance_id: str, now_ms: float) -> UtteranceRecord | None:
        """The gateway heard the speech over that utterance's answer (speech_started)."""
        rec = self._get(conversation_id, utterance_id)
        if rec is not None and rec.interrupt_heard_ms is None:
            rec.interrupt_heard_ms = now_ms
        return rec

    def done(self, conversation_id: str, utterance_id: str, text: str, now_ms: float,
             cancelled: bool = False) -> UtteranceRecord | None:
        """A response.done (``cancelled``: with that status; ``text`` is then what was produced)."""
        rec = self._get(conversation_id, utterance_id)
        if rec is None:
            return None
        rec.dones += 1
        if rec.dones == 1:
            rec.done_ms, rec.answer, rec.cancelled = now_ms, text, cancelled
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
        def lat(attr: str, among: list[UtteranceRecord] = recs) -> dict[str, float | None]:
            return summarise([getattr(r, attr) - r.sent_ms for r in among if getattr(r, attr) is not None])
        latency = {
            "transcript_final": lat("transcript_ms"),
            "first_delta": lat("first_delta_ms"),
            # A cancelled answer ends early: its done says nothing of how long answers take.
            "response_done": lat("done_ms", [r for r in recs if not r.cancelled]),
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
            "cancelled": sum(1 for r in done if r.cancelled),
            "late_deltas": sum(r.late_deltas for r in recs),
            "latency_ms": latency,
        }
        if spoken:
            summary["audio_out_bytes"] = sum(r.audio_bytes for r in spoken)
        attempted = [r for r in recs if r.interrupt_ms is not None]
        if attempted:
            measured = [m for m in (r.cancel_latency() for r in attempted) if m is not None]
            latency["cancel"] = summarise([ms for ms, _ in measured])
            heard = [r.interrupt_heard_ms - r.interrupt_ms for r in attempted
                     if r.interrupt_heard_ms is not None and r.interrupt_ms is not None]
            if heard:
                latency["interruption_heard"] = summarise(heard)
            summary["interruptions"] = {
                "attempted": len(attempted),
                "cancelled": sum(1 for r in attempted if r.cancelled),
                # The answer had ended (for the client) before the interruption reached it.
                "completed_first": sum(1 for r in attempted if r.dones > 0 and not r.cancelled),
                "to_last_delta": sum(1 for _, basis in measured if basis == "last_delta"),
                "to_cancelled_done": sum(1 for _, basis in measured if basis == "cancelled_done"),
            }
        return summary

    def cancel_latencies(self) -> list[tuple[float, str]]:
        """Each cancelled answer's (cancel latency ms, what ended it), in send order."""
        return [m for m in (r.cancel_latency() for r in self.records.values()) if m is not None]

    def word_error_rate(self) -> float | None:
        """Of the transcripts against what was said (None: no transcript)."""
        errors = words = 0
        for rec in self.records.values():
            if rec.transcript is not None:
                e, n = word_errors(rec.text, rec.transcript)
                errors, words = errors + e, words + n
        return round(errors / words, 4) if words else None


def interruption_lines(summary: dict[str, Any]) -> list[str]:
    """The summary's lines about interrupted answers (none when nothing was interrupted)."""
    lines = []
    if summary.get("cancelled") or summary.get("late_deltas"):
        late = summary.get("late_deltas", 0)
        lines.append(f"{summary['responses_done'] - summary.get('cancelled', 0)} answers completed, "
                     f"{summary.get('cancelled', 0)} interrupted (cancelled); "
                     + (f"{late} deltas came after a cancelled answer's done\n" if late
                        else "no delta after a cancelled answer's done\n"))
    tried = summary.get("interruptions")
    if tried:
        cancel = summary["latency_ms"]["cancel"]
        lines.append(f"interruptions: {tried['attempted']} attempted, {tried['cancelled']} cancelled, "
                     f"{tried['completed_first']} answers complete first; cancel latency ms p50/p95/max "
                     f"{cancel['p50']}/{cancel['p95']}/{cancel['max']} (to the last delta: {tried['to_last_delta']}, "
                     f"to the cancelled done: {tried['to_cancelled_done']})\n")
        heard = summary["latency_ms"].get("interruption_heard")
        if heard:
            lines.append(f"speech over an answer heard (speech_started) after p50/p95/max "
                         f"{heard['p50']}/{heard['p95']}/{heard['max']} ms\n")
    return lines


def succeeded(summary: dict[str, Any]) -> bool:
    """The simulator's exit rule: every utterance got exactly one response.done (completed,
    or cancelled by an interruption), none failed, and nothing of a cancelled answer came
    after its done."""
    return bool(summary["missing"] == 0 and summary["duplicates"] == 0 and summary["responses_failed"] == 0
                and summary.get("late_deltas", 0) == 0)
