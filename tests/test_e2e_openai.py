"""The whole pipeline with TRANSCRIBER_ENGINE=openai and CONVERSATION_ENGINE=openai
against the fake Realtime server: services as real processes, the fake in a
thread of the test process, faults injected mid-run."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

import pytest
import redis as syncredis

from shared.devstack import Stack
from shared.keys import Keys
from shared.models import AudioChunk, AudioEnd, ConversationEnded, ConversationStarted, encode
from tests.conftest import base_env, run_simulator, wait_for_workers
from tests.fake_realtime import FakeRealtimeServer, ThreadedFakeServer
from tests.fake_realtime_script import Faults, speech_pcm

pytestmark = pytest.mark.slow

KEY = "sk-e2e-fake-KEY-0123456789abcdef"
ITEMS = re.compile(r"\(items (\d+)\)$")


def _entries(client: syncredis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(fields[b"d"]) for _, fields in client.xrange(key, "-", "+")]


def _openai_env(url: str) -> dict[str, str]:
    return {
        "TRANSCRIBER_ENGINE": "openai",
        "CONVERSATION_ENGINE": "openai",
        "OPENAI_API_KEY": KEY,
        "OPENAI_REALTIME_URL": url,
        "OPENAI_TIMEOUT_S": "10",
    }


def test_pipeline_with_openai_engines_survives_expiry_and_a_drop(
    stack: Stack, redis_url: str, prefix: str
) -> None:
    faults = Faults(
        expire_after_responses=2,  # one conversation session expires after its 2nd answer
        drop_after_responses=4,  # one connection drops in the middle of an answer
        completion_delays_s=[0.3, 0.0],  # transcripts of the audio conversation arrive out of order
    )
    fake = FakeRealtimeServer(api_key=KEY, faults=faults)
    with ThreadedFakeServer(fake) as server:
        env = _openai_env(server.url)
        stack.start("transcriber_svc", extra_env=env)
        stack.start("conversation_svc", extra_env=env)
        wait_for_workers(redis_url, prefix, 2)

        rc, summary, stderr = run_simulator(base_env(redis_url, prefix), "--conversations", "3",
                                            "--utterances", "6", "--rate", "4", "--timeout", "90")
        logs = "\n".join(p.log_text()[-4000:] for p in stack.procs)
        assert rc == 0, f"{summary}\n{stderr[-3000:]}\n{logs}"
        assert summary["missing"] == 0 and summary["duplicates"] == 0, summary

        client = syncredis.Redis.from_url(redis_url)
        keys = Keys(prefix=prefix)
        try:
            response_keys = sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:conv:*:responses"))
            assert len(response_keys) == 3
            for key in response_keys:
                done = [e for e in _entries(client, key) if e["type"] == "response.done"]
                assert len(done) == 7  # the greeting + 6 utterances
                counts = [int(ITEMS.search(e["text"]).group(1)) for e in done]  # type: ignore[union-attr]
                # Every answer saw the whole conversation, also on a session opened after
                # an expiry or a drop: the history was replayed into it.
                assert counts == [1, 3, 5, 7, 9, 11, 13], (key, counts)
                assert all(e["text"].startswith('echo: "') for e in done)

            # The faults really happened, on conversation sessions.
            faulted = [s.closed_by_fault for s in fake.kind_sessions("realtime") if s.closed_by_fault]
            assert sorted(faulted) == ["drop_after_responses", "session_expired"]
            assert len(fake.kind_sessions("realtime")) == 5  # 3 conversations + 2 new sessions
            # Text mode needs no upstream transcription session.
            assert fake.kind_sessions("transcription") == []

            _audio_conversation(client, keys, fake)
            assert KEY not in _everything_written(client, prefix)
        finally:
            client.close()

        for proc in stack.procs:
            assert KEY not in proc.log_text()


def _audio_conversation(client: syncredis.Redis, keys: Keys, fake: FakeRealtimeServer) -> None:
    """Speech through the openai transcription engine: audio.chunk / audio.end
    entries written straight to the input stream."""
    cid = "audio-conv-1"
    said = ["what time is it", "and the weather", "thanks a lot"]
    client.xadd(keys.control_for(cid), {"d": encode(ConversationStarted(conversation_id=cid, mode="audio"))})
    input_key = keys.input(cid)
    for n, text in enumerate(said):
        pcm = speech_pcm(text, duration_ms=300)
        for seq, start in enumerate(range(0, len(pcm), 4800)):
            chunk = AudioChunk(conversation_id=cid, utterance_id=f"a{n}", seq=seq,
                               audio=base64.b64encode(pcm[start:start + 4800]).decode())
            client.xadd(input_key, {"d": encode(chunk)})
        client.xadd(input_key, {"d": encode(AudioEnd(conversation_id=cid, utterance_id=f"a{n}",
                                                      sent_ms=int(time.time() * 1000), reference_text=text))})
    # A too-short utterance: skipped by the engine, never committed upstream.
    short = AudioChunk(conversation_id=cid, utterance_id="a-short", seq=0,
                       audio=base64.b64encode(b"\x01\x00" * 100).decode())
    client.xadd(input_key, {"d": encode(short)})
    client.xadd(input_key, {"d": encode(AudioEnd(conversation_id=cid, utterance_id="a-short", sent_ms=1))})
    client.xadd(input_key, {"d": encode(ConversationEnded(conversation_id=cid))})

    deadline = time.monotonic() + 30
    finals: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        finals = [e for e in _entries(client, keys.transcripts(cid)) if e["type"] == "transcript.final"]
        done = [e for e in _entries(client, keys.responses(cid)) if e["type"] == "response.done"]
        if len(done) >= len(said):
            break
        time.sleep(0.1)
    assert [f["text"] for f in finals] == said  # in commit order, though transcripts arrived out of order
    assert [f["utterance_id"] for f in finals] == ["a0", "a1", "a2"]
    assert [d["utterance_id"] for d in done] == ["a0", "a1", "a2"]
    assert [d["text"] for d in done] == [f'echo: "{t}" (items {2 * i + 1})' for i, t in enumerate(said)]
    transcription = fake.kind_sessions("transcription")
    assert len(transcription) == 1
    assert transcription[0].query == {"intent": ["transcription"]}
    assert transcription[0].errors() == []
    assert transcription[0].commits == 3
    # Every input entry was acked (nothing left pending in the transcriber's group).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and client.xpending(input_key, "transcriber")["pending"]:
        time.sleep(0.1)
    assert client.xpending(input_key, "transcriber")["pending"] == 0


def _everything_written(client: syncredis.Redis, prefix: str) -> str:
    """Every field of every stream entry and every hash under ``prefix``, as text."""
    parts: list[str] = []
    for key in client.scan_iter(match=f"{prefix}:*"):
        kind = client.type(key)
        if kind == b"stream":
            for _id, fields in client.xrange(key, "-", "+"):
                parts += [f"{k!r}={v!r}" for k, v in fields.items()]
        elif kind == b"hash":
            parts += [f"{k!r}={v!r}" for k, v in client.hgetall(key).items()]
    return "\n".join(parts)


def test_a_rejected_key_fails_each_answer_cleanly_and_leaks_nowhere(
    stack: Stack, redis_url: str, prefix: str
) -> None:
    """The upstream refuses our key (HTTP 401 at the handshake): every utterance gets
    a response.failed, and the key appears in no log line and no stream entry."""
    wrong = "sk-e2e-wrong-KEY-9876543210fedcba"
    fake = FakeRealtimeServer(api_key=KEY)
    with ThreadedFakeServer(fake) as server:
        env = {**_openai_env(server.url), "OPENAI_API_KEY": wrong, "TRANSCRIBER_ENGINE": "simulated"}
        stack.start("transcriber_svc", extra_env=env)
        stack.start("conversation_svc", extra_env=env)
        wait_for_workers(redis_url, prefix, 2)
        rc, summary, _stderr = run_simulator(base_env(redis_url, prefix), "--conversations", "2",
                                             "--utterances", "2", "--no-greeting", "--timeout", "60")
        # Every utterance ends, in a failure: none answered, none twice, none left hanging.
        assert rc == 1 and summary["duplicates"] == 0, summary
        assert summary["responses_failed"] == 4 and summary["responses_done"] == 0, summary
        client = syncredis.Redis.from_url(redis_url)
        try:
            written = _everything_written(client, prefix)
        finally:
            client.close()
        assert "response.failed" in written and "refused the API key (HTTP 401)" in written, written[-2000:]
        assert wrong not in written
        for proc in stack.procs:
            assert wrong not in proc.log_text()
