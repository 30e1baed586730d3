"""The state machine of one Realtime transcription session. Pure module: no
asyncio, no websockets, no clock (callers pass ``now_ms``).

Events go in (the input entries the engine is fed, the server events it
reads), actions come out (:class:`Send` a client event, or a :class:`Delta`,
:class:`Final` or :class:`Skip` for the sink). The I/O edge (the engine)
performs the actions in the order given.

Input entries become utterances; committed audio becomes items; transcripts
come back per item, possibly out of order, and are released strictly in
commit order. An utterance keeps its audio until its final so it can be
re-sent on a new connection.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from shared.realtime.client_events import InputAudioBufferAppend, InputAudioBufferClear, InputAudioBufferCommit
from shared.realtime.server_events import (
    ErrorEvent,
    InputAudioBufferCommitted,
    ServerEvent,
    TranscriptionCompleted,
    TranscriptionDelta,
    TranscriptionFailed,
)
from shared.realtime.session_common import EventIds, Send
from shared.realtime.session_config import (
    MAX_UTTERANCE_BYTES,
    MIN_COMMIT_BYTES,
    MIN_COMMIT_MS,
    PCM_RATE_HZ,
    PCM_SAMPLE_BYTES,
)
from shared.realtime.transcription_actions import (
    Delta,
    Final,
    Reject,
    Skip,
    TranscriptionAction,
    TurnDetection,
)


@dataclass
class _Utterance:
    entry_ids: list[str] = field(default_factory=list)
    utterance_id: str | None = None
    chunks: list[str] = field(default_factory=list)  # base64, as received: re-sent verbatim on reconnect
    audio_bytes: int = 0
    sent_ms: int | None = None
    #: A text utterance (``utterance.text``) carries its transcript already.
    text: str | None = None
    item_id: str | None = None
    commit_event_id: str | None = None
    result: tuple[Literal["final", "failed"], str] | None = None
    #: Why this utterance was refused (its audio went over the cap): its later entries
    #: are refused too, up to its ``audio.end``.
    refused: str | None = None

    def name(self) -> str:
        if self.utterance_id:
            return self.utterance_id
        if self.item_id:
            return self.item_id
        # Entry ids ("1712345678901-0") fit the Ident pattern of the entry models.
        return f"u{self.entry_ids[0]}" if self.entry_ids else "u-unknown"


class TranscriptionState:
    """Bookkeeping of one transcription session.

    Call order: ``text`` / ``chunk`` / ``end`` for input entries in stream
    order; ``on_event`` for every server event; ``on_reconnect`` right after a
    new connection's ``session.update`` (before any other send); ``flush``
    when the conversation ends; ``abandon`` when giving up.

    Utterance boundaries: in ``client`` mode an ``audio.end`` closes the
    utterance and the client commits it (never an empty or < 100 ms buffer:
    such an utterance is skipped and its audio cleared). In ``server_vad``
    mode the server commits, and ``input_audio_buffer.committed`` closes the
    utterance with every input entry fed since the previous commit; an
    ``audio.end`` only gives it its ``sent_ms``.

    Size: an utterance whose audio would pass ``max_utterance_bytes`` is
    refused (:class:`Reject`: dead-lettered) with every entry it has so far, and
    its audio is cleared upstream. In ``client`` mode its later entries are
    refused as they come, up to its ``audio.end``; with ``server_vad`` the next
    chunk starts afresh (the server's VAD makes the boundaries there).

    Ordering: results are released in commit order. Client mode: our own
    commit order (committed events are matched to commits first in, first
    out). Server VAD: an item is placed after its ``previous_item_id``. Text
    utterances take their place in the same queue, so a typed utterance never
    overtakes an earlier spoken one.
    """

    def __init__(
        self,
        turn_detection: TurnDetection = "client",
        min_commit_bytes: int = MIN_COMMIT_BYTES,
        max_utterance_bytes: int = MAX_UTTERANCE_BYTES,
    ) -> None:
        self.turn_detection: TurnDetection = turn_detection
        self.min_commit_bytes = min_commit_bytes
        self.max_utterance_bytes = max_utterance_bytes
        self._open: _Utterance | None = None
        self._queue: list[_Utterance] = []
        self._by_item: dict[str, _Utterance] = {}
        # A transcript for an item whose commit we have not seen yet.
        self._early: dict[str, tuple[Literal["final", "failed"], str]] = {}
        self._event_ids = EventIds()
        # Recently released utterance ids (server VAD: late entries of them are skipped).
        self._released: deque[str] = deque(maxlen=64)

    # --- introspection

    @property
    def outstanding(self) -> int:
        """Utterances closed but not released yet (what ``flush`` waits for)."""
        return len(self._queue)

    @property
    def has_open_audio(self) -> bool:
        return self._open is not None and bool(self._open.entry_ids)

    def item_utterance(self, item_id: str) -> str | None:
        u = self._by_item.get(item_id)
        return u.name() if u else None

    # --- input entries

    def text(self, entry_id: str, utterance_id: str, text: str, sent_ms: int) -> list[TranscriptionAction]:
        """A typed utterance: its text is its transcript (no upstream call)."""
        u = _Utterance(entry_ids=[entry_id], utterance_id=utterance_id, sent_ms=sent_ms, text=text)
        u.result = ("final", text)
        self._queue.append(u)
        return self._release()

    def chunk(self, entry_id: str, utterance_id: str | None, audio_b64: str, n_bytes: int) -> list[TranscriptionAction]:
        if self.turn_detection == "server_vad" and utterance_id:
            late = self._after_vad_commit(entry_id, utterance_id, None)
            if late is not None:
                # Trailing audio of an utterance the server already committed: it still goes
                # into the buffer (the VAD needs it), its entry goes with that utterance.
                return [Send(InputAudioBufferAppend(audio=audio_b64)), *late] if n_bytes > 0 else late
        u = self._open
        if u is None:
            u = self._open = _Utterance()
        if u.refused is not None:
            return [Reject((entry_id,), u.refused, u.name(), first=False)]
        u.entry_ids.append(entry_id)
        if utterance_id and not u.utterance_id:
            u.utterance_id = utterance_id
        if n_bytes <= 0:
            return []
        if u.audio_bytes + n_bytes > self.max_utterance_bytes:
            return self._refuse(u)
        u.chunks.append(audio_b64)
        u.audio_bytes += n_bytes
        return [Send(InputAudioBufferAppend(audio=audio_b64))]

    def _refuse(self, u: _Utterance) -> list[TranscriptionAction]:
        """``u``'s audio would pass the cap: refuse what it has, drop its audio here
        and upstream. Client mode: it stays open, refusing its entries up to its end."""
        seconds = self.max_utterance_bytes / (PCM_RATE_HZ * PCM_SAMPLE_BYTES)
        reason = f"utterance over {seconds:g} s of audio, the most one utterance may have"
        actions: list[TranscriptionAction] = [Send(InputAudioBufferClear())] if u.audio_bytes else []
        actions.append(Reject(tuple(u.entry_ids), reason, u.name()))
        if self.turn_detection == "server_vad":
            self._open = None
        else:
            u.refused = reason
            u.entry_ids, u.chunks, u.audio_bytes = [], [], 0
        return actions

    def end(self, entry_id: str, utterance_id: str | None, sent_ms: int) -> list[TranscriptionAction]:
        if self.turn_detection == "server_vad":
            return self._end_server_vad(entry_id, utterance_id, sent_ms)
        u = self._open or _Utterance()
        self._open = None
        if u.refused is not None:
            return [Reject((*u.entry_ids, entry_id), u.refused, u.name(), first=False)]
        u.entry_ids.append(entry_id)
        u.sent_ms = sent_ms
        if utterance_id:
            u.utterance_id = utterance_id
        return self._close_by_client(u)

    def _after_vad_commit(
        self, entry_id: str, utterance_id: str, sent_ms: int | None
    ) -> list[TranscriptionAction] | None:
        """Server VAD: an entry of an utterance the server committed already.
        Returns None when the entry belongs to the open utterance instead."""
        if self._open is not None and self._open.utterance_id == utterance_id:
            return None
        for u in self._queue:
            if u.text is None and u.utterance_id == utterance_id:
                u.entry_ids.append(entry_id)
                if sent_ms is not None:
                    u.sent_ms = sent_ms
                return []
        if utterance_id in self._released:
            return [Skip((entry_id,), "audio after its utterance was transcribed", utterance_id)]
        return None

    def _end_server_vad(self, entry_id: str, utterance_id: str | None, sent_ms: int) -> list[TranscriptionAction]:
        if utterance_id:
            late = self._after_vad_commit(entry_id, utterance_id, sent_ms)
            if late is not None:
                return late
        if self._open is not None and self._open.audio_bytes:
            # Speech still buffered: the server's commit will close this utterance.
            self._open.entry_ids.append(entry_id)
            self._open.sent_ms = sent_ms
            if utterance_id:
                self._open.utterance_id = utterance_id
            return []
        # The server committed before the client's end arrived: it belongs to the last commit.
        for u in reversed(self._queue):
            if u.text is None:
                u.entry_ids.append(entry_id)
                u.sent_ms = sent_ms
                return []
        return [Skip((entry_id,), "audio.end after its utterance was transcribed", utterance_id)]

    def _close_by_client(self, u: _Utterance) -> list[TranscriptionAction]:
        """Commit ``u`` or skip it when the API would refuse the commit."""
        if u.audio_bytes < self.min_commit_bytes:
            actions: list[TranscriptionAction] = []
            if u.audio_bytes:
                # Drop the stray audio so it does not leak into the next utterance.
                actions.append(Send(InputAudioBufferClear()))
            ms = u.audio_bytes * MIN_COMMIT_MS // self.min_commit_bytes if self.min_commit_bytes else 0
            reason = (
                "empty audio buffer" if not u.audio_bytes
                else f"{ms} ms of audio, under the {MIN_COMMIT_MS} ms minimum"
            )
            actions.append(Skip(tuple(u.entry_ids), reason, u.name()))
            return actions
        u.commit_event_id = self._event_ids.new("commit")
        self._queue.append(u)
        return [Send(InputAudioBufferCommit(event_id=u.commit_event_id))]

    def flush(self, now_ms: int) -> list[TranscriptionAction]:
        """The conversation ends: close the open utterance (commit it when it
        has enough audio, else skip it). Then wait for ``outstanding == 0``."""
        u = self._open
        if u is None or not u.entry_ids:
            return []
        self._open = None
        if u.sent_ms is None:
            u.sent_ms = now_ms
        return self._close_by_client(u)

    def abandon(self, reason: str) -> list[TranscriptionAction]:
        """Give up on everything not released yet: skip it all, in order."""
        actions: list[TranscriptionAction] = []
        pending = list(self._queue)
        if self._open is not None and self._open.entry_ids:
            pending.append(self._open)
        for u in pending:
            if u.result is not None and u.result[0] == "final" and u.text is not None:
                # A typed utterance blocked behind a stuck one still has its transcript.
                actions.append(Final(u.name(), u.text, u.sent_ms or 0, tuple(u.entry_ids)))
            else:
                actions.append(Skip(tuple(u.entry_ids), reason, u.name(), failed=True))
        self._queue.clear()
        self._open = None
        self._by_item.clear()
        self._early.clear()
        return actions

    # --- server events

    def on_event(self, event: ServerEvent, now_ms: int) -> list[TranscriptionAction]:
        """Apply one server event. Events that need no action return []."""
        if isinstance(event, InputAudioBufferCommitted):
            return self._committed(event, now_ms)
        if isinstance(event, TranscriptionDelta):
            u = self._by_item.get(event.item_id)
            return [Delta(u.name(), event.delta)] if u is not None and event.delta else []
        if isinstance(event, TranscriptionCompleted):
            return self._resolve(event.item_id, ("final", event.transcript))
        if isinstance(event, TranscriptionFailed):
            err = event.error
            why = f"transcription failed: {err.code or err.type}: {err.message}"
            return self._resolve(event.item_id, ("failed", why))
        if isinstance(event, ErrorEvent) and event.error.event_id:
            for u in self._queue:
                if u.commit_event_id == event.error.event_id and u.item_id is None:
                    # A skip writes nothing, so it needs no place in the order: ack it at once.
                    self._queue.remove(u)
                    why = f"commit refused: {event.error.code}: {event.error.message}"
                    return [Skip(tuple(u.entry_ids), why, u.name(), failed=True), *self._release()]
        return []

    def _committed(self, event: InputAudioBufferCommitted, now_ms: int) -> list[TranscriptionAction]:
        u = next((q for q in self._queue if q.text is None and q.item_id is None and q.commit_event_id), None)
        if u is None:
            if self.turn_detection != "server_vad":
                return []  # not ours (e.g. a server VAD we did not ask for): nothing to map it to
            u = self._open or _Utterance()
            self._open = None
            if u.sent_ms is None:
                u.sent_ms = now_ms
            position = len(self._queue)
            if event.previous_item_id is not None:
                for i, q in enumerate(self._queue):
                    if q.item_id == event.previous_item_id:
                        position = i + 1
                        break
            self._queue.insert(position, u)
        u.item_id = event.item_id
        self._by_item[event.item_id] = u
        early = self._early.pop(event.item_id, None)
        if early is not None:
            return self._resolve(event.item_id, early)
        return []

    def _resolve(self, item_id: str, result: tuple[Literal["final", "failed"], str]) -> list[TranscriptionAction]:
        u = self._by_item.get(item_id)
        if u is None:
            self._early[item_id] = result
            return []
        if u.result is None:
            u.result = result
        return self._release()

    def _release(self) -> list[TranscriptionAction]:
        actions: list[TranscriptionAction] = []
        while self._queue and self._queue[0].result is not None:
            u = self._queue.pop(0)
            if u.utterance_id:
                self._released.append(u.utterance_id)
            if u.item_id is not None:
                self._by_item.pop(u.item_id, None)
            assert u.result is not None
            kind, text = u.result
            if kind == "failed":
                actions.append(Skip(tuple(u.entry_ids), text, u.name(), failed=True))
            elif u.text is None and not text.strip():
                actions.append(Skip(tuple(u.entry_ids), "no speech recognised in the audio", u.name()))
            else:
                actions.append(Final(u.name(), text, u.sent_ms or 0, tuple(u.entry_ids)))
        return actions

    # --- reconnects

    def on_reconnect(self) -> list[TranscriptionAction]:
        """A new connection (a new upstream session) is set up: item ids of the
        old one mean nothing now. Client mode: re-send the audio of every
        utterance still waiting for its transcript and commit it again, then
        the open utterance's audio. Server VAD: utterances the server had
        committed are failed (re-sent audio would be committed again by the
        new session's VAD at boundaries we cannot match); the open one's audio
        is re-sent."""
        self._by_item.clear()
        self._early.clear()
        actions: list[TranscriptionAction] = []
        for u in list(self._queue):
            if u.text is not None or u.result is not None:
                continue
            u.item_id = None
            if self.turn_detection == "server_vad" and u.commit_event_id is None:
                u.result = ("failed", "the connection dropped before its transcript arrived")
                continue
            actions.extend(Send(InputAudioBufferAppend(audio=c)) for c in u.chunks)
            u.commit_event_id = self._event_ids.new("commit")
            actions.append(Send(InputAudioBufferCommit(event_id=u.commit_event_id)))
        if self._open is not None:
            actions.extend(Send(InputAudioBufferAppend(audio=c)) for c in self._open.chunks)
        actions.extend(self._release())
        return actions
