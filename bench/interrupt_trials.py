"""The client side of the interruption benchmark: trials through a gateway, each
in a conversation of its own, measured by the simulator's own Realtime client
(:class:`~simulator_svc.gateway_conversation.GatewayConversation`) and tracker.

- speech over an answer: ask a question (spoken, or typed when the transcriber
  does not understand audio), wait for the answer's first audio delta, then
  speak over it; the server VAD hears the speech and the gateway cancels the
  answer. The interruption began when the piece of audio holding the first
  voiced sample was sent (where the voice begins is found in the synthesized
  PCM: the silence before it is known).
- ``response.cancel``: ask a typed question, cancel the answer at its first
  audio delta.

Trials run one after another, each waiting until the pipeline is idle again
(the interruption itself answered, when it is transcribed), so one trial's work
does not slow the next one's cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from simulator_svc import realtime_client as rt
from simulator_svc.audio_mode import speech_onset_ms, speech_pcm
from simulator_svc.gateway_conversation import GatewayConversation, open_conversation
from simulator_svc.simulator import DialoguePrinter
from simulator_svc.tracker import Tracker

#: Questions whose answers run to several sentences: the first is spoken while the
#: engine still writes the rest, so there is an answer under way to interrupt. (The echo
#: engine repeats them: two sentences each, so its answers have a second sentence too.)
QUESTIONS = (
    "Tell me a long story about a dragon and a brave knight. Take your time.",
    "Describe in detail how to bake a loaf of bread at home. Leave nothing out.",
    "Tell me everything you know about the history of Rome. Start at the beginning.",
    "Explain how a ship finds its way across the ocean. Give me all the steps.",
)
INTERRUPTION = "Stop, wait a moment please."
#: Pieces of appended audio, as a browser page or the simulator sends them.
CHUNK_MS = 100.0
#: One trial's bound: a lost answer fails the run rather than hanging it.
TRIAL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Speech:
    text: str
    pcm: bytes
    #: Where the voice begins in ``pcm``, ms.
    onset_ms: float


def spoken(text: str) -> Speech:
    """``text`` synthesized (espeak-ng), with where its voice begins."""
    pcm = speech_pcm(text)
    onset = speech_onset_ms(pcm)
    if onset is None:
        raise RuntimeError(f"no speech found in the synthesized {text!r}")
    return Speech(text, pcm, onset)


class InterruptTrials:
    """Runs trials against the gateway at ``url``. Per kind, a tracker holds what the client
    saw and a list the trials' conversation ids (one conversation per trial)."""

    def __init__(self, url: str, spoken_questions: bool) -> None:
        self.url = rt.realtime_url(url)
        #: Ask by voice (the transcriber understands audio); else by typing.
        self.spoken_questions = spoken_questions
        self.speech_tracker, self.speech_conversations = Tracker(), list[str]()
        self.cancel_tracker, self.cancel_conversations = Tracker(), list[str]()
        self._printer = DialoguePrinter(None, 2)
        self._interruption = spoken(INTERRUPTION)
        self._questions = {q: spoken(q) for q in QUESTIONS} if spoken_questions else {}

    async def speech_over_answer(self, question: str) -> None:
        async with self._conversation(self.speech_tracker, self.speech_conversations,
                                      rt.audio_session_update(audio_out=True)) as conv:
            if self.spoken_questions:
                q = self._questions[question]
                asked = await conv.speak(0, q.text, q.pcm, CHUNK_MS, 1.0)
            else:
                asked = await conv.say(0, question)
            await conv.wait_output(asked)
            cut = self._interruption
            interruption = await conv.speak(1, cut.text, cut.pcm, CHUNK_MS, 1.0, onset_ms=cut.onset_ms,
                                            interrupting=asked)
            await conv.wait_answer(asked)
            if self.spoken_questions:  # the interruption is a turn too: let it be answered
                await conv.wait_answer(interruption)

    async def cancel_answer(self, question: str) -> None:
        async with self._conversation(self.cancel_tracker, self.cancel_conversations,
                                      rt.text_session_update(audio_out=True)) as conv:
            asked = await conv.say(0, question)
            await conv.wait_output(asked)
            if not conv.settled(asked):
                await conv.cancel(asked)
            await conv.wait_answer(asked)

    @contextlib.asynccontextmanager
    async def _conversation(self, tracker: Tracker, ids: list[str],
                            session_update: rt.Event) -> AsyncIterator[GatewayConversation]:
        conv = await open_conversation(self.url, None, session_update, tracker, self._printer)
        ids.append(conv.conversation_id)
        try:
            async with asyncio.timeout(TRIAL_TIMEOUT_S):
                yield conv
        finally:
            await conv.close()
        if conv.lost is not None:
            raise RuntimeError(f"trial conversation {conv.conversation_id} lost: {conv.lost}")

    async def run(self, trials: int) -> None:
        """``trials`` of each kind, the questions in turn."""
        for n in range(trials):
            await self.speech_over_answer(QUESTIONS[n % len(QUESTIONS)])
        for n in range(trials):
            await self.cancel_answer(QUESTIONS[n % len(QUESTIONS)])
