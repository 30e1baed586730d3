"""What the two OpenAI engines share, against the fake Realtime server
(tests/fake_realtime.py): their configuration, and the fake itself speaking
GA and refusing beta with the real error shapes. The engines' own behaviour:
tests/test_openai_conversation.py and tests/test_openai_transcription.py."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import ValidationError
from websockets.asyncio.client import connect

from conversation_svc.engines.openai import OpenAIConversation
from shared.engines.base import EngineUnavailable
from shared.realtime.connection import realtime_url
from shared.settings import ConversationSettings, OpenAISettings
from tests.fake_realtime import FakeRealtimeServer
from tests.fake_realtime_script import answer_text
from tests.openai_engine_helpers import KEY
from transcriber_svc.engines.openai import OpenAITranscription

# --- configuration -------------------------------------------------------------------


def test_urls_conversation_has_model_transcription_has_intent_only() -> None:
    assert realtime_url("wss://api.openai.com/v1/realtime", model="gpt-realtime") == \
        "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert realtime_url("wss://api.openai.com/v1/realtime", intent="transcription") == \
        "wss://api.openai.com/v1/realtime?intent=transcription"
    azure = realtime_url("wss://x.openai.azure.com/openai/realtime?api-version=2025-08-28&model=old",
                         model="gpt-realtime")
    assert azure == "wss://x.openai.azure.com/openai/realtime?api-version=2025-08-28&model=gpt-realtime"


def test_from_settings_requires_a_key_and_reads_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("OPENAI_")]:
        monkeypatch.delenv(name)  # the defaults below, whatever the developer's environment
    with pytest.raises(EngineUnavailable, match="OPENAI_API_KEY"):
        OpenAITranscription.from_settings(OpenAISettings())
    with pytest.raises(EngineUnavailable, match="OPENAI_API_KEY"):
        OpenAIConversation.from_settings(ConversationSettings(), OpenAISettings(api_key=" "))
    with pytest.raises(ValidationError, match="turn_detection"):
        OpenAISettings(api_key=KEY, turn_detection="semantic")  # type: ignore[arg-type]
    t = OpenAITranscription.from_settings(OpenAISettings(api_key=KEY, realtime_url="ws://h:1/v1/realtime",
                                                         timeout_s=7))
    assert (t.model, t.turn_detection, t.endpoint.base_url, t.endpoint.timeout_s) == \
        ("gpt-4o-transcribe", "client", "ws://h:1/v1/realtime", 7.0)
    c = OpenAIConversation.from_settings(ConversationSettings(history_max_turns=4), OpenAISettings(api_key=KEY))
    assert (c.model, c.max_output_tokens, c.history_max_turns) == ("gpt-realtime", 256, 4)
    assert c.endpoint.base_url == "wss://api.openai.com/v1/realtime"
    assert KEY not in repr(c.endpoint)


# --- the fake speaks GA and refuses beta --------------------------------------------------


async def raw_exchange(server: FakeRealtimeServer, query: str, events: Sequence[dict[str, Any]],
                       headers: dict[str, str] | None = None, expect: int = 1) -> tuple[list[dict[str, Any]], Any]:
    hdrs = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    got: list[dict[str, Any]] = []
    async with connect(f"{server.url}?{query}", additional_headers=hdrs) as ws:
        for event in events:
            await ws.send(json.dumps(event))
        try:
            while len([g for g in got if g["type"] in ("error", "session.updated")]) < expect:
                got.append(json.loads(await ws.recv()))
        except Exception:
            pass
        return got, ws.close_code


async def test_fake_rejects_the_beta_header(fake: FakeRealtimeServer) -> None:
    got, code = await raw_exchange(fake, "model=gpt-realtime", [], {"OpenAI-Beta": "realtime=v1"}, expect=2)
    assert got[0]["error"]["code"] == "beta_api_shape_disabled"
    assert code == 4000


@pytest.mark.parametrize(("query", "event", "code", "param"), [
    ("model=gpt-realtime", {"type": "session.update", "session": {"modalities": ["text"]}},
     "missing_required_parameter", "session.type"),
    ("model=gpt-realtime", {"type": "session.update", "session": {"type": "realtime", "modalities": ["text"]}},
     "unknown_parameter", "session.modalities"),
    ("model=gpt-realtime", {"type": "session.update", "session": {"type": "realtime", "temperature": 0.8}},
     "unknown_parameter", "session.temperature"),
    ("model=gpt-realtime", {"type": "response.create", "response": {"modalities": ["text"]}},
     "unknown_parameter", "response.modalities"),
    ("model=gpt-realtime", {"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant", "content": [{"type": "text", "text": "beta"}]}},
     "invalid_value", "item.content[0].type"),
    ("model=gpt-4o-transcribe&intent=transcription", {"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}}},
     "invalid_value", "session.type"),
    ("intent=transcription", {"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty", None),
])
async def test_fake_rejects_beta_shapes_with_the_real_error_shape(
    fake: FakeRealtimeServer, query: str, event: dict[str, Any], code: str, param: str | None
) -> None:
    got, _ = await raw_exchange(fake, query, [{**event, "event_id": "client_evt_1"}])
    error_event = [g for g in got if g["type"] == "error"][0]
    assert set(error_event) == {"type", "event_id", "error"}
    assert error_event["error"] == {"type": "invalid_request_error", "code": code,
                                    "message": error_event["error"]["message"], "param": param,
                                    "event_id": "client_evt_1"}


async def test_fake_refuses_a_second_response_while_one_is_active(fake: FakeRealtimeServer) -> None:
    fake.faults.delta_delay_s = 0.05
    item = {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                         "content": [{"type": "input_text", "text": "hi"}]}}
    create = {"type": "response.create", "response": {"output_modalities": ["text"]}}
    got, _ = await raw_exchange(fake, "model=gpt-realtime", [item, create, {**create, "event_id": "second"}])
    assert got[-1]["error"]["code"] == "conversation_already_has_active_response"
    assert got[-1]["error"]["event_id"] == "second"


async def test_fake_refuses_a_cancel_with_nothing_active(fake: FakeRealtimeServer) -> None:
    got, _ = await raw_exchange(fake, "model=gpt-realtime", [{"type": "response.cancel", "event_id": "cancel_1"}])
    error = [g for g in got if g["type"] == "error"][0]["error"]
    assert (error["type"], error["code"], error["event_id"]) == (
        "invalid_request_error", "response_cancel_not_active", "cancel_1")


async def test_fake_cancel_ends_the_active_response_cancelled_with_the_output_so_far(
    fake: FakeRealtimeServer,
) -> None:
    fake.faults.stall_responses = 1  # mid-answer until the cancel
    item = {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                         "content": [{"type": "input_text", "text": "hi"}]}}
    got: list[dict[str, Any]] = []

    async def read_until(kind: str) -> dict[str, Any]:
        while True:
            got.append(json.loads(await ws.recv()))
            if got[-1]["type"] == kind:
                return got[-1]

    async with connect(f"{fake.url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        for event in (item, {"type": "response.create", "response": {"output_modalities": ["text"]}}):
            await ws.send(json.dumps(event))
        delta = await read_until("response.output_text.delta")
        rid = delta["response_id"]
        await ws.send(json.dumps({"type": "response.cancel", "response_id": "resp_other", "event_id": "wrong"}))
        wrong = await read_until("error")
        await ws.send(json.dumps({"type": "response.cancel", "response_id": rid}))
        done = await read_until("response.done")
        await ws.send(json.dumps({"type": "response.cancel", "event_id": "again"}))
        again = await read_until("error")
        for event in (item, {"type": "response.create", "response": {"output_modalities": ["text"]}}):
            await ws.send(json.dumps(event))
        following = await read_until("response.done")
    assert (wrong["error"]["code"], wrong["error"]["param"], wrong["error"]["event_id"]) == (
        "response_cancel_not_active", "response_id", "wrong")
    assert done["response"]["id"] == rid and done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    [partial] = done["response"]["output"]
    assert partial["content"] == [{"type": "output_text", "text": delta["delta"]}]
    after = got[got.index(done) + 1:got.index(again) + 1]
    assert [g["type"] for g in after] == ["error"]  # no delta after the cancelled done
    assert (again["error"]["code"], again["error"]["event_id"]) == ("response_cancel_not_active", "again")
    # The partial answer stays in the conversation: the next answer counts it (user, assistant, user).
    assert following["response"]["status"] == "completed"
    assert following["response"]["output"][0]["content"][0]["text"] == answer_text("hi", 3)
