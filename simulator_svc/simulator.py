"""The simulated client: starts conversations, sends utterances on an open-loop
schedule, follows transcripts and responses with plain XREAD, prints the
dialogue like the seed example, and reports what it saw.

Sending and reading are two tasks; the schedule spreads conversations evenly
over each inter-utterance gap, so the load has no lock-step bursts.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

import redis.asyncio as aioredis

from shared.bus.doorbell import add_with_rings
from shared.bus.retry import retry_forever
from shared.follow import StreamFollower
from shared.keys import Keys
from shared.models import (
    ConversationEnded,
    ConversationStarted,
    EntryError,
    ResponseDelta,
    ResponseDone,
    ResponseFailed,
    ResponseStarted,
    TranscriptDelta,
    TranscriptFinal,
    UtteranceText,
    decode_fields,
    encode,
)
from simulator_svc.tracker import Tracker, interruption_lines

log = logging.getLogger(__name__)

GREETING = "Hello, I'm going to send you some audio transcriptions. Please respond to each one."
DEFAULT_UTTERANCES = [
    "This is a test of the transcription system.",
    "The weather today is sunny with a chance of rain.",
    "Can you tell me what time it is?",
    "I'd like to order a pizza with extra cheese.",
    "Please remind me to call my mother tomorrow.",
]


#: Input streams are capped like the services cap theirs (INPUT_MAXLEN's default).
INPUT_MAXLEN = 20_000


def generated_utterances(k: int) -> list[str]:
    return [DEFAULT_UTTERANCES[i % len(DEFAULT_UTTERANCES)] + f" Number {i + 1}." for i in range(k)]


def now_ms() -> float:
    return time.time() * 1000


@dataclass
class SimulationPlan:
    conversations: int = 1
    utterances: list[str] = field(default_factory=lambda: list(DEFAULT_UTTERANCES))
    greeting: bool = True
    #: Utterances per second per conversation (open loop).
    rate: float = 2.0
    timeout_s: float = 60.0
    #: After everything is answered, keep reading this long to catch duplicates.
    settle_s: float = 0.3
    end_conversations: bool = True
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    #: Most utterances sent and not yet answered (0: no bound).
    max_in_flight: int = 0
    #: "text": utterance.text entries; "audio": speech as audio.chunk + audio.end.
    mode: str = "text"
    #: Audio mode: recordings to send instead of synthesized speech (PCM16 24 kHz).
    recordings: list[tuple[str, bytes]] = field(default_factory=list)
    chunk_ms: float = 100.0
    #: Audio mode: >1 sends audio faster than real time (load tests).
    realtime_factor: float = 1.0

    def conversation_ids(self) -> list[str]:
        return [f"sim-{self.run_id}-{i:04d}" for i in range(self.conversations)]

    def texts(self) -> list[str]:
        if self.recordings:
            return [name for name, _ in self.recordings]
        return ([GREETING] if self.greeting else []) + self.utterances


class DialoguePrinter:
    """Prints like the seed example; inline streaming with one conversation."""

    def __init__(self, out: TextIO | None, conversations: int) -> None:
        self.out = out
        self.single = conversations == 1
        self._streaming = False
        #: Text of the response streamed so far (single-conversation mode).
        self._streamed = ""

    def _tag(self, conversation_id: str) -> str:
        return "" if self.single else f" {conversation_id[-4:]}"

    def _line(self, text: str) -> None:
        if self.out is None:
            return
        if self._streaming:
            self.out.write("\n")
            self._streaming = False
            self._streamed = ""
        self.out.write(text + "\n")
        self.out.flush()

    def sending(self, conversation_id: str, text: str) -> None:
        self._line(f"[SIMULATION{self._tag(conversation_id)}] Sending utterance: {text}")

    def transcript(self, conversation_id: str, text: str, said: str | None = None) -> None:
        if said is None:
            self._line(f"[CONVERSATION{self._tag(conversation_id)}] Sent: {text}")
        else:
            self._line(f"[TRANSCRIPT{self._tag(conversation_id)}] said: {said!r}  heard: {text!r}")
            self._line(f"[CONVERSATION{self._tag(conversation_id)}] Sent: {text}")

    def speaking(self, conversation_id: str, text: str, seconds: float) -> None:
        self._line(f"[SIMULATION{self._tag(conversation_id)}] Speaking ({seconds:.1f} s of audio): {text}")

    def delta(self, conversation_id: str, index: int, text: str) -> None:
        if self.out is None or not self.single:
            return
        if not self._streaming:
            self.out.write("[CONVERSATION] AI: ")
        self.out.write(text)
        self.out.flush()
        self._streaming = True
        self._streamed += text

    def done(self, conversation_id: str, text: str) -> None:
        if self.single and self._streaming and text.startswith(self._streamed):
            # Deltas still queued when the answer completed were never written: finish the line.
            self.delta(conversation_id, -1, text[len(self._streamed):])
        else:
            self._line(f"[CONVERSATION{self._tag(conversation_id)}] AI: {text}")
        self._line(f"[CONVERSATION{self._tag(conversation_id)}] Response complete")

    def failed(self, conversation_id: str, reason: str) -> None:
        self._line(f"[CONVERSATION{self._tag(conversation_id)}] Response failed: {reason}")

    def interrupted(self, conversation_id: str, text: str) -> None:
        self._line(f"[CONVERSATION{self._tag(conversation_id)}] Response interrupted (cancelled) after: {text!r}")


class Simulation:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        plan: SimulationPlan,
        printer: DialoguePrinter | None = None,
        wait: tuple[int, int] = (0, 1000),
    ) -> None:
        self.redis = redis
        self.keys = keys
        #: REDIS_WAIT_REPLICAS and its timeout (durability of the utterances written).
        self.wait = wait
        self.plan = plan
        self.printer = printer or DialoguePrinter(None, plan.conversations)
        self.tracker = Tracker()
        self._seen_delta: set[tuple[str, int]] = set()
        self._settled: dict[tuple[str, str], asyncio.Event] = {}
        self._answered = asyncio.Event()
        self._sent_all = False
        self._in_flight = 0
        self._space = asyncio.Event()
        self.started_at = 0.0
        self.finished_at = 0.0
        self._key_conv: dict[bytes, str] = {}

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        ids = plan.conversation_ids()
        for cid in ids:
            self._key_conv[self.keys.transcripts(cid).encode()] = cid
            self._key_conv[self.keys.responses(cid).encode()] = cid
        self.started_at = time.monotonic()
        await self._xadd_all(
            [(self.keys.control_for(cid), encode(ConversationStarted(conversation_id=cid))) for cid in ids]
        )
        reader = asyncio.create_task(self._read(ids), name="sim-reader")
        sender = self._send_audio(ids) if plan.mode == "audio" else self._send(ids)
        try:
            await asyncio.wait_for(sender, timeout=plan.timeout_s)
            remaining = plan.timeout_s - (time.monotonic() - self.started_at)
            if not self.tracker.settled():
                await asyncio.wait_for(self._answered.wait(), timeout=max(0.0, remaining))
            self.finished_at = time.monotonic()
            await asyncio.sleep(plan.settle_s)
        except TimeoutError:
            self.finished_at = time.monotonic()
            log.warning("timed out after %.1fs with answers missing", plan.timeout_s)
        finally:
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                pass
        if plan.end_conversations:
            await self._xadd_all(
                [(self.keys.input(cid), encode(ConversationEnded(conversation_id=cid))) for cid in ids]
            )
        summary = self.tracker.summary()
        summary["mode"] = plan.mode
        if plan.mode == "audio" and not plan.recordings:
            summary["wer"] = self.tracker.word_error_rate()
        elapsed = max(1e-9, self.finished_at - self.started_at)
        summary["elapsed_s"] = round(elapsed, 3)
        summary["answered_per_s"] = round(summary["responses_done"] / elapsed, 1)
        return summary

    # --- sending ---------------------------------------------------------------

    async def _send(self, ids: list[str]) -> None:
        plan = self.plan
        texts = plan.texts()
        gap_s = 1.0 / plan.rate if plan.rate > 0 else 0.0
        t0 = time.monotonic()
        # (due time, conversation index, utterance index): conversations offset evenly within a gap.
        heap = [(t0 + gap_s * c / len(ids), c, 0) for c in range(len(ids))]
        heapq.heapify(heap)
        while heap:
            now = time.monotonic()
            due = []
            while heap and heap[0][0] <= now:
                due.append(heapq.heappop(heap))
            if not due:
                await asyncio.sleep(min(heap[0][0] - now, 0.05))
                continue
            batch: list[tuple[str, bytes]] = []
            for due_s, c, k in due:
                if plan.max_in_flight:
                    while self._in_flight >= plan.max_in_flight:
                        if batch:  # what fills the bound must be written first, or it is never answered
                            await self._xadd_all(batch)
                            batch = []
                        self._space.clear()
                        await self._space.wait()
                cid = ids[c]
                uid = f"u{k:04d}"
                self.printer.sending(cid, texts[k])
                entry = UtteranceText(conversation_id=cid, utterance_id=uid, text=texts[k], sent_ms=int(now_ms()))
                batch.append((self.keys.input(cid), encode(entry)))
                self.tracker.sent(cid, uid, k, texts[k], now_ms())
                self._in_flight += 1
                if k + 1 < len(texts):
                    heapq.heappush(heap, (due_s + gap_s, c, k + 1))
            await self._xadd_all(batch)
        self._sent_all = True
        if self.tracker.settled():
            self._answered.set()

    async def _send_audio(self, ids: list[str]) -> None:
        """Each conversation speaks its utterances one after another, at real-time
        pace, and waits for each answer before the next (as a person would)."""
        from simulator_svc.audio_mode import publish_audio_utterance, speech_pcm

        plan = self.plan
        texts = plan.texts()
        recorded = dict(plan.recordings)
        # Synthesis is CPU work: do it once per distinct text, off the event loop.
        pcms = {t: recorded[t] if t in recorded else await asyncio.to_thread(speech_pcm, t) for t in set(texts)}
        gap_s = 1.0 / plan.rate if plan.rate > 0 else 0.0

        async def converse(c: int, cid: str) -> None:
            await asyncio.sleep(gap_s * c / len(ids))  # spread the conversations' starts
            for k, text in enumerate(texts):
                uid = f"u{k:04d}"
                pcm = pcms[text]
                self.tracker.sent(cid, uid, k, text, now_ms())
                self.printer.speaking(cid, text, len(pcm) / 48_000)
                reference = None if text in recorded else text
                # A retry after Redis went away re-sends the utterance; chunks carry their
                # utterance id and seq, and the transcriber answers an utterance id once.
                sent_ms = await retry_forever("simulator audio", functools.partial(
                    publish_audio_utterance, self.redis, self.keys, cid, uid, pcm, reference,
                    chunk_ms=plan.chunk_ms, realtime_factor=plan.realtime_factor,
                ))
                rec = self.tracker.records[(cid, uid)]
                rec.sent_ms = float(sent_ms)  # latency counts from the end of speech
                self._in_flight += 1
                await self._settled_event(cid, uid).wait()
                await asyncio.sleep(gap_s)

        await asyncio.gather(*(converse(c, cid) for c, cid in enumerate(ids)))
        self._sent_all = True
        if self.tracker.settled():
            self._answered.set()

    async def _xadd_all(self, batch: list[tuple[str, bytes]]) -> None:
        """One pipeline of XADDs, retried while Redis is away. A retry after a lost
        reply may repeat an utterance; the services answer an utterance id once."""

        controls = set(self.keys.controls())
        # Never cap a control stream: its pending entries are the ownership claims.
        writes = [(key, payload, None if key in controls else INPUT_MAXLEN) for key, payload in batch]

        async def send() -> None:
            await add_with_rings(self.redis, self.keys, writes, wait_replicas=self.wait[0],
                                 wait_timeout_ms=self.wait[1])

        await retry_forever("simulator write", send)

    # --- reading -----------------------------------------------------------------

    async def _read(self, ids: list[str]) -> None:
        """Follow every conversation's transcripts and responses (doorbells + sweep)."""
        follower = StreamFollower(self.redis, self.keys)
        for cid in ids:
            follower.follow(self.keys.transcripts(cid))
            follower.follow(self.keys.responses(cid))
        try:
            while True:
                # Rings may be lost while Redis is away: sweep once it is back.
                reply = await retry_forever("simulator read", lambda: follower.read(1000),
                                            on_error=lambda _exc: follower.resync())
                for key, entries in reply:
                    cid = self._key_conv[key]
                    for _entry_id, fields in entries:
                        self._observe(cid, fields)
        finally:
            await follower.aclose()

    def _observe(self, cid: str, fields: dict[bytes, bytes]) -> None:
        try:
            entry = decode_fields(fields)
        except EntryError:
            return
        t = now_ms()
        tr = self.tracker
        if isinstance(entry, TranscriptFinal):
            rec = tr.transcript(cid, entry.utterance_id, entry.text, t)
            if rec is not None:
                self.printer.transcript(cid, entry.text, rec.text if self.plan.mode == "audio" else None)
        elif isinstance(entry, ResponseDelta):
            if (entry.response_id, entry.index) in self._seen_delta:
                return
            self._seen_delta.add((entry.response_id, entry.index))
            tr.delta(cid, entry.utterance_id, t)
            self.printer.delta(cid, entry.index, entry.delta)
        elif isinstance(entry, ResponseDone):
            rec = tr.done(cid, entry.utterance_id, entry.text, t)
            if rec is not None and rec.dones == 1:
                self._one_answered()
                self._settled_event(cid, entry.utterance_id).set()
                self.printer.done(cid, entry.text)
        elif isinstance(entry, ResponseFailed):
            rec = tr.failed(cid, entry.utterance_id, f"{entry.code}: {entry.reason}")
            if rec is not None and rec.dones == 0:
                self._one_answered()
                self._settled_event(cid, entry.utterance_id).set()
                self.printer.failed(cid, entry.reason)
        elif isinstance(entry, TranscriptDelta | ResponseStarted):
            pass

    def _settled_event(self, cid: str, uid: str) -> asyncio.Event:
        event = self._settled.setdefault((cid, uid), asyncio.Event())
        rec = self.tracker.records.get((cid, uid))
        if rec is not None and (rec.dones or rec.failed is not None):
            event.set()
        return event

    def _one_answered(self) -> None:
        self._in_flight -= 1
        self._space.set()
        if self._sent_all and self.tracker.settled():
            self._answered.set()


def print_summary(summary: dict[str, Any], out: TextIO = sys.stdout) -> None:
    lat = summary["latency_ms"]
    out.write(
        f"\n{summary['conversations']} conversations, {summary['utterances']} utterances: "
        f"{summary['responses_done']} answered, {summary['missing']} missing, "
        f"{summary['duplicates']} duplicates, {summary['out_of_order']} out of order "
        f"in {summary['elapsed_s']}s\n"
        f"latency ms p50/p95/p99: transcript {lat['transcript_final']['p50']}/{lat['transcript_final']['p95']}/"
        f"{lat['transcript_final']['p99']}, first delta {lat['first_delta']['p50']}/{lat['first_delta']['p95']}/"
        f"{lat['first_delta']['p99']}, done {lat['response_done']['p50']}/{lat['response_done']['p95']}/"
        f"{lat['response_done']['p99']}\n"
    )
    if "first_audio" in lat:
        first_audio = lat["first_audio"]
        out.write(f"spoken answers: first audio p50/p95/p99 {first_audio['p50']}/{first_audio['p95']}/"
                  f"{first_audio['p99']} ms, {summary['audio_out_bytes'] / 48_000:.1f} s of audio\n")
    out.writelines(interruption_lines(summary))
    if summary.get("gateway_errors"):
        out.write(f"the gateway sent {summary['gateway_errors']} error events (see the log above)\n")
    if summary.get("wer") is not None:
        out.write(f"word error rate of the transcripts against what was said: {summary['wer']:.1%}\n")
