"""One simulated conversation through the gateway: one WebSocket speaking the
Realtime protocol, as any client of the API would.

:func:`open_conversation` connects, waits for ``session.created``, configures
the session (text turns without VAD, or the default server VAD for speech)
and starts the reader. The reader turns server events into the tracker's
records and the printer's lines; the sender (:meth:`GatewayConversation.say`
or :meth:`~GatewayConversation.speak`) sends one utterance, and
:meth:`~GatewayConversation.wait_answer` waits for its ``response.done``.

Latency origins (``sent_ms``): a text turn's ``response.create``; a spoken
turn's end of speech (the audio after it is silence, for the server VAD).

Interruptions: :meth:`~GatewayConversation.wait_output` waits for an answer's
first output (its first audio delta when spoken, else its first text delta);
the client then cuts it off by speaking over it (``speak(..., interrupting=)``:
the server VAD hears the speech and the gateway cancels the answer) or with
:meth:`~GatewayConversation.cancel` (``response.cancel``). Either way the
tracker is told when the interruption began: the send of the first voiced
audio (``onset_ms`` into the utterance's PCM), or of the cancel.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from simulator_svc import realtime_client as rt
from simulator_svc.simulator import DialoguePrinter, now_ms
from simulator_svc.tracker import Tracker

log = logging.getLogger(__name__)

#: Silence appended after each spoken utterance: the server VAD ends a turn after 500 ms of it.
TRAILING_SILENCE_MS = 1000
#: The handshake and the session's first events (session.created, session.updated).
OPEN_TIMEOUT_S = 15.0
#: Larger than any event the gateway sends (audio deltas come in pieces).
MAX_EVENT_BYTES = 8 * 2**20


class ConnectFailed(RuntimeError):
    """The gateway refused the socket or the session's setup; the message says why."""


class ConversationLost(RuntimeError):
    """The socket ended before the conversation did; the message says how."""


def utterance_id(index: int) -> str:
    return f"u{index:04d}"


class GatewayConversation:
    def __init__(self, ws: ClientConnection, conversation_id: str, tracker: Tracker,
                 printer: DialoguePrinter) -> None:
        self.ws = ws
        self.conversation_id = conversation_id
        self.tracker = tracker
        self.printer = printer
        self.matcher = rt.ResponseMatcher()
        self.timeline = rt.AudioTimeline()
        #: Error events the gateway sent on this socket.
        self.errors = 0
        #: Why the socket ended before its close (None while open).
        self.lost: str | None = None
        self._answered: dict[str, asyncio.Event] = {}
        #: Set at an answer's first output delta (or its end): an interruption may begin.
        self._output: dict[str, asyncio.Event] = {}
        #: event_id of a response.cancel -> the utterance whose answer it cancels.
        self._cancel_of: dict[str, str] = {}
        #: The utterance whose answer the speech being sent is meant to cut off.
        self._interrupting: str | None = None
        #: Cancels that came too late: the answer had ended (the gateway says so in an error).
        self.late_cancels = 0
        #: event_id of a conversation.item.create / response.create -> its utterance.
        self._asked_by: dict[str, str] = {}
        #: audio item id (server VAD turn) -> the utterance it was cut from.
        self._item_utterance: dict[str, str] = {}
        self._deltas_printed = 0
        self._reader: asyncio.Task[None] | None = None

    # --- sending -----------------------------------------------------------------------------

    async def _send(self, event: rt.Event) -> None:
        await self.ws.send(json.dumps(event))

    def _register(self, index: int, text: str) -> str:
        uid = utterance_id(index)
        self.tracker.sent(self.conversation_id, uid, index, text, now_ms())
        self._answered[uid] = asyncio.Event()
        self._output[uid] = asyncio.Event()
        return uid

    async def say(self, index: int, text: str) -> str:
        """A text turn in the two steps of the API: the user message, then response.create."""
        self.printer.sending(self.conversation_id, text)
        uid = self._register(index, text)
        # Expected before it is asked for: the reader may see response.created before this resumes.
        self.matcher.expect(uid)
        self._asked_by[f"evt_{uid}_item"] = uid
        self._asked_by[f"evt_{uid}_response"] = uid
        await self._send(rt.user_text(text, f"evt_{uid}_item"))
        await self._send(rt.response_create(f"evt_{uid}_response"))
        self.tracker.records[(self.conversation_id, uid)].sent_ms = now_ms()
        return uid

    async def speak(self, index: int, text: str, pcm: bytes, chunk_ms: float, realtime_factor: float,
                    onset_ms: float | None = None, interrupting: str | None = None) -> str:
        """Append ``pcm`` (then silence) in ``chunk_ms`` pieces at ``realtime_factor`` x real time;
        the server VAD commits the turn and answers it. With ``interrupting`` (an utterance whose
        answer is under way), the speech is meant to cut that answer off: the send of the piece
        holding ``onset_ms`` (where the voice begins in ``pcm``) is when the interruption began."""
        from shared.audio import chunk_pcm, silence_pcm  # numpy: audio mode only
        from shared.models import AUDIO_SAMPLE_RATE_HZ

        self.printer.speaking(self.conversation_id, text, len(pcm) / (rt.BYTES_PER_MS * 1000))
        uid = self._register(index, text)
        self.timeline.begin(uid)
        audio = pcm + silence_pcm(TRAILING_SILENCE_MS, AUDIO_SAMPLE_RATE_HZ)
        step_s = chunk_ms / 1000 / realtime_factor
        onset_piece = int((onset_ms or 0.0) // chunk_ms) if interrupting is not None else -1
        self._interrupting = interrupting
        started, wall_started_ms = time.monotonic(), now_ms()
        for n, piece in enumerate(chunk_pcm(audio, chunk_ms, AUDIO_SAMPLE_RATE_HZ)):
            delay_s = started + n * step_s - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            if n == onset_piece and interrupting is not None:
                self.tracker.interrupting(self.conversation_id, interrupting, now_ms())
            await self._send(rt.audio_append(piece, f"evt_{uid}_a{n}"))
            self.timeline.appended(piece)
        # Latency counts from the end of speech, as a listener would: not from the end of the silence.
        speech_s = len(pcm) / (rt.BYTES_PER_MS * 1000)
        self.tracker.records[(self.conversation_id, uid)].sent_ms = wall_started_ms + speech_s * 1000 / realtime_factor
        return uid

    async def wait_output(self, uid: str) -> None:
        """Until ``uid``'s answer sends its first output (audio delta, or text delta of a text
        answer), or ends, or the socket does."""
        await self._output[uid].wait()

    async def cancel(self, uid: str) -> None:
        """Cancel ``uid``'s answer (response.cancel); its response.done comes ``cancelled``, or
        completed if it ended first (the gateway then answers the cancel with an error)."""
        event_id = f"evt_{uid}_cancel"
        self._cancel_of[event_id] = uid
        self.tracker.interrupting(self.conversation_id, uid, now_ms())
        await self._send(rt.response_cancel(event_id))

    async def wait_answer(self, uid: str) -> None:
        """Until ``uid`` has its response.done (or failed); raises ConversationLost if the socket ended first."""
        await self._answered[uid].wait()
        if self.lost is not None and not self.settled(uid):
            raise ConversationLost(self.lost)

    async def close(self) -> None:
        await self.ws.close()  # 1000: the gateway ends the conversation
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    # --- reading -----------------------------------------------------------------------------

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"sim-gw-{self.conversation_id}")

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.handle(json.loads(raw))
        except ConnectionClosed as exc:
            self.lost = f"the connection was lost ({exc})"
        finally:
            if self.lost is None and self.ws.close_code != 1000:
                self.lost = f"the gateway closed the connection (code {self.ws.close_code})"
            for event in (*self._answered.values(), *self._output.values()):  # nothing more will come
                event.set()

    def settled(self, uid: str) -> bool:
        """Has ``uid`` its response.done (or failed)?"""
        rec = self.tracker.records.get((self.conversation_id, uid))
        return rec is not None and (rec.dones > 0 or rec.failed is not None)

    def _settle(self, uid: str) -> None:
        for events in (self._answered, self._output):
            event = events.get(uid)
            if event is not None:
                event.set()

    def _output_began(self, uid: str) -> None:
        event = self._output.get(uid)
        if event is not None:
            event.set()

    def handle(self, event: rt.Event) -> None:
        """One server event."""
        handler = _HANDLERS.get(str(event.get("type")))
        if handler is not None:
            handler(self, event)

    def _error(self, event: rt.Event) -> None:
        reason = rt.error_text(event)
        client_event = (event.get("error") or {}).get("event_id")
        if client_event in self._cancel_of:
            # The answer ended before the cancel reached the gateway: a race the client loses
            # at times, not a fault (the answer's done, completed, settles it).
            self.late_cancels += 1
            log.info("[%s] cancel too late: %s", self.conversation_id, reason)
            return
        self.errors += 1
        uid = self._asked_by.get(client_event) if isinstance(client_event, str) else None
        if uid is None:
            log.warning("[%s] gateway error: %s", self.conversation_id, reason)
            return
        # A refused item or response.create: this utterance will get no answer.
        self.matcher.withdraw(uid)
        rec = self.tracker.failed(self.conversation_id, uid, reason)
        if rec is not None and rec.dones == 0:
            self.printer.failed(self.conversation_id, reason)
            self._settle(uid)

    def _item_done(self, event: rt.Event) -> None:
        item = event.get("item") or {}
        if item.get("role") != "user":
            return
        for part in item.get("content") or []:
            if part.get("type") == "input_text":  # the gateway has the text turn: as the transcriber relays it
                self.printer.transcript(self.conversation_id, str(part.get("text")))

    def _speech_stopped(self, event: rt.Event) -> None:
        uid = self.timeline.utterance_at(int(event.get("audio_end_ms") or 0))
        if uid is not None:
            self._item_utterance[str(event.get("item_id"))] = uid

    def _speech_started(self, event: rt.Event) -> None:
        if self._interrupting is not None:  # the speech over an answer: the gateway heard it
            self.tracker.interruption_heard(self.conversation_id, self._interrupting, now_ms())
            self._interrupting = None

    def _committed(self, event: rt.Event) -> None:
        uid = self._item_utterance.get(str(event.get("item_id")))
        if uid is not None:
            self.matcher.expect(uid)

    def _transcript(self, event: rt.Event) -> None:
        uid = self._item_utterance.get(str(event.get("item_id")))
        if uid is None:
            return
        heard = str(event.get("transcript") or "")
        rec = self.tracker.transcript(self.conversation_id, uid, heard, now_ms())
        if rec is not None:
            self.printer.transcript(self.conversation_id, heard, rec.text)

    def _response_created(self, event: rt.Event) -> None:
        self.matcher.utterance_of(str((event.get("response") or {}).get("id")))

    def _text_delta(self, event: rt.Event) -> None:
        uid = self.matcher.utterance_of(str(event.get("response_id")))
        if uid is not None and self.tracker.delta(self.conversation_id, uid, now_ms()) is not None:
            self._deltas_printed += 1
            self.printer.delta(self.conversation_id, self._deltas_printed, str(event.get("delta") or ""))
            if event.get("type") == "response.output_text.delta":  # a spoken answer's output is its audio
                self._output_began(uid)

    def _audio_delta(self, event: rt.Event) -> None:
        uid = self.matcher.utterance_of(str(event.get("response_id")))
        if uid is not None:
            n_bytes = len(base64.b64decode(str(event.get("delta") or "")))
            self.tracker.audio(self.conversation_id, uid, n_bytes, now_ms())
            self._output_began(uid)

    def _response_done(self, event: rt.Event) -> None:
        response = event.get("response") or {}
        uid = self.matcher.utterance_of(str(response.get("id")))
        if uid is None:
            log.warning("[%s] an answer before any utterance: %s", self.conversation_id, response.get("id"))
            return
        reason = rt.failure_reason(response)
        if rt.is_cancelled(response):  # interrupted: its one done, with what was said by then
            rec = self.tracker.done(self.conversation_id, uid, rt.response_text(response), now_ms(), cancelled=True)
            if rec is not None and rec.dones == 1:
                self.printer.interrupted(self.conversation_id, rec.answer or "")
                self._settle(uid)
        elif reason is None:
            text = rt.response_text(response)
            rec = self.tracker.done(self.conversation_id, uid, text, now_ms())
            if rec is not None and rec.dones == 1:
                self.printer.done(self.conversation_id, text)
                self._settle(uid)
        else:
            rec = self.tracker.failed(self.conversation_id, uid, reason)
            if rec is not None and rec.dones == 0:
                self.printer.failed(self.conversation_id, reason)
                self._settle(uid)


_HANDLERS: dict[str, Callable[[GatewayConversation, rt.Event], None]] = {
    "error": GatewayConversation._error,
    "conversation.item.done": GatewayConversation._item_done,
    "input_audio_buffer.speech_started": GatewayConversation._speech_started,
    "input_audio_buffer.speech_stopped": GatewayConversation._speech_stopped,
    "input_audio_buffer.committed": GatewayConversation._committed,
    "conversation.item.input_audio_transcription.completed": GatewayConversation._transcript,
    "response.created": GatewayConversation._response_created,
    "response.output_text.delta": GatewayConversation._text_delta,
    "response.output_audio_transcript.delta": GatewayConversation._text_delta,
    "response.output_audio.delta": GatewayConversation._audio_delta,
    "response.done": GatewayConversation._response_done,
}


async def open_conversation(url: str, api_key: str | None, session_update: rt.Event, tracker: Tracker,
                            printer: DialoguePrinter) -> GatewayConversation:
    """Connect, set the session up, start reading; raises ConnectFailed."""
    try:
        # No permessage-deflate: base64 audio does not compress, and the machine's cores are shared.
        ws = await connect(url, additional_headers=rt.auth_headers(api_key), compression=None,
                           max_size=MAX_EVENT_BYTES, open_timeout=OPEN_TIMEOUT_S)
    except InvalidStatus as exc:
        raise ConnectFailed(f"the gateway refused the connection: HTTP {exc.response.status_code} "
                            f"{_refusal(exc.response.body)}") from None
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise ConnectFailed(f"cannot connect to {url}: {exc or type(exc).__name__}") from None
    try:
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            created = await _next_of(ws, "session.created")
            await ws.send(json.dumps(session_update))
            await _next_of(ws, "session.updated")
    except (ConnectionClosed, TimeoutError, ConnectFailed) as exc:
        await ws.close()
        raise ConnectFailed(f"the session was not set up: {exc or 'no answer in time'}") from None
    conversation = GatewayConversation(ws, str(created["session"]["conversation_id"]), tracker, printer)
    conversation.start_reading()
    return conversation


async def _next_of(ws: ClientConnection, type_: str) -> Any:
    """The next event of ``type_``; an ``error`` before it raises ConnectFailed."""
    while True:
        event = json.loads(await ws.recv())
        if event.get("type") == "error":
            raise ConnectFailed(rt.error_text(event))
        if event.get("type") == type_:
            return event


def _refusal(body: bytes | bytearray | None) -> str:
    """The message of the gateway's JSON error body (or the body's start)."""
    try:
        return str(json.loads(body or b"")["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return bytes(body or b"")[:200].decode(errors="replace")
