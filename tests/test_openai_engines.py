"""The two OpenAI engines against the fake Realtime server, in-process over
real WebSockets (tests/fake_realtime.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from pydantic import ValidationError
from websockets.asyncio.client import connect

from conversation_svc.engines.openai import OpenAIConversation, _Stitcher
from shared.engines.base import Completed, ConversationSession, EngineError, EngineUnavailable, TextDelta
from shared.history import Turn
from shared.models import AudioChunk, AudioEnd, UtteranceText
from shared.realtime.connection import RealtimeAuthError, RealtimeEndpoint, realtime_url
from shared.settings import ConversationSettings, OpenAISettings
from tests.fake_realtime import FakeRealtimeServer
from tests.fake_realtime_script import answer_text, speech_pcm
from transcriber_svc.engines.openai import OpenAITranscription

KEY = "sk-test-SECRETKEY-0123456789abcdef"


def fast_delays() -> Any:
    while True:
        yield 0.01


@pytest.fixture
async def fake() -> AsyncIterator[FakeRealtimeServer]:
    async with FakeRealtimeServer(api_key=KEY) as server:
        yield server


def endpoint(server: FakeRealtimeServer, key: str = KEY, timeout_s: float = 5.0) -> RealtimeEndpoint:
    return RealtimeEndpoint(api_key=key, base_url=server.url, timeout_s=timeout_s, ping_interval_s=None)


def conversation(server: FakeRealtimeServer, **kw: Any) -> OpenAIConversation:
    return OpenAIConversation(endpoint(server, **kw), delays=fast_delays)


async def ask(session: ConversationSession, text: str) -> tuple[str, list[Any]]:
    events = [e async for e in session.respond(text)]
    assert isinstance(events[-1], Completed)
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    return "".join(e.text for e in events[:-1]), events


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


# --- conversation engine ---------------------------------------------------------------


async def test_conversation_text_flow(fake: FakeRealtimeServer) -> None:
    session = await conversation(fake).open_session("c1", "Be brief.", [])
    try:
        text, events = await ask(session, "hello there")
        assert text == answer_text("hello there", 1)
        assert len(events) > 3  # several deltas, then Completed
        assert events[-1].usage["total_tokens"] == events[-1].usage["input_tokens"] + events[-1].usage["output_tokens"]
        text2, _ = await ask(session, "and again")
        assert text2 == answer_text("and again", 3)
    finally:
        await session.close()
    record = fake.sessions[0]
    assert record.query == {"model": ["gpt-realtime"]}
    assert record.headers["Authorization"] == f"Bearer {KEY}"
    assert "OpenAI-Beta" not in record.headers
    assert record.received[0]["session"] == {"type": "realtime", "output_modalities": ["text"],
                                             "instructions": "Be brief."}
    assert record.received_types()[1:] == ["conversation.item.create", "response.create"] * 2
    assert record.errors() == []


async def test_history_is_replayed_into_the_session(fake: FakeRealtimeServer) -> None:
    history = [Turn("u1", "first", "one"), Turn("u2", "second", "two")]
    session = await conversation(fake).open_session("c1", "sys", history)
    try:
        text, _ = await ask(session, "third")
    finally:
        await session.close()
    assert text == answer_text("third", 5)  # 4 replayed messages + this one
    received = fake.sessions[0].received
    assert [e["type"] for e in received] == ["session.update"] + ["conversation.item.create"] * 5 + ["response.create"]
    assert received[2]["item"]["content"] == [{"type": "output_text", "text": "one"}]


async def test_session_expiry_opens_a_new_session_and_replays(fake: FakeRealtimeServer) -> None:
    fake.faults.expire_after_responses = 2
    session = await conversation(fake).open_session("c1", "sys", [Turn("u0", "zero", "nil")])
    try:
        texts = [(await ask(session, f"q{i}"))[0] for i in range(4)]
    finally:
        await session.close()
    assert texts == [answer_text(f"q{i}", 3 + 2 * i) for i in range(4)]
    assert [s.closed_by_fault for s in fake.sessions] == ["session_expired", None]
    assert fake.sessions[1].received_types()[0] == "session.update"
    replayed = [e for e in fake.sessions[1].received if e["type"] == "conversation.item.create"][:6]
    assert [e["item"]["content"][0]["text"] for e in replayed] == [
        "zero", "nil", "q0", answer_text("q0", 3), "q1", answer_text("q1", 5)]


@pytest.mark.parametrize("drop_code", [1006, 1011])
async def test_drop_mid_response_retries_the_turn_once_without_repeating_text(
    fake: FakeRealtimeServer, drop_code: int
) -> None:
    fake.faults.drop_after_responses = 1
    fake.faults.drop_code = drop_code
    session = await conversation(fake).open_session("c1", "sys", [])
    try:
        first, _ = await ask(session, "a")
        second, events = await ask(session, "b")  # dropped after its first delta, retried
        third, _ = await ask(session, "c")
    finally:
        await session.close()
    assert (first, second, third) == (answer_text("a", 1), answer_text("b", 3), answer_text("c", 5))
    assert fake.sessions[0].closed_by_fault == "drop_after_responses"
    assert len(fake.sessions) == 2


async def test_two_drops_in_one_turn_give_a_retryable_error(fake: FakeRealtimeServer) -> None:
    fake.faults.drop_after_responses = 0
    fake.faults.drop_budget = 2
    session = await conversation(fake).open_session("c1", "sys", [])
    try:
        with pytest.raises(EngineError) as info:
            await ask(session, "a")
        assert info.value.retryable
        text, _ = await ask(session, "b")  # the next turn works on a new session
        assert text == answer_text("b", 1)
    finally:
        await session.close()


async def test_rate_limit_is_a_failed_turn_not_a_retry_loop(fake: FakeRealtimeServer) -> None:
    fake.faults.rate_limit_responses = 1
    session = await conversation(fake).open_session("c1", "sys", [])
    try:
        with pytest.raises(EngineError) as info:
            await ask(session, "a")
        assert info.value.code == "rate_limit_exceeded"
        assert not info.value.retryable
        assert "Rate limit reached" in str(info.value)
        text, _ = await ask(session, "b")
    finally:
        await session.close()
    # One response.create for the failed turn (not retried), one for the next.
    assert fake.sessions[0].received_types().count("response.create") == 2
    assert text == answer_text("b", 2)  # the failed turn's user item stays in the upstream conversation
    assert len(fake.sessions) == 1


async def test_invalid_key_is_a_clear_error_and_never_logged(
    fake: FakeRealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = "sk-WRONG-key-do-not-print-0123456789"
    with pytest.raises(RealtimeAuthError) as info:
        await conversation(fake, key=bad).open_session("c1", "sys", [])
    assert info.value.code == "invalid_api_key" and not info.value.retryable
    assert "HTTP 401" in str(info.value) and "OPENAI_API_KEY" in str(info.value)
    assert fake.rejected_handshakes == [401]  # no retry loop
    assert bad not in str(info.value)
    assert bad not in caplog.text
    assert any("refused the API key" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


async def test_close_3000_invalid_key_is_fatal(fake: FakeRealtimeServer) -> None:
    fake.faults.close_3000_on_open = True
    with pytest.raises(EngineError) as info:
        await conversation(fake).open_session("c1", "sys", [])
    assert info.value.code == "invalid_api_key" and not info.value.retryable
    assert len(fake.sessions) == 1


async def test_key_never_in_logs_during_a_session(fake: FakeRealtimeServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.faults.drop_after_responses = 1
    session = await conversation(fake).open_session("c1", "sys", [])
    try:
        await ask(session, "a")
        await ask(session, "b")
    finally:
        await session.close()
    assert caplog.records  # websockets' debug log (request headers included) was captured
    assert KEY not in caplog.text
    assert all(KEY not in str(r.args) for r in caplog.records)


def test_stitcher_continues_or_restarts_visibly() -> None:
    same = _Stitcher()
    assert [same.piece(p) for p in ("Hello ", "wor")] == ["Hello ", "wor"]
    same.restart()
    assert [same.piece(p) for p in ("Hel", "lo ", "world", "!")] == ["", "", "ld", "!"]
    assert same.streamed == "Hello world!"
    other = _Stitcher()
    other.piece("Hello ")
    other.restart()
    assert [other.piece(p) for p in ("Hi", " there")] == ["\nHi", " there"]
    empty = _Stitcher()
    empty.restart()
    assert empty.piece("x") == "x"


# --- transcription engine ------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.deltas: list[tuple[str, str]] = []
        self.finals: list[tuple[str, str, int, tuple[str, ...]]] = []
        self.skips: list[tuple[tuple[str, ...], str]] = []

    def delta(self, utterance_id: str, text: str) -> None:
        self.deltas.append((utterance_id, text))

    def final(self, utterance_id: str, text: str, sent_ms: int, consumed_ids: Sequence[str]) -> None:
        self.finals.append((utterance_id, text, sent_ms, tuple(consumed_ids)))

    def skip(self, consumed_ids: Sequence[str], reason: str) -> None:
        self.skips.append((tuple(consumed_ids), reason))


class Feeder:
    """Feeds input entries with increasing entry ids."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.n = 0

    def next_id(self) -> str:
        self.n += 1
        return f"{1000 + self.n}-0"

    async def say(self, uid: str, text: str, duration_ms: int = 300, chunk_bytes: int = 4800) -> list[str]:
        pcm = speech_pcm(text, duration_ms)
        ids = []
        for seq, start in enumerate(range(0, len(pcm), chunk_bytes)):
            ids.append(self.next_id())
            audio = base64.b64encode(pcm[start:start + chunk_bytes]).decode()
            await self.session.feed(ids[-1], AudioChunk(conversation_id="c1", utterance_id=uid, seq=seq, audio=audio))
        ids.append(self.next_id())
        await self.session.feed(ids[-1], AudioEnd(conversation_id="c1", utterance_id=uid, sent_ms=self.n))
        return ids

    async def type(self, uid: str, text: str) -> str:
        entry_id = self.next_id()
        await self.session.feed(entry_id, UtteranceText(conversation_id="c1", utterance_id=uid, text=text,
                                                        sent_ms=self.n))
        return entry_id


def transcription(server: FakeRealtimeServer, **kw: Any) -> OpenAITranscription:
    return OpenAITranscription(endpoint(server), delays=fast_delays, **kw)


async def test_typed_utterances_need_no_upstream(fake: FakeRealtimeServer) -> None:
    sink = Sink()
    session = await transcription(fake).open_session("c1", sink)
    feeder = Feeder(session)
    entry = await feeder.type("t1", "just text")
    await session.flush()
    await session.close()
    assert sink.finals == [("t1", "just text", 1, (entry,))]
    assert fake.sessions == []


async def test_out_of_order_completions_reach_the_sink_in_commit_order(fake: FakeRealtimeServer) -> None:
    fake.faults.completion_delays_s = [0.3, 0.1, 0.0]  # transcripts arrive 3, 2, 1
    sink = Sink()
    session = await transcription(fake).open_session("c1", sink)
    feeder = Feeder(session)
    try:
        ids = [await feeder.say(f"u{i}", f"utterance {i}") for i in range(3)]
        typed = await feeder.type("t", "typed after")
        await session.flush()
    finally:
        await session.close()
    assert [(f[0], f[1]) for f in sink.finals] == [("u0", "utterance 0"), ("u1", "utterance 1"),
                                                   ("u2", "utterance 2"), ("t", "typed after")]
    assert [f[3] for f in sink.finals] == [tuple(i) for i in ids] + [(typed,)]
    assert [f[2] for f in sink.finals[:3]] == [int(i[-1].split("-")[0]) - 1000 for i in ids]  # the audio.end's sent_ms
    assert {d[0] for d in sink.deltas} == {"u0", "u1", "u2"}
    record = fake.sessions[0]
    assert record.query == {"intent": ["transcription"]}  # no model in the URL
    assert record.received[0]["session"]["audio"]["input"]["turn_detection"] is None
    assert record.received[0]["session"]["audio"]["input"]["transcription"] == {"model": "gpt-4o-transcribe"}
    assert record.errors() == []


async def test_short_audio_is_skipped_never_committed(fake: FakeRealtimeServer) -> None:
    sink = Sink()
    session = await transcription(fake).open_session("c1", sink)
    feeder = Feeder(session)
    try:
        short = await feeder.say("u0", "hi", duration_ms=50)
        end_only = feeder.next_id()
        await session.feed(end_only, AudioEnd(conversation_id="c1", utterance_id="u1", sent_ms=1))
        good = await feeder.say("u2", "fine")
        await session.flush()
    finally:
        await session.close()
    assert [s[0] for s in sink.skips] == [tuple(short), (end_only,)]
    assert sink.finals == [("u2", "fine", sink.finals[0][2], tuple(good))]
    assert "input_audio_buffer.commit" in fake.sessions[0].received_types()
    assert fake.sessions[0].errors() == []  # never an empty commit


async def test_failed_transcription_is_skipped_and_order_continues(fake: FakeRealtimeServer) -> None:
    fake.faults.fail_transcripts = {"mumble"}
    fake.faults.completion_delays_s = [0.2, 0.0]
    sink = Sink()
    session = await transcription(fake).open_session("c1", sink)
    feeder = Feeder(session)
    try:
        bad = await feeder.say("u0", "mumble")
        await feeder.say("u1", "clear")
        await session.flush()
    finally:
        await session.close()
    assert sink.skips[0][0] == tuple(bad) and "audio_unintelligible" in sink.skips[0][1]
    assert [f[1] for f in sink.finals] == ["clear"]


@pytest.mark.parametrize("fault", ["expire", "drop1006", "drop1011"])
async def test_transcription_survives_expiry_and_drops_by_resending_audio(fake: FakeRealtimeServer,
                                                                       fault: str) -> None:
    if fault == "expire":
        fake.faults.expire_after_commits = 2
    else:
        fake.faults.drop_after_commits = 2
        fake.faults.drop_code = 1006 if fault == "drop1006" else 1011
    fake.faults.completion_delays_s = [0.05]
    sink = Sink()
    session = await transcription(fake).open_session("c1", sink)
    feeder = Feeder(session)
    try:
        for i in range(4):
            await feeder.say(f"u{i}", f"words {i}")
        await session.flush()
    finally:
        await session.close()
    assert [f[1] for f in sink.finals] == [f"words {i}" for i in range(4)]
    assert sink.skips == []
    assert len(fake.sessions) == 2
    assert fake.sessions[1].received[0]["type"] == "session.update"  # re-sent on the new connection


async def test_server_vad_mode(fake: FakeRealtimeServer) -> None:
    sink = Sink()
    session = await transcription(fake, turn_detection="server_vad").open_session("c1", sink)
    feeder = Feeder(session)
    try:
        # 300 ms of "speech" then 600 ms of silence per utterance: the fake's VAD commits each.
        for i in range(2):
            await feeder.say(f"u{i}", f"vad {i}", duration_ms=900)
            # A real client streams in real time: the server's commit lands before the next utterance.
            await asyncio.sleep(0.2)
        await session.flush()
    finally:
        await session.close()
    assert [(f[0], f[1]) for f in sink.finals] == [("u0", "vad 0"), ("u1", "vad 1")]
    assert "input_audio_buffer.commit" not in fake.sessions[0].received_types()
    assert fake.sessions[0].received[0]["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"


async def test_transcription_with_a_bad_key_skips_with_a_clear_reason(
    fake: FakeRealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = "sk-another-WRONG-key-0123456789"
    sink = Sink()
    engine = OpenAITranscription(endpoint(fake, key=bad), delays=fast_delays)
    session = await engine.open_session("c1", sink)
    feeder = Feeder(session)
    try:
        ids = await feeder.say("u0", "hello")
        await session.flush()
        with pytest.raises(EngineError) as info:
            await feeder.say("u1", "again")
        assert info.value.code == "invalid_api_key"
    finally:
        await session.close()
    assert sink.skips and sink.skips[0][0] == tuple(ids) and "API key" in sink.skips[0][1]
    assert fake.rejected_handshakes == [401]
    assert bad not in caplog.text
