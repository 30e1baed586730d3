"""The simulator as a Realtime client of the gateway (``--gateway``), against the
real pipeline: transcriber, conversation worker and gateway as processes, a real
Redis. Text turns use the deterministic engines (echo answers name what they
answer), so the order of the answers is checked in the responses streams; the
spoken run uses the local recogniser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis as syncredis

from shared.devstack import Stack
from shared.models import ResponseDone, decode_fields
from simulator_svc.simulator import generated_utterances
from tests.conftest import run_simulator, wait_for_workers
from tests.gateway_helpers import KEY_A, start_gateway


def _pipeline(stack: Stack, redis_url: str, prefix: str, **transcriber_env: str) -> None:
    stack.start("transcriber_svc", transcriber_env)
    stack.start("conversation_svc")
    wait_for_workers(redis_url, prefix, 2, timeout_s=90)


def _dones(redis_url: str, prefix: str) -> list[list[ResponseDone]]:
    """Each conversation's response.done entries, in stream order."""
    client = syncredis.Redis.from_url(redis_url)
    try:
        streams = sorted(client.scan_iter(match=f"{prefix}:conv:*:responses"))
        return [[e for _, fields in client.xrange(key)
                 if isinstance(e := decode_fields(fields), ResponseDone)] for key in streams]
    finally:
        client.close()


def _answers(redis_url: str, prefix: str) -> list[list[str]]:
    """Each conversation's answers (response.done texts), in stream order."""
    return [[d.text for d in dones] for dones in _dones(redis_url, prefix)]


def test_text_conversations_through_the_gateway(stack: Stack, redis_url: str, prefix: str) -> None:
    _pipeline(stack, redis_url, prefix)
    _, base = start_gateway(stack)
    code, summary, stderr = run_simulator(
        {**stack.env, "GATEWAY_CLIENT_KEY": KEY_A}, "--gateway", base, "--mode", "text",
        "--conversations", "3", "--utterances", "4", "--no-greeting", "--rate", "10")
    assert code == 0, (summary, stderr)
    assert (summary["conversations"], summary["utterances"], summary["responses_done"]) == (3, 12, 12)
    assert (summary["missing"], summary["duplicates"], summary["out_of_order"]) == (0, 0, 0)
    assert summary["gateway_errors"] == 0
    assert summary["gateway"] == base.replace("http://", "ws://") + "/v1/realtime?model=local"
    assert summary["latency_ms"]["response_done"]["n"] == 12
    # Each answer is its own utterance's, in order (echo names what it answers and the turn).
    expected = [f'I\'ve received your transcription: "{text}" (turn {k + 1})'
                for k, text in enumerate(generated_utterances(4))]
    assert _answers(redis_url, prefix) == [expected] * 3


def test_text_answers_cancelled_mid_way(stack: Stack, redis_url: str, prefix: str) -> None:
    """--cancel-after-ms: each answer (streamed slowly by echo) gets a response.cancel soon
    after its first delta, ends cancelled, and is the only done of its utterance."""
    stack.start("transcriber_svc")
    stack.start("conversation_svc", {"ECHO_DELTA_DELAY_MS": "200", "ECHO_WORDS_PER_DELTA": "1"})
    wait_for_workers(redis_url, prefix, 2)
    _, base = start_gateway(stack)
    code, summary, stderr = run_simulator(
        {**stack.env, "GATEWAY_CLIENT_KEY": KEY_A}, "--gateway", base, "--mode", "text", "--cancel-after-ms", "50",
        "--conversations", "2", "--utterances", "3", "--no-greeting")
    assert code == 0, (summary, stderr)
    assert (summary["utterances"], summary["responses_done"], summary["cancelled"]) == (6, 6, 6)
    assert (summary["missing"], summary["duplicates"], summary["late_deltas"]) == (0, 0, 0)
    assert summary["interruptions"]["attempted"] == summary["latency_ms"]["cancel"]["n"] == 6
    assert summary["gateway_errors"] == 0 and summary["late_cancels"] == 0
    # The pipeline stopped each answer too: one done each, cancelled, with the start of the answer.
    dones = _dones(redis_url, prefix)
    assert [[d.status for d in c] for c in dones] == [["cancelled"] * 3] * 2
    for conversation in dones:
        for k, (done, text) in enumerate(zip(conversation, generated_utterances(3), strict=True)):
            full = f'I\'ve received your transcription: "{text}" (turn {k + 1})'
            assert full.startswith(done.text) and len(done.text) < len(full)


def test_a_refused_key_fails_every_utterance(stack: Stack, redis_url: str, prefix: str) -> None:
    _, base = start_gateway(stack)
    code, summary, _ = run_simulator(stack.env, "--gateway", base, "--api-key", "sk-not-a-key-000000000000",
                                     "--mode", "text", "--conversations", "2", "--utterances", "2", "--no-greeting")
    assert code == 1
    assert (summary["utterances"], summary["responses_done"], summary["responses_failed"]) == (4, 0, 4)


@pytest.mark.slow
@pytest.mark.local_models
def test_spoken_conversation_through_the_gateway(stack: Stack, redis_url: str, prefix: str) -> None:
    _pipeline(stack, redis_url, prefix, TRANSCRIBER_ENGINE="local")
    _, base = start_gateway(stack)
    code, summary, stderr = run_simulator(
        stack.env, "--gateway", base, "--api-key", KEY_A, "--mode", "audio", "--audio-out",
        "--conversations", "1", "--utterances", "2", "--no-greeting")
    assert code == 0, (summary, stderr)
    assert (summary["utterances"], summary["responses_done"], summary["duplicates"]) == (2, 2, 0)
    latency = summary["latency_ms"]
    assert latency["transcript_final"]["n"] == latency["first_audio"]["n"] == 2
    assert summary["wer"] is not None and summary["wer"] < 0.5
    assert summary["audio_out_bytes"] > 2 * 48_000  # over a second of 24 kHz PCM16 per answer


@pytest.mark.slow
@pytest.mark.local_models
def test_spoken_barge_in_through_the_gateway(stack: Stack, redis_url: str, prefix: str, tmp_path: Path) -> None:
    """--barge-in: each utterance after the first is spoken over the previous answer (echo
    streams it slowly, sentence by sentence); the gateway cancels it, the new speech is
    answered next, and the last answer completes."""
    stack.start("transcriber_svc", {"TRANSCRIBER_ENGINE": "local"})
    stack.start("conversation_svc", {"ECHO_DELTA_DELAY_MS": "200", "ECHO_WORDS_PER_DELTA": "1"})
    wait_for_workers(redis_url, prefix, 2, timeout_s=90)
    _, base = start_gateway(stack)
    lines = tmp_path / "utterances.txt"
    lines.write_text("Tell me about the sea. Take your time.\n"
                     "Tell me about the mountains instead. Give me details.\n"
                     "Now tell me about the forest.\n")
    code, summary, stderr = run_simulator(
        stack.env, "--gateway", base, "--api-key", KEY_A, "--mode", "audio", "--barge-in",
        "--utterances", str(lines), "--no-greeting", timeout_s=300)
    assert code == 0, (summary, stderr)
    assert (summary["utterances"], summary["responses_done"], summary["cancelled"]) == (3, 3, 2)
    assert (summary["missing"], summary["duplicates"], summary["late_deltas"]) == (0, 0, 0)
    assert summary["interruptions"] == {"attempted": 2, "cancelled": 2, "completed_first": 0,
                                        "to_last_delta": summary["interruptions"]["to_last_delta"],
                                        "to_cancelled_done": summary["interruptions"]["to_cancelled_done"]}
    assert summary["latency_ms"]["cancel"]["n"] == summary["latency_ms"]["interruption_heard"]["n"] == 2
    assert summary["audio_out_bytes"] > 0
    dones = _dones(redis_url, prefix)
    assert [[d.status for d in c] for c in dones] == [["cancelled", "cancelled", "completed"]]
    assert "forest" in dones[0][2].text.lower()  # the last speech was heard and answered


@pytest.mark.slow
def test_the_run_command_goes_through_the_gateway(redis_url: str, prefix: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "OPENAI_API_KEY"}
    env.update(REDIS_URL=redis_url, KEY_PREFIX=prefix, TRANSCRIBER_ENGINE="simulated", CONVERSATION_ENGINE="echo",
               LOG_FORMAT="json", DEVSTACK_LOG_DIR=str(tmp_path / "logs"),
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "shared.devstack", "--mode", "text", "--utterances", "2", "--json"],
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "anonymous access for this local demo" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["gateway"].startswith("ws://localhost:")
    assert (summary["utterances"], summary["responses_done"], summary["missing"]) == (3, 3, 0)  # greeting + 2
