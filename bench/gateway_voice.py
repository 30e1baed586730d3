"""Part 1 of the gateway benchmark: voice latency through the gateway with the
local engines.

A client speaks utterances (espeak-ng speech from :mod:`shared.tts`) into a
default session (server VAD, audio out), as a microphone would: 100 ms appends
at real-time pace, ~1 s of silence after the speech; one utterance at a time,
each waited for up to its ``response.done``.

Every figure is from the client's clock, from the *end of speech*: the
``perf_counter`` just after the append carrying the utterance's last voiced
sample was sent. That sample is found in the synthesized speech itself (its
last sample at -45 dBFS or more, the VAD's own floor), so neither the silence
appended after the speech nor espeak's quiet tail counts as speech.

An utterance the VAD cut into several turns, or that timed out or met an error,
is left out of the figures and counted (its milestones would not be one turn's).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.gateway_client import listen, open_socket, receive_until, send_event, sleep_until
from bench.latency import summarise
from shared.audio import silence_pcm
from shared.models import AUDIO_SAMPLE_RATE_HZ
from shared.tts import synthesize

PIECE_MS = 100
PIECE_BYTES = AUDIO_SAMPLE_RATE_HZ * PIECE_MS // 1000 * 2
LEAD_SILENCE_MS = 300
TRAILING_SILENCE_MS = 1000
#: A sample this loud or louder is speech (the server VAD's floor at its default threshold 0.5).
VOICED_DBFS = -45.0
#: After the last append, the VAD's turn must have been reported within this; then the answer within the next.
TURN_TIMEOUT_S = 15.0
ANSWER_TIMEOUT_S = 180.0
#: The target of issue 13: first audio p50 at most this, on this 2-core machine.
FIRST_AUDIO_TARGET_MS = 600.0

#: What is measured, each the first event of one of these types after the utterance began.
MILESTONES: dict[str, tuple[str, ...]] = {
    "speech_stopped": ("input_audio_buffer.speech_stopped",),
    "transcript_completed": ("conversation.item.input_audio_transcription.completed",),
    "first_audio": ("response.output_audio.delta",),
    "first_text": ("response.output_audio_transcript.delta", "response.output_text.delta"),
    "response_done": ("response.done",),
}
_MILESTONE_OF = {type_: name for name, types in MILESTONES.items() for type_ in types}


def last_voiced_sample(pcm: bytes, threshold_dbfs: float = VOICED_DBFS) -> int | None:
    """Index of the last PCM16 sample at ``threshold_dbfs`` or louder (None: all quieter)."""
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.int32)
    loud = np.flatnonzero(np.abs(samples) >= 32768 * 10 ** (threshold_dbfs / 20))
    return int(loud[-1]) if len(loud) else None


@dataclass(frozen=True)
class SpokenUtterance:
    text: str
    #: Lead silence + speech + trailing silence, PCM16 mono 24 kHz.
    pcm: bytes
    #: Index of the 100 ms append that carries the last voiced sample.
    end_of_speech_piece: int

    @classmethod
    def of(cls, text: str) -> SpokenUtterance:
        speech = synthesize(text)
        last = last_voiced_sample(speech)
        if last is None:
            raise ValueError(f"espeak-ng gave no audible speech for {text!r}")
        lead = silence_pcm(LEAD_SILENCE_MS, AUDIO_SAMPLE_RATE_HZ)
        pcm = lead + speech + silence_pcm(TRAILING_SILENCE_MS, AUDIO_SAMPLE_RATE_HZ)
        return cls(text, pcm, (len(lead) + 2 * last) // PIECE_BYTES)

    def pieces(self) -> list[bytes]:
        return [self.pcm[i : i + PIECE_BYTES] for i in range(0, len(self.pcm), PIECE_BYTES)]


@dataclass
class UtteranceRecord:
    """What the client saw of one utterance (``perf_counter`` stamps)."""

    text: str
    end_of_speech: float = 0.0
    first: dict[str, float] = field(default_factory=dict)
    turns: int = 0
    dones: int = 0
    not_completed: int = 0
    errors: list[str] = field(default_factory=list)
    timed_out: bool = False
    transcript: str | None = None
    answer: str | None = None

    @property
    def clean(self) -> bool:
        """One turn, answered, no error: its milestones are that turn's."""
        return (self.turns == 1 and self.dones == 1 and not self.not_completed and not self.errors
                and not self.timed_out and all(name in self.first for name in MILESTONES))

    def latencies_ms(self) -> dict[str, float]:
        return {name: round((at - self.end_of_speech) * 1000, 1) for name, at in self.first.items()}


class VoiceSession:
    """One socket's events, attributed to the utterance being spoken."""

    def __init__(self) -> None:
        self.current: UtteranceRecord | None = None
        self.changed = asyncio.Event()

    def on_event(self, type_: str, at: float, text: str) -> None:
        record = self.current
        if record is None:
            return
        name = _MILESTONE_OF.get(type_)
        if name is not None and name not in record.first:
            record.first[name] = at
        if type_ == "input_audio_buffer.speech_stopped":
            record.turns += 1
        elif type_ == "conversation.item.input_audio_transcription.completed" and record.transcript is None:
            record.transcript = str(json.loads(text).get("transcript"))
        elif type_ == "response.done":
            record.dones += 1
            response = json.loads(text)["response"]
            if response["status"] != "completed":
                record.not_completed += 1
            elif record.answer is None and response["output"]:
                part = response["output"][0]["content"][0]
                record.answer = part.get("transcript") or part.get("text")
        elif type_ == "error":
            record.errors.append(str(json.loads(text).get("error", {}).get("message"))[:200])
        else:
            return
        self.changed.set()

    async def _wait(self, record: UtteranceRecord, done: Any, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    self.changed.clear()
                    if done() or record.errors:
                        return True
                    await self.changed.wait()
        except TimeoutError:
            return False

    async def speak(self, ws: Any, utterance: SpokenUtterance) -> UtteranceRecord:
        record = self.current = UtteranceRecord(utterance.text)
        started = time.perf_counter()
        for index, piece in enumerate(utterance.pieces()):
            await sleep_until(started + index * PIECE_MS / 1000)
            await send_event(ws, "input_audio_buffer.append", audio=base64.b64encode(piece).decode())
            if index == utterance.end_of_speech_piece:
                record.end_of_speech = time.perf_counter()
        heard = await self._wait(record, lambda: record.turns >= 1, TURN_TIMEOUT_S)
        answered = heard and await self._wait(record, lambda: record.dones >= record.turns, ANSWER_TIMEOUT_S)
        record.timed_out = not answered
        self.current = None
        return record


async def speak_in_a_session(base_url: str, utterances: list[SpokenUtterance], silence_ms: int | None
                             ) -> tuple[int, list[UtteranceRecord]]:
    """A new session (the default one; ``silence_ms`` set by ``session.update`` unless None)
    speaks ``utterances`` one at a time; returns the VAD's silence_duration_ms and the records."""
    ws = await open_socket(base_url, deflate=False)
    try:
        created = json.loads(await receive_until(ws, "session.created"))
        turn_detection = created["session"]["audio"]["input"]["turn_detection"]
        if silence_ms is not None:
            await send_event(ws, "session.update", session={"type": "realtime", "audio": {"input": {
                "turn_detection": {"type": "server_vad", "silence_duration_ms": silence_ms}}}})
            updated = json.loads(await receive_until(ws, "session.updated"))
            turn_detection = updated["session"]["audio"]["input"]["turn_detection"]
        session = VoiceSession()
        listener = asyncio.create_task(listen(ws, session.on_event))
        records = [await session.speak(ws, u) for u in utterances]
    finally:
        await ws.close()
    await listener
    return int(turn_detection["silence_duration_ms"]), records


def row_figures(silence_ms: int, records: list[UtteranceRecord]) -> dict[str, Any]:
    """p50/p95 (and more) of each milestone over the clean utterances, and the target's verdict."""
    clean = [r for r in records if r.clean]
    per_utterance = [r.latencies_ms() for r in clean]
    figures = {name: summarise([u[name] for u in per_utterance]) for name in MILESTONES}
    after_vad = summarise([u["first_audio"] - u["speech_stopped"] for u in per_utterance])
    first_audio_p50 = figures["first_audio"]["p50"]
    return {
        "silence_duration_ms": silence_ms,
        "utterances": len(records),
        "measured": len(clean),
        "left_out": {
            "split_into_turns": sum(r.turns > 1 for r in records),
            "timed_out": sum(r.timed_out for r in records),
            "errors": sum(bool(r.errors) or r.not_completed > 0 for r in records),
        },
        "ms_from_end_of_speech": figures,
        "speech_stopped_to_first_audio_ms": after_vad,
        "target": {
            "first_audio_p50_ms": first_audio_p50,
            "limit_ms": FIRST_AUDIO_TARGET_MS,
            "met": first_audio_p50 is not None and first_audio_p50 <= FIRST_AUDIO_TARGET_MS,
            "vad_silence_part_ms": silence_ms,
        },
        "per_utterance": [{"text": r.text, "transcript": r.transcript, "answer": r.answer, "turns": r.turns,
                           "clean": r.clean, "errors": r.errors, "ms": r.latencies_ms()} for r in records],
    }
