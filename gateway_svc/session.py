"""One Realtime session: the client events of the GA protocol, turned into
pipeline writes and immediate server events.

What the client says goes to the conversation's input stream; what comes back
(transcripts, answers) arrives through :class:`PipelineEvents`. A bad event
gets an ``error`` event (GA shape, naming the client's ``event_id``) and the
session goes on.

Turns:
- server VAD (the default): speech start and stop are found in the appended
  audio; a stopped turn is committed and written with ``respond`` =
  ``create_response``;
- ``turn_detection: null``: ``input_audio_buffer.commit`` writes the buffer,
  ``conversation.item.create`` a text turn, both with ``respond: false``; an
  answer comes only after ``response.create``, which is written to the input
  stream behind them (a ``response.request`` entry), so the two steps keep
  their order across processes.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from gateway_svc import events
from gateway_svc.outbox import Outbox
from gateway_svc.pipeline import PipelineWriter
from gateway_svc.pipeline_events import AUDIO_ITEM_PREFIX, REQUEST_PREFIX, TEXT_ITEM_PREFIX, PipelineEvents
from gateway_svc.resume import ResumeStore
from gateway_svc.session_config import ConfigError, SessionConfig
from gateway_svc.vad import ServerVad, ServerVadConfig, SpeechStarted, SpeechStopped
from shared.models import AUDIO_BYTES_PER_MS, MAX_TEXT_CHARS, is_ident, pcm16_problem

log = logging.getLogger(__name__)

#: A manual (``turn_detection: null``) buffer holds at most this much audio before a commit.
MAX_BUFFER_MS = 120_000
#: Shortest committed turn (the API refuses less than 100 ms).
MIN_COMMIT_MS = 100


class ClientError(Exception):
    """A client event the session refuses: becomes an ``error`` event."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.type = type_


def _new_item_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:20]}"


class RealtimeSession:
    def __init__(
        self,
        *,
        conversation_id: str,
        config: SessionConfig,
        outbox: Outbox,
        writer: PipelineWriter,
        store: ResumeStore,
        allow_instructions: bool,
        allow_audio: Callable[[float], str | None],
        started: bool,
    ) -> None:
        self.conversation_id = conversation_id
        self.session_id = events.new_id("sess")
        self.config = config
        self.outbox = outbox
        self.writer = writer
        self.store = store
        self.allow_instructions = allow_instructions
        #: Called with seconds of audio appended: None, or why it is refused (quota).
        self.allow_audio = allow_audio
        #: conversation.started was written (lazily, at the first turn; at once on a resume).
        self.started = started
        self.view = PipelineEvents(outbox, conversation_id, lambda: self.config.audio_out,
                                   lambda: self.config.voice)
        self.vad: ServerVad | None = None
        self._vad_item: str | None = None
        self._buffer = bytearray()
        self._buffer_start_ms = 0
        self._audio_ms = 0
        self._last_item: str | None = None
        self._reset_vad()

    # --- entry points --------------------------------------------------------------------------

    def hello(self) -> None:
        self.outbox.event("session.created", session=self.config.wire(self.session_id, self.conversation_id))

    async def handle(self, message: Any) -> None:
        """One client event (already parsed JSON)."""
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._error(ClientError("an event must be a JSON object with a string 'type'", "invalid_event"), None)
            return
        event_id = message.get("event_id") if isinstance(message.get("event_id"), str) else None
        handler = _HANDLERS.get(message["type"])
        if handler is None:
            self._error(ClientError(f"Invalid value: '{message['type'][:64]}'. Supported values are: "
                                    + ", ".join(sorted(_HANDLERS)) + ".", "invalid_value", "type"), event_id)
            return
        try:
            await handler(self, message)
        except ClientError as exc:
            self._error(exc, event_id)
        except ConfigError as exc:
            self._error(ClientError(str(exc), exc.code, exc.param), event_id)
        except ValidationError as exc:
            # An entry model refused what the checks above let through (a gateway bug, or
            # the container heuristic hit by a 1 s piece's first bytes): the client hears
            # of it, and the socket lives on.
            log.warning("an entry refused a %s event: %s", message["type"], exc.errors()[0]["msg"],
                        extra={"conversation_id": self.conversation_id})
            self._error(ClientError(f"the event could not be written: {exc.errors()[0]['msg']}",
                                    "invalid_value"), event_id)

    def _error(self, exc: ClientError, event_id: str | None) -> None:
        self.outbox.put(events.error(str(exc), type_=exc.type, code=exc.code, param=exc.param,
                                     client_event_id=event_id))

    async def _ensure_started(self) -> None:
        if not self.started:
            instructions = self.config.instructions if self.allow_instructions else None
            await self.writer.start(self.conversation_id, instructions or None)
            self.started = True

    # --- session -----------------------------------------------------------------------------

    async def _session_update(self, message: dict[str, Any]) -> None:
        if "session" not in message:
            raise ClientError("Missing required parameter: 'session'.", "missing_required_parameter", "session")
        if self.started and self.allow_instructions and "instructions" in (message["session"] or {}):
            raise ClientError("instructions can only be set before the conversation's first turn",
                              "invalid_value", "session.instructions")
        self.config = self.config.update(message["session"], self.allow_instructions)
        self._reset_vad()
        await self.store.save_session(self.conversation_id, self.config.to_json())
        self.outbox.event("session.updated", session=self.config.wire(self.session_id, self.conversation_id))

    def _reset_vad(self) -> None:
        td = self.config.turn_detection
        self.vad = ServerVad(ServerVadConfig.from_turn_detection(td)) if td is not None else None
        self._vad_item = None

    # --- input audio ---------------------------------------------------------------------------

    async def _append(self, message: dict[str, Any]) -> None:
        audio = message.get("audio")
        if not isinstance(audio, str):
            raise ClientError("Missing required parameter: 'audio'.", "missing_required_parameter", "audio")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ClientError("audio is not valid base64", "invalid_value", "audio") from None
        if not pcm:
            return
        # The input entries' own check, per append (where a client's file would start): such
        # audio used to pass here and then fail in the entry model, ending the socket.
        problem = pcm16_problem(pcm)
        if problem is not None:
            raise ClientError(problem, "invalid_value", "audio")
        refused = self.allow_audio(len(pcm) / AUDIO_BYTES_PER_MS / 1000)
        if refused is not None:
            raise ClientError(refused, "rate_limit_exceeded", "audio")
        if self.vad is None:
            if len(self._buffer) + len(pcm) > MAX_BUFFER_MS * AUDIO_BYTES_PER_MS:
                raise ClientError(f"the input audio buffer holds at most {MAX_BUFFER_MS // 1000} s: commit it",
                                  "input_audio_buffer_full", "audio")
            if not self._buffer:
                self._buffer_start_ms = self._audio_ms
            self._buffer += pcm
            self._audio_ms += len(pcm) // AUDIO_BYTES_PER_MS
            return
        self._audio_ms += len(pcm) // AUDIO_BYTES_PER_MS
        for vad_event in self.vad.feed(pcm):
            if isinstance(vad_event, SpeechStarted):
                self._vad_item = _new_item_id(AUDIO_ITEM_PREFIX)
                self.outbox.event("input_audio_buffer.speech_started", audio_start_ms=vad_event.audio_start_ms,
                                  item_id=self._vad_item)
                if self.config.interrupt_response:
                    await self._interrupt()
            elif isinstance(vad_event, SpeechStopped):
                item_id = self._vad_item or _new_item_id(AUDIO_ITEM_PREFIX)
                self._vad_item = None
                self.outbox.event("input_audio_buffer.speech_stopped", audio_end_ms=vad_event.audio_end_ms,
                                  item_id=item_id)
                await self._commit_turn(item_id, vad_event.audio, respond=self.config.create_response)

    async def _commit(self, message: dict[str, Any]) -> None:
        if self.vad is not None:
            raise ClientError("with server_vad, turns are committed by the server; set turn_detection to "
                              "null to commit yourself", "invalid_value", "type")
        if len(self._buffer) < MIN_COMMIT_MS * AUDIO_BYTES_PER_MS:
            raise ClientError(f"Error committing input audio buffer: buffer too small. Expected at least "
                              f"{MIN_COMMIT_MS}ms of audio, but buffer only has "
                              f"{len(self._buffer) // AUDIO_BYTES_PER_MS}ms of audio.",
                              "input_audio_buffer_commit_empty")
        pcm, self._buffer = bytes(self._buffer), bytearray()
        await self._commit_turn(_new_item_id(AUDIO_ITEM_PREFIX), pcm, respond=False)

    async def _commit_turn(self, item_id: str, pcm: bytes, respond: bool) -> None:
        await self._ensure_started()
        await self.writer.audio(self.conversation_id, item_id, pcm,
                                respond=respond and self.config.type == "realtime")
        self.outbox.event("input_audio_buffer.committed", item_id=item_id, previous_item_id=self._last_item)
        self.outbox.event("conversation.item.added", item=events.user_audio_item(item_id),
                          previous_item_id=self._last_item)
        self._last_item = item_id

    async def _clear(self, message: dict[str, Any]) -> None:
        self._buffer = bytearray()
        if self.vad is not None:
            self.vad.clear()
            self._vad_item = None
        self.outbox.event("input_audio_buffer.cleared")

    # --- items and responses -----------------------------------------------------------------------

    async def _item_create(self, message: dict[str, Any]) -> None:
        if self.config.type != "realtime":
            raise ClientError("a transcription session takes audio only", "invalid_value", "type")
        item = message.get("item")
        if not isinstance(item, dict):
            raise ClientError("Missing required parameter: 'item'.", "missing_required_parameter", "item")
        if item.get("type") != "message" or item.get("role") != "user":
            raise ClientError("only user messages can be created here (role 'user', type 'message')",
                              "invalid_value", "item.role")
        content = item.get("content")
        if not isinstance(content, list) or not content:
            raise ClientError("item.content must be a non-empty list", "invalid_value", "item.content")
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "input_text" or not isinstance(part.get("text"), str):
                raise ClientError("only input_text content is supported in conversation.item.create",
                                  "invalid_value", "item.content")
            texts.append(part["text"])
        text = "\n".join(texts)
        if len(text) > MAX_TEXT_CHARS:
            raise ClientError(f"text longer than {MAX_TEXT_CHARS} characters", "string_above_max_length",
                              "item.content")
        given_id = item.get("id")
        # The entry's id check itself (ASCII only; '.' aside, as before): a client id that
        # passed a looser check here failed in the entry model and ended the socket.
        if given_id is not None and (not is_ident(given_id, 32) or "." in given_id):
            raise ClientError("item.id must be up to 32 letters, digits, '_' or '-'", "invalid_value", "item.id")
        item_id = f"{TEXT_ITEM_PREFIX}{given_id}" if given_id else _new_item_id(TEXT_ITEM_PREFIX)
        await self._ensure_started()
        await self.writer.text(self.conversation_id, item_id, text, respond=False)
        wire_item = events.user_text_item(given_id or item_id, text)
        self.outbox.event("conversation.item.added", item=wire_item, previous_item_id=self._last_item)
        self.outbox.event("conversation.item.done", item=wire_item, previous_item_id=self._last_item)
        self._last_item = item_id

    async def _response_create(self, message: dict[str, Any]) -> None:
        if self.config.type != "realtime":
            raise ClientError("a transcription session gives no responses", "invalid_value", "type")
        if self.view.live is not None:
            raise ClientError(f"Conversation already has an active response in progress: "
                              f"{self.view.live.response_id}. Wait until the response is finished before "
                              "creating a new one.", "conversation_already_has_active_response")
        params = message.get("response") or {}
        if not isinstance(params, dict):
            raise ClientError("response must be an object", "invalid_value", "response")
        modalities = params.get("output_modalities")
        if modalities is not None and modalities not in (["text"], ["audio"]):
            raise ClientError('output_modalities must be ["text"] or ["audio"]', "invalid_value",
                              "response.output_modalities")
        if params.get("conversation") == "none":
            raise ClientError("out-of-band responses (conversation: none) are not supported here",
                              "invalid_value", "response.conversation")
        request_id = _new_item_id(REQUEST_PREFIX)
        self.view.remember_request(request_id, list(modalities or self.config.output_modalities))
        await self._ensure_started()
        await self.writer.request_response(self.conversation_id, request_id)

    async def _response_cancel(self, message: dict[str, Any]) -> None:
        wanted = message.get("response_id")
        live = self.view.live
        if wanted is not None and live is not None and wanted != live.response_id:
            raise ClientError(f"Cancellation failed: response {str(wanted)[:64]!r} is not active",
                              "response_cancel_not_active", "response_id")
        if not await self._interrupt():
            raise ClientError("Cancellation failed: no active response found", "response_cancel_not_active")

    async def _interrupt(self) -> bool:
        """Stop the answer the client is getting: at once for the client (what is queued
        of it is dropped, its frame ends ``cancelled``), and in the pipeline (a
        ``response.cancel`` entry: the engine stops, or it was already done)."""
        target = self.view.cancel()
        if target is None:
            return False
        await self.writer.cancel(self.conversation_id, target.utterance_id)
        return True

    async def _item_truncate(self, message: dict[str, Any]) -> None:
        item_id, content_index, audio_end_ms = (message.get(k) for k in ("item_id", "content_index", "audio_end_ms"))
        if not isinstance(item_id, str):
            raise ClientError("Missing required parameter: 'item_id'.", "missing_required_parameter", "item_id")
        live = self.view.recent.get(item_id)
        if live is None:
            raise ClientError(f"Item with item_id '{item_id[:64]}' not found (only recent assistant items "
                              "can be truncated).", "item_truncate_invalid_item_id", "item_id")
        if content_index != 0:
            raise ClientError("content_index must be 0", "invalid_value", "content_index")
        if not isinstance(audio_end_ms, int) or audio_end_ms < 0:
            raise ClientError("audio_end_ms must be a non-negative integer", "invalid_value", "audio_end_ms")
        if not live.audio or audio_end_ms > live.audio_ms:
            raise ClientError(f"audio_end_ms {audio_end_ms} is beyond the item's audio ({live.audio_ms} ms sent)",
                              "invalid_value", "audio_end_ms")
        await self.writer.truncate(self.conversation_id, live.utterance_id, live.heard_text(audio_end_ms))
        self.outbox.event("conversation.item.truncated", item_id=item_id, content_index=0,
                          audio_end_ms=audio_end_ms)

    async def close(self, clean: bool) -> None:
        """The socket closed. A clean close (1000) ends the conversation; any other
        leaves it resumable."""
        if clean and self.started:
            await self.writer.end(self.conversation_id, "client")
            await self.store.forget(self.conversation_id)


_HANDLERS = {
    "session.update": RealtimeSession._session_update,
    "input_audio_buffer.append": RealtimeSession._append,
    "input_audio_buffer.commit": RealtimeSession._commit,
    "input_audio_buffer.clear": RealtimeSession._clear,
    "conversation.item.create": RealtimeSession._item_create,
    "response.create": RealtimeSession._response_create,
    "response.cancel": RealtimeSession._response_cancel,
    "conversation.item.truncate": RealtimeSession._item_truncate,
}
