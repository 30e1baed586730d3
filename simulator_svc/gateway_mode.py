"""The simulator as a client of the gateway (``--gateway URL``): the same plan,
tracker, printer and summary as the direct mode, but every conversation is a
Realtime WebSocket to the front door instead of writes to Redis.

Each conversation sends an utterance, waits for its answer (the API refuses a
second ``response.create`` while one is active; a speaker waits for the reply),
and sends the next at the later of its schedule (``--rate``) and that answer.
Conversations run in parallel, their starts spread over one gap. Utterances a
conversation could not send (refused connection, lost socket, timeout) are
recorded as failed, so the summary always counts every planned utterance.

Interruptions (:class:`Interruptions`):
- barge-in (spoken utterances): each utterance after the first is spoken as
  soon as the previous answer's first output arrives (its first audio delta),
  so the server VAD hears it over that answer and the gateway cancels it;
  every answer but the last is interrupted, and each utterance still gets
  exactly one ``response.done`` (``cancelled`` or completed);
- cancel after N ms: each answer gets a ``response.cancel`` N ms after its
  first output, and the next utterance waits for its done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed

from simulator_svc import realtime_client as rt
from simulator_svc.gateway_conversation import (
    ConnectFailed,
    ConversationLost,
    GatewayConversation,
    open_conversation,
    utterance_id,
)
from simulator_svc.simulator import DialoguePrinter, SimulationPlan, now_ms
from simulator_svc.tracker import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interruptions:
    """How the simulated user cuts answers off (neither: it lets every answer finish)."""

    #: Speak each utterance after the first over the previous answer (spoken utterances only).
    barge_in: bool = False
    #: Send ``response.cancel`` this long after each answer's first output (None: never).
    cancel_after_ms: float | None = None

    def __post_init__(self) -> None:
        if self.barge_in and self.cancel_after_ms is not None:
            raise ValueError("--barge-in and --cancel-after-ms are two ways to interrupt: choose one")
        if self.cancel_after_ms is not None and self.cancel_after_ms < 0:
            raise ValueError("--cancel-after-ms must be >= 0")


class GatewaySimulation:
    def __init__(self, plan: SimulationPlan, printer: DialoguePrinter, gateway: str, api_key: str | None,
                 audio_out: bool = False, interruptions: Interruptions | None = None) -> None:
        self.interruptions = interruptions or Interruptions()
        if self.interruptions.barge_in and plan.mode != "audio":
            raise ValueError("--barge-in speaks over the answers: it needs --mode audio")
        self.plan = plan
        self.printer = printer
        self.url = rt.realtime_url(gateway)
        self.api_key = api_key
        self.audio_out = audio_out
        self.tracker = Tracker()
        self.errors = 0
        #: Cancels that reached the gateway after their answer had ended (see GatewayConversation.cancel).
        self.late_cancels = 0
        self._pcms: dict[str, bytes] = {}
        #: Where the voice begins in each utterance's PCM (ms): when speech over an answer starts.
        self._onsets: dict[str, float | None] = {}
        self._slots = asyncio.Semaphore(plan.max_in_flight) if plan.max_in_flight > 0 else None

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        texts = plan.texts()
        if plan.mode == "audio":
            self._pcms = await _speech(plan, texts)
            if self.interruptions.barge_in:
                from simulator_svc.audio_mode import speech_onset_ms

                self._onsets = {t: speech_onset_ms(pcm) for t, pcm in self._pcms.items()}
        started = time.monotonic()
        try:
            async with asyncio.timeout(plan.timeout_s):
                await asyncio.gather(*(self._converse(c, texts) for c in range(plan.conversations)))
        except TimeoutError:
            log.warning("timed out after %.1fs with answers missing", plan.timeout_s)
        elapsed = max(1e-9, time.monotonic() - started)
        summary = self.tracker.summary()
        summary["mode"] = plan.mode
        summary["gateway"] = self.url
        summary["gateway_errors"] = self.errors
        if self.interruptions != Interruptions():
            summary["late_cancels"] = self.late_cancels
        if plan.mode == "audio" and not plan.recordings:
            summary["wer"] = self.tracker.word_error_rate()
        summary["elapsed_s"] = round(elapsed, 3)
        summary["answered_per_s"] = round(summary["responses_done"] / elapsed, 1)
        return summary

    def _session_update(self) -> rt.Event:
        if self.plan.mode == "audio":
            return rt.audio_session_update(self.audio_out)
        return rt.text_session_update(self.audio_out)

    async def _converse(self, c: int, texts: list[str]) -> None:
        plan = self.plan
        gap_s = 1.0 / plan.rate if plan.rate > 0 else 0.0
        await asyncio.sleep(gap_s * c / plan.conversations)
        conversation: GatewayConversation | None = None
        sent = 0
        reason = "timed out"
        try:
            conversation = await open_conversation(self.url, self.api_key, self._session_update(),
                                                   self.tracker, self.printer)
            due = time.monotonic()
            previous: str | None = None
            for k, text in enumerate(texts):
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                async with self._slots if self._slots is not None else contextlib.nullcontext():
                    uid = await self._send(conversation, k, text, interrupting=previous)
                    sent = k + 1
                    previous = await self._await_answer(conversation, uid, last=k == len(texts) - 1)
                due += gap_s
            for k in range(len(texts)):  # an interrupted answer's done may come after the next utterance
                await conversation.wait_answer(utterance_id(k))
            await asyncio.sleep(plan.settle_s)  # a second answer would come now: counted as a duplicate
        except (ConnectFailed, ConversationLost) as exc:
            reason = str(exc)
        except ConnectionClosed as exc:  # the socket broke under a send
            reason = (conversation.lost if conversation is not None else None) or f"the connection was lost ({exc})"
        finally:
            if conversation is not None:
                self.errors += conversation.errors
                self.late_cancels += conversation.late_cancels
                with contextlib.suppress(Exception):
                    await conversation.close()
            if sent < len(texts):
                self._not_sent(conversation.conversation_id if conversation else f"unconnected-{c:04d}",
                               texts, sent, reason)

    async def _send(self, conversation: GatewayConversation, k: int, text: str, interrupting: str | None) -> str:
        if self.plan.mode != "audio":
            return await conversation.say(k, text)
        return await conversation.speak(k, text, self._pcms[text], self.plan.chunk_ms, self.plan.realtime_factor,
                                        onset_ms=self._onsets.get(text), interrupting=interrupting)

    async def _await_answer(self, conversation: GatewayConversation, uid: str, last: bool) -> str | None:
        """Wait as the user would before the next utterance; returns the utterance whose answer
        the next one is to speak over (None: the next waits for nothing)."""
        if self.interruptions.barge_in and not last:
            await conversation.wait_output(uid)
            return uid
        if self.interruptions.cancel_after_ms is not None:
            await conversation.wait_output(uid)
            await asyncio.sleep(self.interruptions.cancel_after_ms / 1000)
            if not conversation.settled(uid):
                await conversation.cancel(uid)
        await conversation.wait_answer(uid)
        return None

    def _not_sent(self, conversation_id: str, texts: list[str], first: int, reason: str) -> None:
        self.printer.failed(conversation_id, f"{len(texts) - first} utterances not sent: {reason}")
        for k in range(first, len(texts)):
            uid = utterance_id(k)
            self.tracker.sent(conversation_id, uid, k, texts[k], now_ms())
            self.tracker.failed(conversation_id, uid, f"not sent: {reason}")


async def _speech(plan: SimulationPlan, texts: list[str]) -> dict[str, bytes]:
    """Each distinct utterance's PCM: the recording given, else synthesized (CPU work: off the loop)."""
    from simulator_svc.audio_mode import speech_pcm

    recorded = dict(plan.recordings)
    return {t: recorded[t] if t in recorded else await asyncio.to_thread(speech_pcm, t) for t in set(texts)}
