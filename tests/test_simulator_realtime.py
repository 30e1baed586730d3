"""The simulator's Realtime client, without a socket: its URL and client events,
how it reads responses (built with the gateway's own event builders), how it
ties responses and VAD turns to utterances, and one conversation fed server
events in memory (the socket is a list)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import pytest

from gateway_svc import events as gw
from simulator_svc import realtime_client as rt
from simulator_svc.gateway_conversation import GatewayConversation
from simulator_svc.simulator import DialoguePrinter
from simulator_svc.tracker import Tracker, interruption_lines, succeeded


@pytest.mark.parametrize(("given", "url"), [
    ("http://localhost:8080", "ws://localhost:8080/v1/realtime?model=local"),
    ("http://localhost:8080/", "ws://localhost:8080/v1/realtime?model=local"),
    ("https://gw.example/voice", "wss://gw.example/voice/v1/realtime?model=local"),
    ("ws://127.0.0.1:9/v1/realtime", "ws://127.0.0.1:9/v1/realtime?model=local"),
])
def test_realtime_url(given: str, url: str) -> None:
    assert rt.realtime_url(given) == url


@pytest.mark.parametrize("given", ["localhost:8080", "ftp://host", "http://"])
def test_realtime_url_refuses_what_is_not_a_gateway_address(given: str) -> None:
    with pytest.raises(ValueError, match="--gateway"):
        rt.realtime_url(given)


def test_auth_header_only_with_a_key() -> None:
    assert rt.auth_headers("sk-abc") == {"Authorization": "Bearer sk-abc"}
    assert rt.auth_headers(None) == {} and rt.auth_headers("") == {}


def test_session_updates() -> None:
    text = rt.text_session_update(audio_out=False)["session"]
    assert text["audio"]["input"]["turn_detection"] is None and text["output_modalities"] == ["text"]
    assert "output_modalities" not in rt.text_session_update(audio_out=True)["session"]
    audio = rt.audio_session_update(audio_out=False)["session"]
    assert "turn_detection" not in audio["audio"]["input"]  # the default server VAD stays
    assert audio["output_modalities"] == ["text"]
    assert "output_modalities" not in rt.audio_session_update(audio_out=True)["session"]


def _response(rid: str, status: str, text: str | None, audio: bool = False,
              details: dict[str, Any] | None = None) -> dict[str, Any]:
    item = gw.assistant_item(f"item_r{rid}", audio, text, "completed")
    return gw.response_object(f"resp_{rid}", "conv_1", status, ["audio" if audio else "text"], [item],
                              status_details=details)


def test_response_text_and_failure_reason() -> None:
    assert rt.response_text(_response("1", "completed", "hello")) == "hello"
    assert rt.response_text(_response("1", "completed", "spoken", audio=True)) == "spoken"
    assert rt.response_text(_response("1", "completed", None)) == ""
    assert rt.failure_reason(_response("1", "completed", "x")) is None
    failed = _response("1", "failed", None, details={
        "type": "failed", "error": {"type": "server_error", "code": "engine_error", "message": "boom"}})
    assert rt.failure_reason(failed) == "failed: engine_error: boom"
    cancelled = _response("1", "cancelled", "x", details={"type": "cancelled", "reason": "client_cancelled"})
    assert rt.failure_reason(cancelled) == "cancelled: client_cancelled"


def test_response_matcher_in_order_with_repeats_withdrawals_and_extras() -> None:
    m = rt.ResponseMatcher()
    assert m.utterance_of("resp_x") is None  # nothing was asked yet
    for uid in ("u0", "u1", "u2"):
        m.expect(uid)
    assert m.utterance_of("resp_a") == "u0"
    assert m.utterance_of("resp_a") == "u0"  # its deltas and done
    m.withdraw("u1")  # refused: no answer will come for it
    assert m.utterance_of("resp_b") == "u2"
    assert m.utterance_of("resp_c") == "u2"  # nobody waits: a second answer to the last one


def test_audio_timeline_places_turns_in_their_utterance() -> None:
    t = rt.AudioTimeline()
    assert t.utterance_at(0) is None
    t.begin("u0")
    t.appended(bytes(4800 * 30))  # 3 s
    t.begin("u1")
    t.appended(bytes(4801))  # 100 ms: a partial sample pair is not a ms, as the gateway counts
    assert t.ms == 3100
    assert [t.utterance_at(ms) for ms in (0, 2999, 3000, 3099, 9999)] == ["u0", "u0", "u1", "u1", "u1"]


class ListSocket:
    """What the conversation sends, kept (no network)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, data: str) -> None:
        self.sent.append(json.loads(data))


def _conversation() -> tuple[GatewayConversation, ListSocket, Tracker, io.StringIO]:
    socket, tracker, out = ListSocket(), Tracker(), io.StringIO()
    conv = GatewayConversation(socket, "conv_1", tracker, DialoguePrinter(out, 1))  # type: ignore[arg-type]
    return conv, socket, tracker, out


def _answer(conv: GatewayConversation, rid: str, text: str) -> None:
    conv.handle(gw.event("response.created", response=gw.response_object(f"resp_{rid}", "conv_1", "in_progress",
                                                                         ["text"], [])))
    conv.handle(gw.event("response.output_text.delta", response_id=f"resp_{rid}", item_id=f"item_r{rid}",
                         output_index=0, content_index=0, delta=text))
    conv.handle(gw.event("response.done", response=_response(rid, "completed", text)))


async def test_text_turns_their_answers_a_refusal_and_a_duplicate() -> None:
    conv, socket, tracker, out = _conversation()
    u0 = await conv.say(0, "hello")
    assert [(e["type"], e["event_id"]) for e in socket.sent] == [
        ("conversation.item.create", "evt_u0000_item"), ("response.create", "evt_u0000_response")]
    assert socket.sent[0]["item"]["content"] == [{"type": "input_text", "text": "hello"}]
    _answer(conv, "1", "hi there")
    await conv.wait_answer(u0)
    u1 = await conv.say(1, "again")
    conv.handle(gw.error("busy", code="conversation_already_has_active_response", client_event_id="evt_u0001_response"))
    await conv.wait_answer(u1)  # settled as failed
    u2 = await conv.say(2, "third")
    _answer(conv, "2", "third answer")  # goes to u2: the refused u1 waits for nothing
    _answer(conv, "3", "unasked")  # a second answer: u2's duplicate
    records = {uid: tracker.records[("conv_1", uid)] for uid in (u0, u1, u2)}
    assert records[u0].answer == "hi there" and records[u0].dones == 1
    assert records[u1].failed == "conversation_already_has_active_response: busy" and records[u1].dones == 0
    assert records[u2].answer == "third answer" and records[u2].dones == 2
    summary = tracker.summary()
    assert (summary["responses_done"], summary["responses_failed"], summary["duplicates"]) == (2, 1, 1)
    assert not succeeded(summary) and conv.errors == 1
    assert "[CONVERSATION] AI: hi there" in out.getvalue()


async def test_spoken_turns_are_tied_by_audio_time_and_audio_out_is_counted() -> None:
    conv, _, tracker, _ = _conversation()
    conv.timeline.begin("u0000")
    tracker.sent("conv_1", "u0000", 0, "what is the weather", 0.0)
    conv.timeline.appended(bytes(48 * 2500))
    conv.timeline.begin("u0001")
    tracker.sent("conv_1", "u0001", 1, "and tomorrow", 0.0)
    conv.timeline.appended(bytes(48 * 2000))
    # Both turns' events arrive after the second utterance began (the reader lags the sender).
    for item, end_ms in (("item_a1", 1800), ("item_a2", 4200)):
        conv.handle(gw.event("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item))
        conv.handle(gw.event("input_audio_buffer.committed", item_id=item, previous_item_id=None))
    conv.handle(gw.event("conversation.item.input_audio_transcription.completed", item_id="item_a2",
                         content_index=0, transcript="And tomorrow?"))
    conv.handle(gw.event("conversation.item.input_audio_transcription.completed", item_id="item_a1",
                         content_index=0, transcript="What is the whether?"))
    _answer(conv, "1", "sunny")
    conv.handle(gw.event("response.output_audio.delta", response_id="resp_1", item_id="item_r1", output_index=0,
                         content_index=0, delta=base64.b64encode(bytes(960)).decode()))
    _answer(conv, "2", "rain")
    first, second = tracker.records[("conv_1", "u0000")], tracker.records[("conv_1", "u0001")]
    assert (first.transcript, first.answer, first.audio_bytes) == ("What is the whether?", "sunny", 960)
    assert (second.transcript, second.answer, second.audio_bytes) == ("And tomorrow?", "rain", 0)
    assert tracker.word_error_rate() == round(1 / 6, 4)  # "whether" for "weather": 1 word of 6
    summary = tracker.summary()
    assert summary["audio_out_bytes"] == 960 and summary["latency_ms"]["first_audio"]["n"] == 1


def test_summary_has_no_audio_figures_without_spoken_answers() -> None:
    tracker = Tracker()
    tracker.sent("c", "u0", 0, "hi", 0.0)
    tracker.done("c", "u0", "hello", 5.0)
    summary = tracker.summary()
    assert "first_audio" not in summary["latency_ms"] and "audio_out_bytes" not in summary
    assert succeeded(summary)


# --- interruptions --------------------------------------------------------------------------


class Clock:
    """The conversation's wall clock, moved by hand; every send takes 10 ms of it."""

    def __init__(self) -> None:
        self.ms = 1_000.0

    def __call__(self) -> float:
        return self.ms


class ClockedSocket(ListSocket):
    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    async def send(self, data: str) -> None:
        await super().send(data)
        self.clock.ms += 10


def _clocked(monkeypatch: pytest.MonkeyPatch) -> tuple[GatewayConversation, ClockedSocket, Tracker, Clock]:
    from simulator_svc import gateway_conversation

    clock = Clock()
    monkeypatch.setattr(gateway_conversation, "now_ms", clock)
    socket, tracker = ClockedSocket(clock), Tracker()
    conv = GatewayConversation(socket, "conv_1", tracker, DialoguePrinter(io.StringIO(), 1))  # type: ignore[arg-type]
    return conv, socket, tracker, clock


def _audio_delta(rid: str) -> dict[str, Any]:
    return gw.event("response.output_audio.delta", response_id=f"resp_{rid}", item_id=f"item_r{rid}",
                    output_index=0, content_index=0, delta=base64.b64encode(bytes(4800)).decode())


def _started(conv: GatewayConversation, rid: str, audio: bool) -> None:
    conv.handle(gw.event("response.created", response=gw.response_object(
        f"resp_{rid}", "conv_1", "in_progress", ["audio" if audio else "text"], [])))


async def test_speech_over_an_answer_is_timed_from_its_first_voiced_audio(monkeypatch: pytest.MonkeyPatch) -> None:
    conv, socket, tracker, clock = _clocked(monkeypatch)
    asked = await conv.say(0, "tell me a story")  # two sends: the clock is at 1020
    _started(conv, "1", audio=True)
    conv.handle(gw.event("response.output_audio_transcript.delta", response_id="resp_1", item_id="item_r1",
                         output_index=0, content_index=0, delta="Once upon a time. "))
    output = asyncio.ensure_future(conv.wait_output(asked))
    await asyncio.sleep(0)
    assert not output.done()  # a spoken answer's output is its audio, not its transcript
    conv.handle(_audio_delta("1"))
    await asyncio.wait_for(output, 1)
    # 300 ms of speech whose voice begins 250 ms in: the third 100 ms piece holds it.
    await conv.speak(1, "stop", bytes(48 * 300), 100.0, 1000.0, onset_ms=250.0, interrupting=asked)
    rec = tracker.records[("conv_1", asked)]
    assert rec.interrupt_ms == 1020 + 2 * 10  # sent after the first two pieces
    clock.ms = 1100
    conv.handle(gw.event("input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_a1"))
    clock.ms = 1150
    conv.handle(_audio_delta("1"))  # still in flight when the speech began
    clock.ms = 1180
    conv.handle(gw.event("response.done", response=_response("1", "cancelled", "Once upon a time.", audio=True,
                                                             details={"type": "cancelled", "reason": "turn_detected"})))
    assert (rec.dones, rec.cancelled, rec.answer, rec.interrupt_heard_ms) == (1, True, "Once upon a time.", 1100)
    assert rec.cancel_latency() == (1150 - 1040, "last_delta")
    summary = tracker.summary()
    assert (summary["cancelled"], summary["late_deltas"], summary["missing"]) == (1, 0, 1)  # "stop": unanswered
    assert summary["interruptions"] == {"attempted": 1, "cancelled": 1, "completed_first": 0,
                                        "to_last_delta": 1, "to_cancelled_done": 0}
    assert summary["latency_ms"]["cancel"]["max"] == 110 and summary["latency_ms"]["interruption_heard"]["max"] == 60
    # Audio of the answer after its cancelled done breaks the rule.
    conv.handle(_audio_delta("1"))
    assert tracker.summary()["late_deltas"] == 1
    tracker.done("conv_1", "u0001", "ok", 2000.0)
    assert not succeeded(tracker.summary())


async def test_response_cancel_and_a_cancel_that_comes_too_late(monkeypatch: pytest.MonkeyPatch) -> None:
    conv, socket, tracker, clock = _clocked(monkeypatch)
    first = await conv.say(0, "tell me a story")
    _started(conv, "1", audio=False)
    conv.handle(gw.event("response.output_text.delta", response_id="resp_1", item_id="item_r1", output_index=0,
                         content_index=0, delta="Once"))
    await asyncio.wait_for(conv.wait_output(first), 1)
    clock.ms = 1500
    await conv.cancel(first)
    assert socket.sent[-1] == {"type": "response.cancel", "event_id": "evt_u0000_cancel"}
    clock.ms = 1530  # no delta after the cancel: the latency runs to the cancelled done
    conv.handle(gw.event("response.done", response=_response("1", "cancelled", "Once",
                                                             details={"type": "cancelled", "reason": "turn_detected"})))
    await asyncio.wait_for(conv.wait_answer(first), 1)
    assert tracker.records[("conv_1", first)].cancel_latency() == (30, "cancelled_done")
    # The second answer ends before its cancel reaches the gateway, which refuses the cancel.
    second = await conv.say(1, "and another")
    _answer(conv, "2", "The end.")
    await conv.cancel(second)
    conv.handle(gw.error("Cancellation failed: no active response found", code="response_cancel_not_active",
                         client_event_id="evt_u0001_cancel"))
    assert (conv.errors, conv.late_cancels) == (0, 1)
    summary = tracker.summary()
    assert (summary["responses_done"], summary["cancelled"], summary["responses_failed"]) == (2, 1, 0)
    assert summary["interruptions"]["completed_first"] == 1 and succeeded(summary)
    # The done latency is of answers that ran their course.
    assert summary["latency_ms"]["response_done"]["n"] == 1
    lines = "".join(interruption_lines(summary))
    assert "1 answers completed, 1 interrupted (cancelled); no delta after" in lines
    assert "2 attempted, 1 cancelled, 1 answers complete first" in lines


def test_no_interruption_lines_without_interruptions() -> None:
    tracker = Tracker()
    tracker.sent("c", "u0", 0, "hi", 0.0)
    tracker.done("c", "u0", "hello", 5.0)
    summary = tracker.summary()
    assert (summary["cancelled"], summary["late_deltas"]) == (0, 0) and "interruptions" not in summary
    assert interruption_lines(summary) == []


def test_speech_onset_is_where_the_voice_begins() -> None:
    import numpy as np

    from shared.audio import float32_to_pcm16, silence_pcm
    from simulator_svc.audio_mode import speech_onset_ms

    tone = float32_to_pcm16(0.3 * np.sin(2 * np.pi * 220 * np.arange(24 * 400) / 24_000))
    assert speech_onset_ms(silence_pcm(500, 24_000) + tone + silence_pcm(300, 24_000)) == 500.0
    assert speech_onset_ms(tone) == 0.0
    assert speech_onset_ms(silence_pcm(1000, 24_000)) is None
