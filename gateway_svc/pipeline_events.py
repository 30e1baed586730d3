"""Pipeline entries -> Realtime server events, for one session.

The transcripts stream gives the input-transcription events of audio turns; the
responses stream gives each answer's frame (``response.created`` ... deltas ...
``response.done``). An answer's text may come as deltas, as a ``response.done``
that carries all of it (the worker coalesces what it had not sent), or as a
mix: what the deltas did not give is sent as one last delta. With audio out,
complete sentences are spoken as they arrive, so the first audio does not wait
for the whole answer.

Ids: an audio turn's item id starts with ``item_a``, a text turn's with
``item_t`` (the pipeline's utterance id is the item id, so this survives a
resume); a response's id is ``resp_<pipeline response id>`` and its item's
``item_r<pipeline response id>``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway_svc import events
from gateway_svc.outbox import Mark, Outbox, Speech
from gateway_svc.speech_out import SentenceSplitter
from shared.models import (
    Entry,
    ResponseDelta,
    ResponseDone,
    ResponseFailed,
    ResponseStarted,
    TranscriptDelta,
    TranscriptFailed,
    TranscriptFinal,
)

AUDIO_ITEM_PREFIX = "item_a"
TEXT_ITEM_PREFIX = "item_t"
REQUEST_PREFIX = "req_"
#: Per-request output modalities remembered (``response.create`` overrides).
_MAX_REMEMBERED = 256


def _remember(memory: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Add to one of a session's memories of recent ids, forgetting the oldest past
    ``_MAX_REMEMBERED``: a long session keeps a bounded view."""
    memory[key] = value
    while len(memory) > _MAX_REMEMBERED:
        memory.popitem(last=False)


@dataclass
class LiveResponse:
    """An answer being relayed to the client."""

    response_id: str
    item_id: str
    utterance_id: str
    audio: bool
    voice: str
    text: str = ""
    next_index: int = 0
    #: Its frame has ended (done, failed or cancelled): later text is not sent.
    ended: bool = False
    cancelled: bool = False
    #: The first piece may end at a clause of 4 words or more: the first audio sooner.
    splitter: SentenceSplitter = field(default_factory=lambda: SentenceSplitter(first_clause_words=4))
    #: (text, ms) of each sentence whose audio went out, in order.
    spoken: list[tuple[str, int]] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        return ["audio"] if self.audio else ["text"]

    def spoken_out(self, text: str, ms: int) -> None:
        self.spoken.append((text, ms))

    @property
    def audio_ms(self) -> int:
        return sum(ms for _, ms in self.spoken)

    def heard_text(self, audio_end_ms: int | None = None) -> str:
        """The answer's text up to ``audio_end_ms`` of its audio (None: all that went out);
        within a sentence, its words in proportion to the time played."""
        return heard_text(self.spoken, self.audio_ms if audio_end_ms is None else audio_end_ms)


def heard_text(spoken: list[tuple[str, int]], audio_end_ms: int) -> str:
    """What of a spoken answer (sentences with their audio lengths) was heard by ``audio_end_ms``."""
    heard: list[str] = []
    at = 0
    for text, ms in spoken:
        if at + ms <= audio_end_ms:
            heard.append(text)
        else:
            words = text.split()
            cut = int(len(words) * max(0, audio_end_ms - at) / ms) if ms else 0
            if cut:
                heard.append(" ".join(words[:cut]))
            break
        at += ms
    return " ".join(heard)


class PipelineEvents:
    """Turns the entries of one conversation into server events on ``outbox``."""

    def __init__(self, outbox: Outbox, conversation_id: str, audio_out: Callable[[], bool],
                 voice: Callable[[], str]) -> None:
        self.outbox = outbox
        self.conversation_id = conversation_id
        self._audio_out = audio_out
        self._voice = voice
        self.live: LiveResponse | None = None
        #: Set while no answer's frame is open (a gateway's drain waits for it).
        self.no_live_answer = asyncio.Event()
        self.no_live_answer.set()
        #: Responses whose frame has ended (done, failed or cancelled): later entries
        #: of theirs (a cancelled answer's deltas and done) send nothing.
        self._ended: OrderedDict[str, None] = OrderedDict()
        #: Utterances whose answer was cancelled: nothing more is sent for them.
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        #: The answer whose frame ended last (its audio may still be going out).
        self._last: LiveResponse | None = None
        #: Recent answers by item id (a truncation names the item).
        self.recent: OrderedDict[str, LiveResponse] = OrderedDict()
        #: request id -> its ``response.create`` output modalities.
        self.requested: OrderedDict[str, list[str]] = OrderedDict()

    def remember_request(self, request_id: str, modalities: list[str]) -> None:
        _remember(self.requested, request_id, modalities)

    def handle(self, kind: str, entry_id: str, entry: Entry) -> None:
        if kind == "transcripts":
            self._transcript(entry_id, entry)
        else:
            self._response(entry_id, entry)

    # --- transcripts ---------------------------------------------------------------------

    def _transcript(self, entry_id: str, entry: Entry) -> None:
        out = self.outbox
        if isinstance(entry, TranscriptDelta) and entry.utterance_id.startswith(AUDIO_ITEM_PREFIX):
            out.event("conversation.item.input_audio_transcription.delta", item_id=entry.utterance_id,
                      content_index=0, delta=entry.text)
        elif isinstance(entry, TranscriptFinal):
            if entry.utterance_id.startswith(AUDIO_ITEM_PREFIX):
                out.event("conversation.item.input_audio_transcription.completed", item_id=entry.utterance_id,
                          content_index=0, transcript=entry.text,
                          usage={"type": "duration", "seconds": 0})
                out.event("conversation.item.done", item=events.user_audio_item(entry.utterance_id, entry.text))
            out.put(Mark("transcripts", entry_id))
        elif isinstance(entry, TranscriptFailed):
            if entry.utterance_id.startswith(AUDIO_ITEM_PREFIX):
                out.event("conversation.item.input_audio_transcription.failed", item_id=entry.utterance_id,
                          content_index=0, error={"type": "transcription_error", "code": entry.code,
                                                  "message": entry.reason, "param": None})
            out.put(Mark("transcripts", entry_id))

    # --- responses -----------------------------------------------------------------------

    def _response(self, entry_id: str, entry: Entry) -> None:
        if isinstance(entry, ResponseStarted):
            self._open(entry.utterance_id, entry.response_id)
        elif isinstance(entry, ResponseDelta):
            live = self._open(entry.utterance_id, entry.response_id)
            if entry.index >= live.next_index:  # deltas are at-least-once: drop a repeat
                live.next_index = entry.index + 1
                self._text(live, entry.delta)
        elif isinstance(entry, ResponseDone):
            live = self._open(entry.utterance_id, entry.response_id)
            if entry.text.startswith(live.text) and len(entry.text) > len(live.text):
                self._text(live, entry.text[len(live.text):])
            self._close(live, "completed", entry.usage.model_dump(), None)
            self.outbox.put(Mark("responses", entry_id))
        elif isinstance(entry, ResponseFailed):
            live = self._open(entry.utterance_id, entry.response_id)
            details = {"type": "failed", "reason": None,
                       "error": {"type": "server_error", "code": entry.code, "message": entry.reason}}
            self._close(live, "failed", None, details)
            self.outbox.put(Mark("responses", entry_id))

    def _open(self, utterance_id: str, pipeline_response_id: str) -> LiveResponse:
        live = self.live
        response_id = f"resp_{pipeline_response_id}"
        if live is not None and live.response_id == response_id:
            return live
        if response_id in self._ended or utterance_id in self._cancelled:
            # Detached: what comes for it is dropped (also a new owner's second try at a
            # cancelled answer, under another response id, after a takeover).
            return LiveResponse(response_id, "", utterance_id, False, "", ended=True)
        if live is not None:  # a new answer while one was open (cannot happen in order): close it
            self._close(live, "incomplete", None, {"type": "incomplete", "reason": "interrupted"})
        modalities = self.requested.pop(utterance_id, None)
        audio = modalities == ["audio"] if modalities is not None else self._audio_out()
        self.no_live_answer.clear()
        live = self.live = LiveResponse(response_id=response_id,
                                        item_id=f"item_r{pipeline_response_id}"[:64],
                                        utterance_id=utterance_id, audio=audio, voice=self._voice())
        _remember(self.recent, live.item_id, live)
        emit = self._emitter(live)
        emit("response.created", response=events.response_object(
            live.response_id, self.conversation_id, "in_progress", live.modalities, []))
        item = events.assistant_item(live.item_id, live.audio, None, "in_progress")
        emit("response.output_item.added", response_id=live.response_id, output_index=0, item=item)
        emit("conversation.item.added", item=item, previous_item_id=None)
        part = {"type": "audio", "transcript": ""} if live.audio else {"type": "text", "text": ""}
        emit("response.content_part.added", response_id=live.response_id, item_id=live.item_id,
             output_index=0, content_index=0, part=part)
        return live

    def _emitter(self, live: LiveResponse) -> Callable[..., None]:
        """Queue an event of ``live``'s frame (tagged: an interruption drops what is still queued)."""
        def emit(type_: str, **fields: object) -> None:
            self.outbox.event(type_, tag=live.response_id, **fields)
        return emit

    def _text(self, live: LiveResponse, delta: str) -> None:
        live.text += delta
        if live.ended:
            return
        emit = self._emitter(live)
        ids = {"response_id": live.response_id, "item_id": live.item_id, "output_index": 0, "content_index": 0}
        if live.audio:
            emit("response.output_audio_transcript.delta", delta=delta, **ids)
            for sentence in live.splitter.feed(delta):
                self._speak(live, sentence)
        else:
            emit("response.output_text.delta", delta=delta, **ids)

    def _speak(self, live: LiveResponse, sentence: str) -> None:
        if sentence.strip():
            self.outbox.put(Speech(sentence, live.voice, live.response_id, live.item_id, live.spoken_out),
                            tag=live.response_id)

    def cancel(self) -> LiveResponse | None:
        """Interrupt the answer the client is getting: the one whose frame is open, or
        the last one whose events or audio are still queued. What of it is queued is
        dropped and its frame ends ``cancelled`` now; returns it (None: nothing to cancel)."""
        target = self.live
        if target is None and self._last is not None and self.outbox.holds(self._last.response_id):
            target = self._last
        if target is None or target.cancelled:
            return None
        self.outbox.drop(target.response_id)
        _remember(self._cancelled, target.utterance_id, None)
        target.ended = False  # its queued end (if any) was dropped: send the cancelled one
        self._close(target, "cancelled", None, {"type": "cancelled", "reason": "turn_detected"})
        return target

    def _close(self, live: LiveResponse, status: str, usage: dict[str, int] | None,
               details: Mapping[str, object] | None) -> None:
        """Send the end of the answer's frame (once; a cancelled answer's later done is silent)."""
        if self.live is live:
            self.live = None
            self.no_live_answer.set()
        if live.ended:
            return
        live.ended = True
        live.cancelled = status == "cancelled"
        self._last = live
        _remember(self._ended, live.response_id, None)
        if live.audio and status == "completed":
            self._speak(live, live.splitter.flush())
        emit = self._emitter(live)
        ids = {"response_id": live.response_id, "item_id": live.item_id, "output_index": 0, "content_index": 0}
        text = live.heard_text() if live.cancelled and live.audio else live.text
        item_status = "completed" if status == "completed" else "incomplete"
        if live.audio:
            emit("response.output_audio.done", **ids)
            emit("response.output_audio_transcript.done", transcript=text, **ids)
            part = {"type": "audio", "transcript": text}
        else:
            emit("response.output_text.done", text=text, **ids)
            part = {"type": "text", "text": text}
        emit("response.content_part.done", part=part, **ids)
        item = events.assistant_item(live.item_id, live.audio, text, item_status)
        emit("response.output_item.done", response_id=live.response_id, output_index=0, item=item)
        emit("conversation.item.done", item=item)
        emit("response.done", response=events.response_object(
            live.response_id, self.conversation_id, status, live.modalities, [item],
            usage=events.usage_object(usage or {}), status_details=dict(details) if details else None))
