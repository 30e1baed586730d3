"""One session's outgoing side: a queue of server events, sentences to speak and
delivery marks, sent in order by one task per socket.

Everything a session sends goes through here, so events keep their order even
when speech synthesis (a thread) sits between two of them: a sentence's audio
is synthesized when its turn in the queue comes, and the events behind it wait.
A mark ("the client has everything of this stream up to this id") is recorded
only after the events before it were written to the socket.

Items of an answer carry its response id, so an interruption can drop what of
that answer has not gone out yet (:meth:`Outbox.drop`): the client hears no
more of it, at once, whatever was queued. Marks are never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_json

from gateway_svc import events
from gateway_svc.meters import EVENTS_OUT
from gateway_svc.speech_out import audio_delta_chunks, synthesize
from shared.models import AUDIO_BYTES_PER_MS

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
    #: Called once the sentence's audio has gone out, with its length in ms (the
    #: timeline a truncation maps ``audio_end_ms`` onto).
    on_spoken: Callable[[str, int], None]


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
        #: (response id or None, item), oldest first.
        self._queue: deque[tuple[str | None, Item]] = deque()
        self._ready = asyncio.Event()
        #: The answer whose sentence is being synthesized or sent right now.
        self._speaking: str | None = None
        #: Answers dropped while one of their sentences was in flight: it stops there.
        self._dropped: set[str] = set()
        #: Set while nothing is queued or in flight (what a drain waits for).
        self._idle = asyncio.Event()
        self._idle.set()
        self.sent = 0

    def put(self, item: Item, tag: str | None = None) -> None:
        """Queue ``item``; ``tag`` (a response id) marks it as part of that answer (droppable)."""
        if len(self._queue) >= MAX_QUEUED:
            raise SlowClient(f"more than {MAX_QUEUED} events waiting for the client")
        self._queue.append((tag, item))
        self._ready.set()
        self._idle.clear()

    def event(self, type_: str, tag: str | None = None, **fields: Any) -> None:
        """Queue one server event (``tag``: as for :meth:`put`)."""
        self.put(events.event(type_, **fields), tag)

    def holds(self, response_id: str) -> bool:
        """Is any of that answer still to go out?"""
        return self._speaking == response_id or any(rid == response_id for rid, _ in self._queue)

    def drop(self, response_id: str) -> None:
        """Send nothing more of that answer (its delivery marks stay)."""
        self._queue = deque((rid, item) for rid, item in self._queue
                            if rid != response_id or isinstance(item, Mark))
        if self._speaking == response_id:
            self._dropped.add(response_id)

    async def flushed(self) -> None:
        """Until everything queued so far (and since) has been sent and its marks recorded."""
        await self._idle.wait()

    async def run(self) -> None:
        """Send until cancelled; raises what the socket raises."""
        while True:
            while not self._queue:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
            response_id, item = self._queue.popleft()
            if isinstance(item, dict):
                await self._send_text(to_json(item).decode())
                self.sent += 1
                EVENTS_OUT.inc()
            elif isinstance(item, Speech):
                self._speaking = response_id
                try:
                    await self._speak(item)
                finally:
                    self._speaking = None
                    self._dropped.discard(item.response_id)
            else:
                await self._mark(item)

    async def _speak(self, speech: Speech) -> None:
        pcm = await synthesize(speech.text, speech.voice)
        sent_bytes = 0
        for chunk in audio_delta_chunks(pcm):
            if speech.response_id in self._dropped:
                break
            await self._send_text(to_json(events.event(
                "response.output_audio.delta", response_id=speech.response_id, item_id=speech.item_id,
                output_index=0, content_index=0, delta=chunk)).decode())
            self.sent += 1
            EVENTS_OUT.inc()
            sent_bytes += len(chunk) * 3 // 4
        spoken_ms = min(sent_bytes, len(pcm)) // AUDIO_BYTES_PER_MS
        if spoken_ms:
            speech.on_spoken(speech.text if sent_bytes >= len(pcm) else _part(speech.text, sent_bytes / len(pcm)),
                             spoken_ms)


def _part(text: str, fraction: float) -> str:
    """The first ``fraction`` of a sentence's words (what of it was sent as audio)."""
    words = text.split()
    return " ".join(words[: int(len(words) * fraction)])
