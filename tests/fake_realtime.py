"""A fake OpenAI Realtime (GA) server over real WebSockets, for tests.

Faithful to the GA wire format where the engines depend on it:

- ``Authorization: Bearer <key>`` is required (HTTP 401 otherwise);
- the beta header ``OpenAI-Beta: realtime=v1`` gets ``beta_api_shape_disabled`` then close 4000;
- ``?model=...`` opens a conversation session, ``?intent=transcription`` (no
  model) a transcription session; the wrong ``session.type`` for the URL is rejected;
- beta-shaped fields are rejected with the real error shape
  (``session.modalities``, ``response.modalities``, ``session.temperature``,
  a missing ``session.type``, assistant content ``text`` instead of ``output_text``);
- a commit of an empty or < 100 ms buffer fails (``input_audio_buffer_commit_empty``);
- a second ``response.create`` while one is active fails
  (``conversation_already_has_active_response``);
- unknown-to-the-client events are sent too (``response.output_item.added`` ...).

Deterministic answers: a conversation answers
``echo: "<last user text>" (items <n>)`` where n counts the user and assistant
messages in ITS conversation at that point (so a test sees replayed history
reach a new session), as several ``response.output_text.delta`` then
``response.done`` with usage. A transcription session transcribes audio made
by :func:`speech_pcm` back to its text (other audio: ``"<ms> ms of audio"``).

Knobs (:class:`Faults`): out-of-order transcription completions, expire a
session after N responses / commits (``session_expired`` then close 1001),
drop a connection (abrupt 1006 or 1011), rate limits, 3000 invalid_api_key.

Run in-process (``async with FakeRealtimeServer(...)``), in a thread
(:class:`ThreadedFakeServer`), or as ``python -m tests.fake_realtime --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

TEXT_MAGIC = b"TXT:"
RATE_HZ = 24_000
BYTES_PER_MS = RATE_HZ * 2 // 1000  # 48
MIN_COMMIT_BYTES = 100 * BYTES_PER_MS

# The fake's own websockets log would print the test key from the request
# headers; only the client side's logging is under test.
_SERVER_LOG = logging.getLogger("tests.fake_realtime.server")
_SERVER_LOG.setLevel(logging.WARNING)

_REALTIME_SESSION_KEYS = {
    "type", "output_modalities", "instructions", "max_output_tokens", "audio", "tools", "tool_choice",
    "model", "tracing", "truncation", "prompt", "include",
}
_TRANSCRIPTION_SESSION_KEYS = {"type", "audio", "include"}
_RESPONSE_KEYS = {
    "output_modalities", "instructions", "max_output_tokens", "conversation", "metadata", "input",
    "tools", "tool_choice", "audio", "prompt",
}


def speech_pcm(text: str, duration_ms: int = 300) -> bytes:
    """PCM16 'speech' the fake transcribes back to ``text``: the text as
    non-silent samples, zero-padded to ``duration_ms``."""
    body = TEXT_MAGIC + text.encode() + b"\x00"
    if len(body) % 2:
        body += b"\x00"
    total = max(len(body), duration_ms * BYTES_PER_MS)
    total += total % 2
    return body + b"\x00" * (total - len(body))


def transcript_of(pcm: bytes) -> str:
    start = pcm.find(TEXT_MAGIC)
    if start >= 0:
        end = pcm.find(b"\x00", start)
        return pcm[start + len(TEXT_MAGIC): end if end >= 0 else None].decode(errors="replace")
    return f"{len(pcm) // BYTES_PER_MS} ms of audio"


def answer_text(user_text: str, items: int) -> str:
    return f'echo: "{user_text}" (items {items})'


@dataclass
class Faults:
    """Test knobs. Budgets count across the whole server (so "expire one session")."""

    #: A conversation session that completed N responses gets ``session_expired`` + close 1001.
    expire_after_responses: int | None = None
    #: A transcription session that acknowledged N commits gets ``session_expired`` + close 1001.
    expire_after_commits: int | None = None
    expire_budget: int = 1
    #: A conversation session that completed N responses drops during the next one, after its first delta.
    drop_after_responses: int | None = None
    #: A transcription session drops right after acknowledging its Nth commit (before the transcript).
    drop_after_commits: int | None = None
    drop_budget: int = 1
    #: 1006: abort the TCP connection (no close frame); else close with this code (e.g. 1011).
    drop_code: int = 1006
    #: The next N response.create fail with status ``failed`` / ``rate_limit_exceeded``.
    rate_limit_responses: int = 0
    #: Accept the socket then close 3000 invalid_api_key (seen with a bad key).
    close_3000_on_open: bool = False
    #: Delay of the transcript of a session's k-th commit: delays[k % len] (e.g. [0.3, 0]: out of order).
    completion_delays_s: list[float] = field(default_factory=lambda: [0.0])
    #: Transcripts (texts) that fail with conversation.item.input_audio_transcription.failed.
    fail_transcripts: set[str] = field(default_factory=set)
    #: Pause between output_text deltas.
    delta_delay_s: float = 0.0


@dataclass
class SessionRecord:
    """What one connection did (for assertions)."""

    kind: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    responses: int = 0
    commits: int = 0
    closed_by_fault: str | None = None

    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.sent if e.get("type") == "error"]

    def received_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.received]


class FakeRealtimeServer:
    def __init__(self, api_key: str | None = "sk-fake-test-key-0123456789", faults: Faults | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key = api_key
        self.faults = faults or Faults()
        self.host = host
        self.port = port
        self.sessions: list[SessionRecord] = []
        self.rejected_handshakes: list[int] = []
        self._server: Server | None = None
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    async def start(self) -> FakeRealtimeServer:
        self._server = await serve(self._handle, self.host, self.port, process_request=self._check_request,
                                   max_size=16 * 1024 * 1024, logger=_SERVER_LOG)
        self.port = self._server.sockets[0].getsockname()[1] if not self.port else self.port
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeRealtimeServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}{uuid.uuid4().hex[:6]}"

    def kind_sessions(self, kind: str) -> list[SessionRecord]:
        return [s for s in self.sessions if s.kind == kind]

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path != "/v1/realtime":
            self.rejected_handshakes.append(404)
            return _http(404, {"error": {"type": "invalid_request_error", "code": "not_found",
                                         "message": f"no route {parts.path}"}})
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.rejected_handshakes.append(401)
            return _http(401, {"error": {"type": "invalid_request_error", "code": "invalid_api_key",
                                         "message": "Incorrect API key provided."}})
        query = parse_qs(parts.query)
        if "model" not in query and query.get("intent") != ["transcription"]:
            self.rejected_handshakes.append(400)
            return _http(400, {"error": {"type": "invalid_request_error", "code": "missing_required_parameter",
                                         "message": "Missing required parameter: 'model'."}})
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        query = parse_qs(parts.query)
        # A model in the URL makes a conversation session, whatever the intent.
        kind = "realtime" if "model" in query else "transcription"
        record = SessionRecord(kind, parts.path, query, dict(ws.request.headers.raw_items()))
        self.sessions.append(record)
        session = _Session(self, ws, record)
        try:
            await session.run()
        except ConnectionClosed:
            pass
        finally:
            await session.stop()


def _http(status: int, body: dict[str, Any]) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    reason = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}.get(status, "Error")
    return Response(status, reason, headers, data)


class _Session:
    def __init__(self, server: FakeRealtimeServer, ws: ServerConnection, record: SessionRecord) -> None:
        self.server = server
        self.faults = server.faults
        self.ws = ws
        self.record = record
        self.config: dict[str, Any] = {}
        self.items: list[dict[str, Any]] = []
        self.buffer = bytearray()
        self.last_item_id: str | None = None
        self.active_response: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.speech = False
        self.silence_bytes = 0
        self.dead = False

    # --- plumbing

    async def send(self, event: dict[str, Any]) -> None:
        if self.dead:
            return
        event.setdefault("event_id", self.server.next_id("event"))
        self.record.sent.append(event)
        await self.ws.send(json.dumps(event))

    async def error(self, code: str, message: str, param: str | None = None, client_event_id: str | None = None,
                    kind: str = "invalid_request_error") -> None:
        await self.send({"type": "error", "error": {"type": kind, "code": code, "message": message,
                                                    "param": param, "event_id": client_event_id}})

    async def drop(self, why: str) -> None:
        """Break the connection the way a network or server failure does."""
        self.record.closed_by_fault = why
        self.dead = True
        if self.faults.drop_code == 1006:
            self.ws.transport.abort()
        else:
            await self.ws.close(self.faults.drop_code, "internal server error")

    async def expire(self) -> None:
        self.record.closed_by_fault = "session_expired"
        await self.error("session_expired", "Your session hit the maximum duration of 60 minutes.",
                         kind="invalid_request_error")
        self.dead = True
        await self.ws.close(1001, "session_expired")

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"fake-realtime:{self.record.kind}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def stop(self) -> None:
        self.dead = True
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task

    # --- the session

    async def run(self) -> None:
        assert self.ws.request is not None
        beta = self.ws.request.headers.get("OpenAI-Beta", "")
        if "realtime=v1" in beta:
            await self.error("beta_api_shape_disabled",
                             "The beta Realtime API shape is disabled. Use the GA interface.")
            await self.ws.close(4000, "beta_api_shape_disabled")
            return
        if self.faults.close_3000_on_open:
            await self.ws.close(3000, "invalid_api_key")
            return
        await self.send({"type": "session.created", "session": {"type": self.record.kind, "id": self.server.next_id(
            "sess")}})
        async for frame in self.ws:
            try:
                event = json.loads(frame)
            except ValueError:
                await self.error("invalid_json", "The event is not valid JSON.")
                continue
            if not isinstance(event, dict):
                await self.error("invalid_type", "The event must be a JSON object.")
                continue
            self.record.received.append(event)
            await self.dispatch(event)
            if self.dead:
                return

    async def dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        eid = event.get("event_id")
        handlers = {
            "session.update": self.on_session_update,
            "input_audio_buffer.append": self.on_append,
            "input_audio_buffer.commit": self.on_commit,
            "input_audio_buffer.clear": self.on_clear,
            "conversation.item.create": self.on_item_create,
            "response.create": self.on_response_create,
            "response.cancel": self.on_response_cancel,
        }
        handler = handlers.get(str(kind))
        if handler is None:
            await self.error("invalid_value", f"Invalid value: '{kind}'. Supported values are: "
                             + ", ".join(f"'{k}'" for k in handlers) + ".", "type", eid)
            return
        await handler(event, eid)

    async def on_session_update(self, event: dict[str, Any], eid: str | None) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            await self.error("invalid_type", "Invalid type for 'session': expected an object.", "session", eid)
            return
        if "type" not in session:
            await self.error("missing_required_parameter", "Missing required parameter: 'session.type'.",
                             "session.type", eid)
            return
        if session["type"] not in ("realtime", "transcription"):
            await self.error("invalid_value", f"Invalid value: '{session['type']}'. Supported values are: "
                             "'realtime' and 'transcription'.", "session.type", eid)
            return
        if session["type"] != self.record.kind:
            await self.error("invalid_value", f"Passing a {session['type']} session update event to a "
                             f"{self.record.kind} session is not allowed.", "session.type", eid)
            return
        allowed = _REALTIME_SESSION_KEYS if self.record.kind == "realtime" else _TRANSCRIPTION_SESSION_KEYS
        for key in session:
            if key not in allowed:
                await self.error("unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}", eid)
                return
        for mod in session.get("output_modalities", []):
            if mod not in ("text", "audio"):
                await self.error("invalid_value", f"Invalid value: '{mod}'.", "session.output_modalities", eid)
                return
        audio_input = (session.get("audio") or {}).get("input") or {}
        fmt = audio_input.get("format")
        if fmt is not None and fmt != {"type": "audio/pcm", "rate": 24000}:
            await self.error("invalid_value", f"Invalid audio format {fmt!r}.", "session.audio.input.format", eid)
            return
        if self.record.kind == "transcription":
            td = audio_input.get("turn_detection", "absent")
            if td not in (None, "absent") and (not isinstance(td, dict) or td.get("type") not in ("server_vad",
                                                                                              "semantic_vad")):
                await self.error("invalid_value", "Invalid turn_detection.", "session.audio.input.turn_detection",
                                 eid)
                return
        self.config = _merge(self.config, session)
        await self.send({"type": "session.updated", "session": self.config})

    # --- audio

    def transcription_config(self) -> dict[str, Any] | None:
        return ((self.config.get("audio") or {}).get("input") or {}).get("transcription")

    def server_vad(self) -> dict[str, Any] | None:
        audio_input = (self.config.get("audio") or {}).get("input") or {}
        if "turn_detection" not in audio_input:
            return {"type": "server_vad", "silence_duration_ms": 500}  # the API's default
        td = audio_input["turn_detection"]
        return td if isinstance(td, dict) else None

    async def on_append(self, event: dict[str, Any], eid: str | None) -> None:
        try:
            pcm = base64.b64decode(str(event.get("audio", "")), validate=True)
        except ValueError:
            await self.error("invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.", "audio", eid)
            return
        self.buffer.extend(pcm)
        vad = self.server_vad()
        if vad is None or not pcm:
            return
        if any(pcm):
            trailing = len(pcm) - len(pcm.rstrip(b"\x00"))
            if not self.speech:
                self.speech = True
                await self.send({"type": "input_audio_buffer.speech_started", "item_id": self.server.next_id("item"),
                                 "audio_start_ms": 0})
            self.silence_bytes = trailing
        else:
            self.silence_bytes += len(pcm)
        if self.speech and self.silence_bytes >= int(vad.get("silence_duration_ms", 500)) * BYTES_PER_MS:
            self.speech = False
            await self.send({"type": "input_audio_buffer.speech_stopped", "item_id": "", "audio_end_ms": 0})
            await self.commit(None)

    async def on_commit(self, event: dict[str, Any], eid: str | None) -> None:
        if len(self.buffer) < MIN_COMMIT_BYTES:
            ms = len(self.buffer) / BYTES_PER_MS
            await self.error("input_audio_buffer_commit_empty",
                             "Error committing input audio buffer: buffer too small. Expected at least 100ms of "
                             f"audio, but buffer only has {ms:.2f}ms of audio.", None, eid)
            return
        await self.commit(eid)

    async def commit(self, eid: str | None) -> None:
        pcm, self.buffer = bytes(self.buffer), bytearray()
        item_id = self.server.next_id("item")
        previous, self.last_item_id = self.last_item_id, item_id
        index = self.record.commits
        self.record.commits += 1
        self.items.append({"id": item_id, "type": "message", "role": "user",
                           "content": [{"type": "input_audio", "transcript": None}]})
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        await self.send({"type": "conversation.item.added", "previous_item_id": previous,
                         "item": {"id": item_id, "type": "message", "role": "user", "status": "completed",
                                  "content": [{"type": "input_audio", "transcript": None}]}})
        f = self.faults
        if f.expire_after_commits is not None and self.record.commits >= f.expire_after_commits \
                and f.expire_budget > 0:
            f.expire_budget -= 1
            await self.expire()
            return
        if f.drop_after_commits is not None and self.record.commits >= f.drop_after_commits and f.drop_budget > 0:
            f.drop_budget -= 1
            await self.drop("drop_after_commits")
            return
        if self.transcription_config() is None:
            return  # a session without audio.input.transcription transcribes nothing
        delays = f.completion_delays_s or [0.0]
        self.spawn(self.transcribe(item_id, pcm, delays[index % len(delays)]))

    async def transcribe(self, item_id: str, pcm: bytes, delay_s: float) -> None:
        text = transcript_of(pcm)
        await asyncio.sleep(delay_s)
        if text in self.faults.fail_transcripts:
            error = {"type": "transcription_error", "code": "audio_unintelligible",
                     "message": "Audio could not be transcribed.", "param": None}
            await self.send({"type": "conversation.item.input_audio_transcription.failed", "item_id": item_id,
                             "content_index": 0, "error": error})
            return
        half = len(text) // 2
        for piece in (text[:half], text[half:]):
            if piece:
                await self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                                 "content_index": 0, "delta": piece})
        await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                         "content_index": 0, "transcript": text,
                         "usage": {"type": "tokens", "total_tokens": 10, "input_tokens": 7, "output_tokens": 3}})

    async def on_clear(self, event: dict[str, Any], eid: str | None) -> None:
        self.buffer.clear()
        await self.send({"type": "input_audio_buffer.cleared"})

    # --- conversation

    async def on_item_create(self, event: dict[str, Any], eid: str | None) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            await self.error("missing_required_parameter", "Missing required parameter: 'item'.", "item", eid)
            return
        if item.get("type") != "message" or item.get("role") not in ("user", "assistant", "system"):
            await self.error("invalid_value", "Invalid item.", "item", eid)
            return
        allowed = {"user": ("input_text", "input_audio", "input_image"), "system": ("input_text",),
                   "assistant": ("output_text", "output_audio")}[item["role"]]
        content = item.get("content")
        if not isinstance(content, list) or not content:
            await self.error("missing_required_parameter", "Missing required parameter: 'item.content'.",
                             "item.content", eid)
            return
        for i, part in enumerate(content):
            ptype = part.get("type") if isinstance(part, dict) else None
            if ptype not in allowed:
                await self.error("invalid_value", f"Invalid value: '{ptype}'. Supported values are: "
                                 + " and ".join(f"'{a}'" for a in allowed) + ".", f"item.content[{i}].type", eid)
                return
        item_id = item.get("id") or self.server.next_id("item")
        stored = {**item, "id": item_id}
        self.items.append(stored)
        previous, self.last_item_id = self.last_item_id, item_id
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": stored})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": stored})

    def message_count(self) -> int:
        return sum(1 for i in self.items if i.get("type") == "message" and i.get("role") in ("user", "assistant"))

    def last_user_text(self) -> str:
        for item in reversed(self.items):
            if item.get("role") == "user":
                for part in item.get("content", []):
                    if part.get("type") == "input_text":
                        return str(part.get("text", ""))
                    if part.get("type") == "input_audio" and part.get("transcript"):
                        return str(part["transcript"])
        return ""

    async def on_response_create(self, event: dict[str, Any], eid: str | None) -> None:
        if self.record.kind != "realtime":
            await self.error("invalid_request_error", "Transcription sessions do not create responses.", None, eid)
            return
        params = event.get("response") or {}
        for key in params:
            if key not in _RESPONSE_KEYS:
                await self.error("unknown_parameter", f"Unknown parameter: 'response.{key}'.", f"response.{key}", eid)
                return
        if self.active_response is not None and not self.active_response.done():
            await self.error("conversation_already_has_active_response",
                             "Conversation already has an active response in progress.", None, eid)
            return
        self.active_response = self.spawn(self.respond(params))

    async def on_response_cancel(self, event: dict[str, Any], eid: str | None) -> None:
        if self.active_response is None or self.active_response.done():
            await self.error("response_cancel_not_active", "Cancellation failed: no active response found.", None,
                             eid)
            return
        self.active_response.cancel()

    async def respond(self, params: dict[str, Any]) -> None:
        f = self.faults
        rid = self.server.next_id("resp")
        base = {"object": "realtime.response", "id": rid, "output_modalities": params.get("output_modalities",
                                                                                           ["audio"])}
        await self.send({"type": "response.created", "response": {**base, "status": "in_progress", "output": []}})
        if f.rate_limit_responses > 0:
            f.rate_limit_responses -= 1
            await self.send({"type": "response.done", "response": {
                **base, "status": "failed", "output": [], "usage": None,
                "status_details": {"type": "failed", "error": {
                    "type": "tokens", "code": "rate_limit_exceeded",
                    "message": "Rate limit reached for gpt-realtime in organization org-x on tokens per min."}}}})
            return
        drop_now = (f.drop_after_responses is not None and self.record.responses >= f.drop_after_responses
                    and f.drop_budget > 0)
        if drop_now:
            f.drop_budget -= 1
        text = answer_text(self.last_user_text(), self.message_count())
        item_id = self.server.next_id("item")
        item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        await self.send({"type": "conversation.item.added", "previous_item_id": self.last_item_id, "item": item})
        await self.send({"type": "response.output_item.added", "response_id": rid, "output_index": 0, "item": item})
        await self.send({"type": "response.content_part.added", "response_id": rid, "item_id": item_id,
                         "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": ""}})
        words = text.split(" ")
        pieces = [" ".join(words[i:i + 2]) + (" " if i + 2 < len(words) else "") for i in range(0, len(words), 2)]
        for n, piece in enumerate(pieces):
            await self.send({"type": "response.output_text.delta", "response_id": rid, "item_id": item_id,
                             "output_index": 0, "content_index": 0, "delta": piece})
            if drop_now and n == 0:
                await self.drop("drop_after_responses")
                return
            if f.delta_delay_s:
                await asyncio.sleep(f.delta_delay_s)
        done_item = {**item, "status": "completed", "content": [{"type": "output_text", "text": text}]}
        await self.send({"type": "response.output_text.done", "response_id": rid, "item_id": item_id,
                         "output_index": 0, "content_index": 0, "text": text})
        await self.send({"type": "response.content_part.done", "response_id": rid, "item_id": item_id,
                         "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": text}})
        await self.send({"type": "response.output_item.done", "response_id": rid, "output_index": 0,
                         "item": done_item})
        self.items.append(done_item)
        previous, self.last_item_id = self.last_item_id, item_id
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": done_item})
        in_tokens, out_tokens = self.message_count() * 5, len(words)
        await self.send({"type": "response.done", "response": {
            **base, "status": "completed", "status_details": None, "output": [done_item],
            "usage": {"total_tokens": in_tokens + out_tokens, "input_tokens": in_tokens,
                      "output_tokens": out_tokens, "input_token_details": {"text_tokens": in_tokens}}}})
        self.record.responses += 1
        await self.send({"type": "rate_limits.updated", "rate_limits": [
            {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06},
            {"name": "tokens", "limit": 50000, "remaining": 49000, "reset_seconds": 1.2}]})
        if f.expire_after_responses is not None and self.record.responses >= f.expire_after_responses \
                and f.expire_budget > 0:
            f.expire_budget -= 1
            await self.expire()


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class ThreadedFakeServer:
    """Runs a :class:`FakeRealtimeServer` on its own event loop in a thread
    (for tests that block, e.g. on a subprocess). Use as a context manager."""

    def __init__(self, server: FakeRealtimeServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fake-realtime", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as exc:  # surfaced in __enter__
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.server.aclose())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def __enter__(self) -> FakeRealtimeServer:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self.server

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_realtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="sk-fake-test-key-0123456789")
    parser.add_argument("--expire-after-responses", type=int)
    parser.add_argument("--drop-after-responses", type=int)
    parser.add_argument("--expire-after-commits", type=int)
    parser.add_argument("--drop-after-commits", type=int)
    parser.add_argument("--rate-limit-responses", type=int, default=0)
    args = parser.parse_args(argv)
    faults = Faults(expire_after_responses=args.expire_after_responses, drop_after_responses=args.drop_after_responses,
                    expire_after_commits=args.expire_after_commits, drop_after_commits=args.drop_after_commits,
                    rate_limit_responses=args.rate_limit_responses)

    async def serve_forever() -> None:
        async with FakeRealtimeServer(args.api_key, faults, port=args.port) as server:
            print(server.url, flush=True)
            await asyncio.Future()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever())


if __name__ == "__main__":
    main()
