"""One connection of the fake Realtime server: the GA protocol loop (read a
client event, dispatch it by type, refuse what the API refuses, answer with
the real event shapes) and the scripted behaviour behind it:

- audio: a buffer, a simple VAD when the session asks for server turn
  detection, commits, and transcripts (deltas then ``completed``, or
  ``failed``), each after its configured delay, so possibly out of order;
- conversation: items, and one response at a time
  (:class:`~tests.fake_realtime_response.FakeResponse`: deltas then
  ``response.done``); ``response.cancel`` ends the active one ``cancelled``
  with the output so far, and is an error when none is active;
- the faults of :class:`Faults`: expire, drop, rate-limit, stall, ignored cancels.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tests.fake_realtime_checks import (
    Refusal,
    check_commit,
    check_item,
    check_response_create,
    check_session_update,
)
from tests.fake_realtime_response import FakeResponse
from tests.fake_realtime_script import BYTES_PER_MS, Faults, SessionRecord, transcript_of


class FakeSession:
    """One connection: reads client events, refuses what the GA API refuses
    (:mod:`tests.fake_realtime_checks`), and plays the scripted behaviour for
    the rest, with the faults of :class:`Faults` (shared by the whole server)."""

    def __init__(self, ws: ServerConnection, record: SessionRecord, faults: Faults,
                 next_id: Callable[[str], str]) -> None:
        self.faults = faults
        self.next_id = next_id
        self.ws = ws
        self.record = record
        self.config: dict[str, Any] = {}
        self.items: list[dict[str, Any]] = []
        self.buffer = bytearray()
        self.last_item_id: str | None = None
        self.active_response: FakeResponse | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.speech = False
        self.silence_bytes = 0
        self.dead = False

    # --- plumbing

    async def send(self, event: dict[str, Any]) -> None:
        if self.dead:
            return
        event.setdefault("event_id", self.next_id("event"))
        self.record.sent.append(event)
        await self.ws.send(json.dumps(event))

    async def error(self, code: str, message: str, param: str | None = None, client_event_id: str | None = None,
                    kind: str = "invalid_request_error") -> None:
        await self.send({"type": "error", "error": {"type": kind, "code": code, "message": message,
                                                    "param": param, "event_id": client_event_id}})

    async def refuse(self, refusal: Refusal, client_event_id: str | None) -> None:
        await self.error(refusal.code, refusal.message, refusal.param, client_event_id)

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
        await self.send({"type": "session.created", "session": {"type": self.record.kind, "id": self.next_id("sess")}})
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
        refusal = check_session_update(session, self.record.kind)
        if refusal is not None:
            await self.refuse(refusal, eid)
            return
        assert isinstance(session, dict)
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
                await self.send({"type": "input_audio_buffer.speech_started", "item_id": self.next_id("item"),
                                 "audio_start_ms": 0})
            self.silence_bytes = trailing
        else:
            self.silence_bytes += len(pcm)
        if self.speech and self.silence_bytes >= int(vad.get("silence_duration_ms", 500)) * BYTES_PER_MS:
            self.speech = False
            await self.send({"type": "input_audio_buffer.speech_stopped", "item_id": "", "audio_end_ms": 0})
            await self.commit(None)

    async def on_commit(self, event: dict[str, Any], eid: str | None) -> None:
        refusal = check_commit(len(self.buffer))
        if refusal is not None:
            await self.refuse(refusal, eid)
            return
        await self.commit(eid)

    async def commit(self, eid: str | None) -> None:
        pcm, self.buffer = bytes(self.buffer), bytearray()
        item_id = self.next_id("item")
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
        refusal = check_item(item)
        if refusal is not None:
            await self.refuse(refusal, eid)
            return
        assert isinstance(item, dict)
        item_id = item.get("id") or self.next_id("item")
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
        params = event.get("response") or {}
        refusal = check_response_create(self.record.kind, params)
        if refusal is not None:
            await self.refuse(refusal, eid)
            return
        if self.active_response is not None and self.active_response.active:
            await self.error("conversation_already_has_active_response",
                             "Conversation already has an active response in progress.", None, eid)
            return
        self.active_response = FakeResponse(self, params)
        await self.active_response.start()

    async def on_response_cancel(self, event: dict[str, Any], eid: str | None) -> None:
        """GA: ends the active response ``cancelled``; nothing active, or another
        ``response_id`` than the active one's, is a ``response_cancel_not_active`` error."""
        active, wanted = self.active_response, event.get("response_id")
        if active is None or not active.active:
            await self.error("response_cancel_not_active", "Cancellation failed: no active response found.", None,
                             eid)
            return
        if wanted is not None and wanted != active.id:
            await self.error("response_cancel_not_active",
                             f"Cancellation failed: response {str(wanted)[:64]!r} is not active.", "response_id", eid)
            return
        if self.faults.ignore_cancels:
            return  # a server that never answers the cancel
        await active.cancel()


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, nested objects merged (how ``session.update`` applies)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
