"""Pipeline entries -> Realtime server events (gateway_svc.pipeline_events), and
session settings (gateway_svc.session_config): no Redis, no socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway_svc.outbox import Mark, Outbox
from gateway_svc.pipeline_events import PipelineEvents
from gateway_svc.session_config import ConfigError, SessionConfig
from shared.models import ResponseDelta, ResponseDone, ResponseFailed, ResponseStarted, Timings, TranscriptFinal


def _done(text: str, rid: str = "r1") -> ResponseDone:
    return ResponseDone(conversation_id="c", utterance_id="u1", response_id=rid, text=text,
                        timings=Timings(sent_ms=1, transcript_final_ms=2, done_ms=3))


def _delta(index: int, text: str, rid: str = "r1") -> ResponseDelta:
    return ResponseDelta(conversation_id="c", utterance_id="u1", response_id=rid, index=index, delta=text)


async def _run(feed: Any, audio: bool = False) -> tuple[list[dict[str, Any]], list[Mark]]:
    sent: list[dict[str, Any]] = []
    marks: list[Mark] = []

    async def send(text: str) -> None:
        sent.append(json.loads(text))

    async def mark(m: Mark) -> None:
        marks.append(m)

    outbox = Outbox(send, mark)
    view = PipelineEvents(outbox, "c", lambda: audio, lambda: "marin")
    feed(view)
    task = asyncio.create_task(outbox.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not outbox._queue:
            break
    task.cancel()
    return sent, marks


def _types(sent: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in sent]


async def test_deltas_then_a_done_that_carries_the_rest() -> None:
    def feed(view: PipelineEvents) -> None:
        view.handle("responses", "1-0", ResponseStarted(conversation_id="c", utterance_id="u1", response_id="r1"))
        view.handle("responses", "2-0", _delta(0, "Hello "))
        view.handle("responses", "3-0", _delta(0, "Hello "))  # a repeat: dropped
        view.handle("responses", "4-0", _done("Hello there."))

    sent, marks = await _run(feed)
    assert _types(sent) == [
        "response.created", "response.output_item.added", "conversation.item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "conversation.item.done", "response.done"]
    assert [e["delta"] for e in sent if e["type"] == "response.output_text.delta"] == ["Hello ", "there."]
    done = sent[-1]["response"]
    assert done["id"] == "resp_r1" and done["status"] == "completed"
    assert done["output"][0]["content"][0] == {"type": "output_text", "text": "Hello there."}
    assert len({e["event_id"] for e in sent}) == len(sent)
    assert marks == [Mark("responses", "4-0")]


async def test_a_cancelled_answer_sends_nothing_more_and_a_failure_is_a_failed_done() -> None:
    def feed(view: PipelineEvents) -> None:
        view.handle("responses", "1-0", _delta(0, "Hel"))
        assert view.cancel() and not view.cancel()
        view.handle("responses", "2-0", _delta(1, "lo"))
        view.handle("responses", "3-0", _done("Hello"))
        view.handle("responses", "4-0", ResponseFailed(conversation_id="c", utterance_id="u2", response_id="r2",
                                                       code="engine_error", reason="model crashed"))

    sent, marks = await _run(feed)
    dones = [e["response"] for e in sent if e["type"] == "response.done"]
    assert [(d["id"], d["status"]) for d in dones] == [("resp_r1", "cancelled"), ("resp_r2", "failed")]
    assert dones[1]["status_details"]["error"]["message"] == "model crashed"
    # The cancel came before the outbox sent anything: the queued delta was dropped with it.
    assert [e.get("delta") for e in sent if e["type"] == "response.output_text.delta"] == []
    assert marks == [Mark("responses", "3-0"), Mark("responses", "4-0")]


async def test_transcripts_of_audio_items_become_transcription_events() -> None:
    def feed(view: PipelineEvents) -> None:
        for uid in ("item_a1", "item_t1"):
            view.handle("transcripts", f"{uid}-0", TranscriptFinal(conversation_id="c", utterance_id=uid,
                                                                   text="hi", sent_ms=1, final_ms=2))

    sent, marks = await _run(feed)
    assert _types(sent) == ["conversation.item.input_audio_transcription.completed", "conversation.item.done"]
    assert sent[0]["item_id"] == "item_a1" and sent[0]["transcript"] == "hi"
    assert len(marks) == 2


def test_session_update_follows_the_api() -> None:
    config = SessionConfig.default("realtime", "local", "Be brief.")
    assert config.audio_out and config.server_vad and config.create_response
    with pytest.raises(ConfigError) as missing:
        config.update({"instructions": "x"}, allow_instructions=True)
    assert missing.value.code == "missing_required_parameter"
    with pytest.raises(ConfigError):
        config.update({"type": "transcription"}, allow_instructions=True)
    with pytest.raises(ConfigError):
        config.update({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}, True)
    updated = config.update({"type": "realtime", "instructions": "Talk like a pirate", "output_modalities": ["text"],
                             "audio": {"input": {"turn_detection": None}}, "tools": []}, allow_instructions=False)
    assert updated.instructions == "Be brief."  # the deployment's prompt stays
    assert not updated.server_vad and not updated.create_response and updated.output_modalities == ["text"]
    wire = updated.wire("sess_1", "conv_1")
    assert wire["tools"] == [] and wire["audio"]["input"]["turn_detection"] is None
    assert SessionConfig.from_json(updated.to_json()) == SessionConfig.from_json(updated.to_json())
    allowed = config.update({"type": "realtime", "instructions": "Talk like a pirate"}, allow_instructions=True)
    assert allowed.instructions == "Talk like a pirate"
