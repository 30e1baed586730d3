"""Property tests of the gateway's client-event handling (gateway_svc.session):
whatever a client sends, valid events edited at random or any JSON at all, the
session never raises; it answers with server events, an ``error`` naming the
problem among them when it refuses, and it writes only well-formed entries.

The writer is the real one with its Redis write replaced by a recorder (it
builds every entry with the models, and each must parse back); the resume
store checks that the saved settings load. No Redis: this is about parsing and
validation."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway_svc.outbox import Mark, Outbox
from gateway_svc.pipeline import PipelineWriter
from gateway_svc.session import RealtimeSession
from gateway_svc.session_config import SessionConfig
from shared.keys import Keys
from shared.models import decode
from tests.fuzz_helpers import edited, plain_json

_PCM = base64.b64encode(bytes(9600)).decode()

CLIENT_BASES: list[dict[str, Any]] = [
    {"type": "session.update", "event_id": "e1", "session": {
        "type": "realtime", "instructions": "hi", "output_modalities": ["text"],
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None,
                            "transcription": {"model": "local"}},
                  "output": {"voice": "marin", "format": {"type": "audio/pcm", "rate": 24000}}}}},
    {"type": "input_audio_buffer.append", "audio": _PCM},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "id": "m1",
                                                  "content": [{"type": "input_text", "text": "hello"}]}},
    {"type": "response.create", "response": {"output_modalities": ["audio"], "instructions": "x"}},
    {"type": "response.cancel", "response_id": "resp_1"},
    {"type": "conversation.item.truncate", "item_id": "item_r1", "content_index": 0, "audio_end_ms": 100},
]


class RecordingWriter(PipelineWriter):
    """The real writer (it builds every entry with the models), recording instead of XADDing."""

    def __init__(self) -> None:
        super().__init__(redis=None, keys=Keys(prefix="fuzz"))  # type: ignore[arg-type]
        self.written: list[bytes] = []

    async def _write(self, writes: list[tuple[str, bytes, int | None]]) -> None:
        for _, payload, _ in writes:
            decode(payload)  # what a worker reads back must parse
            self.written.append(payload)


class RecordingStore:
    async def save_session(self, conversation_id: str, session: dict[str, Any]) -> None:
        SessionConfig.from_json(session)  # what a resume would restore must load


def _run(messages: list[Any]) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        sent: list[str] = []

        async def send(text: str) -> None:
            sent.append(text)

        async def mark(m: Mark) -> None:
            return None

        outbox = Outbox(send, mark)
        session = RealtimeSession(conversation_id="c1", config=SessionConfig.default("realtime", "local", "be brief"),
                                  outbox=outbox, writer=RecordingWriter(),
                                  store=RecordingStore(), allow_instructions=False,  # type: ignore[arg-type]
                                  allow_audio=lambda seconds: None, started=False)
        for message in messages:
            await session.handle(message)
        return [item for _, item in outbox._queue if isinstance(item, dict)]

    return asyncio.run(go())


@given(st.lists(edited(CLIENT_BASES, sorted({b["type"] for b in CLIENT_BASES})), max_size=4))
def test_edited_client_events_never_raise(messages: list[Any]) -> None:
    for out in _run(messages):
        assert isinstance(out["type"], str) and out["event_id"]
        if out["type"] == "error":
            assert out["error"]["message"] and out["error"]["type"]


@given(plain_json)
def test_any_json_gets_an_answer_or_an_error(message: Any) -> None:
    out = _run([message])
    known = {b["type"] for b in CLIENT_BASES}
    if not isinstance(message, dict) or not isinstance(message.get("type"), str) or message["type"] not in known:
        assert [o["type"] for o in out] == ["error"]


def test_a_client_item_id_the_entries_would_refuse_is_an_error_event() -> None:
    """Found by reading: a non-ASCII letter passed the item id check (isalnum) and then
    failed in the entry model, escaping as an exception that ended the socket."""
    for bad in ("é", "a.b", "x" * 33, ""):
        out = _run([{"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "id": bad, "content": [{"type": "input_text", "text": "hi"}]}}])
        assert [(o["type"], o.get("error", {}).get("param")) for o in out] == [("error", "item.id")], bad
    out = _run([{"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "id": "m_1-a", "content": [{"type": "input_text", "text": "hi"}]}}])
    assert [o["type"] for o in out] == ["conversation.item.added", "conversation.item.done"]


def test_audio_the_entries_would_refuse_is_an_error_event() -> None:
    """Found by reading: an odd-length append, or a WAV file sent as PCM, passed the append
    and then failed in the audio entry model at the commit, ending the socket."""
    manual = {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
    for pcm in (bytes(9601), b"RIFF" + bytes(9600)):
        out = _run([manual, {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()},
                    {"type": "input_audio_buffer.commit"}])
        errors = [(o["error"]["param"], o["error"]["code"]) for o in out if o["type"] == "error"]
        # The append is refused, so the commit finds an empty buffer.
        assert errors == [("audio", "invalid_value"), (None, "input_audio_buffer_commit_empty")], errors

