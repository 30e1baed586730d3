"""One session's outgoing side: a queue of server events, sentences to speak and
delivery marks, sent in order by one task per socket.

Everything a session sends goes through here, so events keep their order even
when speech synthesis (a thread) sits between two of them: a sentence's audio
is synthesized when its turn in the queue comes, and the events behind it wait.
A mark ("the client has everything of this stream up to this id") is recorded
only after the events before it were written to the socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_json

from gateway_svc import events
from gateway_svc.speech_out import audio_delta_chunks, synthesize

log = logging.getLogger(__name__)

#: Items queued for one socket beyond which its client is too slow: the socket is
#: closed (the client may resume and get what it missed).
MAX_QUEUED = 20_000


@dataclass(slots=True)
class Speech:
    """Speak ``text`` as ``response.output_audio.delta`` events of one response."""

    text: str
    voice: str
    response_id: str
    item_id: str
    #: Checked when the audio is ready: a cancelled response sends no more audio.
    cancelled: Callable[[], bool]


@dataclass(frozen=True, slots=True)
class Mark:
    stream_kind: str
    entry_id: str


Item = dict[str, Any] | Speech | Mark


class SlowClient(RuntimeError):
    """The client does not read fast enough: its socket is closed."""


class Outbox:
    def __init__(self, send_text: Callable[[str], Awaitable[None]],
                 mark: Callable[[Mark], Awaitable[None]]) -> None:
        self._send_text = send_text
        self._mark = mark
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self.sent = 0
        #: Called with (response_id, first audio sent) once, for latency figures.
        self.on_first_audio: Callable[[str], None] | None = None
        self._audio_started: set[str] = set()

    def put(self, item: Item) -> None:
        if self._queue.qsize() >= MAX_QUEUED:
            raise SlowClient(f"more than {MAX_QUEUED} events waiting for the client")
        self._queue.put_nowait(item)

    def event(self, type_: str, **fields: Any) -> None:
        self.put(events.event(type_, **fields))

    async def run(self) -> None:
        """Send until cancelled; raises what the socket raises."""
        while True:
            item = await self._queue.get()
            if isinstance(item, dict):
                await self._send_text(to_json(item).decode())
                self.sent += 1
            elif isinstance(item, Speech):
                await self._speak(item)
            else:
                await self._mark(item)

    async def _speak(self, speech: Speech) -> None:
        if speech.cancelled():
            return
        pcm = await synthesize(speech.text, speech.voice)
        for chunk in audio_delta_chunks(pcm):
            if speech.cancelled():
                return
            await self._send_text(to_json(events.event(
                "response.output_audio.delta", response_id=speech.response_id, item_id=speech.item_id,
                output_index=0, content_index=0, delta=chunk)).decode())
            self.sent += 1
            if speech.response_id not in self._audio_started:
                self._audio_started.add(speech.response_id)
                if len(self._audio_started) > 1000:
                    self._audio_started.clear()
                if self.on_first_audio is not None:
                    self.on_first_audio(speech.response_id)
