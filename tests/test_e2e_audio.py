"""The voice path through the real services with the bundled local models:
speech in, transcripts and answers out; and bad audio, which must end as a
clear error or a dead letter with the worker alive and the good audio answered."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import redis as syncredis
import redis.asyncio as aioredis

from shared.devstack import Stack
from shared.keys import Keys
from shared.models import (
    AudioChunk,
    AudioEnd,
    ConversationStarted,
    DeadLetter,
    ResponseDone,
    TranscriptFinal,
    decode_fields,
    encode,
)
from simulator_svc.audio_mode import publish_audio_utterance, speech_pcm
from tests.conftest import run_simulator, wait_for_workers

pytestmark = [pytest.mark.slow, pytest.mark.local_models]


def test_three_spoken_utterances_are_answered_once(stack: Stack, redis_url: str, prefix: str) -> None:
    env = {"TRANSCRIBER_ENGINE": "local", "CONVERSATION_ENGINE": "local"}
    stack.start("transcriber_svc", env)
    stack.start("conversation_svc", env)
    wait_for_workers(redis_url, prefix, 2, timeout_s=60)
    rc, summary, err = run_simulator(
        stack.env, "--mode", "audio", "--utterances", "3", "--no-greeting", "--realtime-factor", "4",
        "--timeout", "120",
    )
    assert rc == 0, err
    assert summary["utterances"] == 3 and summary["responses_done"] == 3
    assert summary["missing"] == 0 and summary["duplicates"] == 0
    assert summary["wer"] is not None and summary["wer"] < 0.5  # tiny.en on espeak: about 10% here


def _chunk(cid: str, uid: str | None, seq: int, pcm: bytes) -> bytes:
    return encode(AudioChunk(conversation_id=cid, utterance_id=uid, seq=seq, audio=base64.b64encode(pcm).decode()))


def _raw_chunk(cid: str, audio_b64: str) -> bytes:
    return (b'{"type": "audio.chunk", "conversation_id": "' + cid.encode() + b'", "utterance_id": "x", "seq": 0, '
            b'"audio": "' + audio_b64.encode() + b'"}')


def _send_speech(r: syncredis.Redis, keys: Keys, cid: str, uid: str, text: str, end: bool = True) -> None:
    pcm = speech_pcm(text)
    step = 4800  # 100 ms of PCM16 at 24 kHz
    for seq, start in enumerate(range(0, len(pcm), step)):
        r.xadd(keys.input(cid), {"d": _chunk(cid, uid, seq, pcm[start : start + step])})
    if end:
        r.xadd(keys.input(cid), {"d": encode(AudioEnd(conversation_id=cid, utterance_id=uid,
                                                     sent_ms=int(time.time() * 1000)))})


def test_bad_audio_is_refused_and_the_good_audio_answered(stack: Stack, redis_url: str, prefix: str) -> None:
    procs = [stack.start("transcriber_svc", {"TRANSCRIBER_ENGINE": "local"}), stack.start("conversation_svc")]
    wait_for_workers(redis_url, prefix, 2, timeout_s=60)
    keys = Keys(prefix)
    r = syncredis.Redis.from_url(redis_url)
    cid = "bad-audio"
    r.xadd(keys.control_for(cid), {"d": encode(ConversationStarted(conversation_id=cid, mode="audio"))})
    # 1. An odd number of bytes: not whole PCM16 samples.
    r.xadd(keys.input(cid), {"d": _raw_chunk(cid, base64.b64encode(b"\x01\x02\x03").decode())})
    # 2. A chunk over the size limit (3 s of audio).
    r.xadd(keys.input(cid), {"d": _raw_chunk(cid, base64.b64encode(b"\x00\x00" * 72_000).decode())})
    # 3. The wrong sample format: a whole WAV file (header and all) sent as a chunk.
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44_100)
        w.writeframes(b"\x00\x00" * 2000)
    r.xadd(keys.input(cid), {"d": _raw_chunk(cid, base64.b64encode(buf.getvalue()).decode())})
    # 4. Silence only, with its audio.end: no transcript, nothing left pending.
    silence = b"\x00\x00" * 24_000
    for seq in range(5):
        r.xadd(keys.input(cid), {"d": _chunk(cid, "silent", seq, silence[seq * 9600 : (seq + 1) * 9600])})
    r.xadd(keys.input(cid), {"d": encode(AudioEnd(conversation_id=cid, utterance_id="silent", sent_ms=1))})
    # 5. Speech with no audio.end, then the next utterance (its new id ends the first).
    _send_speech(r, keys, cid, "no-end", "This is a test of the transcription system.", end=False)
    _send_speech(r, keys, cid, "good", "Can you tell me what time it is?")

    deadline = time.monotonic() + 60
    finals: list[TranscriptFinal] = []
    dones: list[ResponseDone] = []
    while time.monotonic() < deadline:
        finals = [e for _, f in r.xrange(keys.transcripts(cid)) if isinstance(e := decode_fields(f), TranscriptFinal)]
        dones = [e for _, f in r.xrange(keys.responses(cid)) if isinstance(e := decode_fields(f), ResponseDone)]
        if len(dones) >= 2:
            break
        time.sleep(0.2)
    assert [f.utterance_id for f in finals] == ["no-end", "good"], finals
    assert "transcription system" in finals[0].text.lower()
    assert "time" in finals[1].text.lower()
    assert [d.utterance_id for d in dones] == ["no-end", "good"]
    letters = [DeadLetter.model_validate_json(f[b"d"]) for _, f in r.xrange(keys.dead(0))]
    reasons = " | ".join(d.reason for d in letters)
    assert len(letters) == 3, reasons
    for expected in ("whole number of PCM16 samples", "audio chunk over", "file container"):
        assert expected in reasons
    time.sleep(0.5)
    assert r.xpending(keys.input(cid), "transcriber")["pending"] == 0  # the silence was acked, not lost
    assert all(p.alive() for p in procs)
    r.close()


def test_an_unreadable_recording_is_a_clear_error(stack: Stack, tmp_path: Path) -> None:
    float_wav = tmp_path / "float.wav"
    # IEEE float WAV (format 3): the stdlib reader refuses it; the simulator must say so.
    data = np.zeros(100, dtype="<f4").tobytes()
    header = (b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
              + (3).to_bytes(2, "little") + (1).to_bytes(2, "little") + (24000).to_bytes(4, "little")
              + (96000).to_bytes(4, "little") + (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
              + b"data" + len(data).to_bytes(4, "little"))
    float_wav.write_bytes(header + data)
    not_wav = tmp_path / "notes.wav"
    not_wav.write_text("not audio at all")
    for path in (float_wav, not_wav):
        proc = subprocess.run([sys.executable, "-m", "simulator_svc", "--mode", "audio", "--wav", str(path)],
                              env=stack.env, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2
        assert "error:" in proc.stderr and path.name in proc.stderr


def test_small_chunks_rung_or_swept_reach_the_engine_whole_and_in_order(
    stack: Stack, redis_url: str, prefix: str
) -> None:
    """20 ms chunks sent in real time, each write ringing its doorbell, and the same chunks
    written without a ring (found by the sweep): the engine must hear the same audio either
    way: the same transcript, and every chunk consumed by the gate (nothing pending, nothing
    undelivered)."""
    stack.start("transcriber_svc", {"TRANSCRIBER_ENGINE": "local"})
    stack.start("conversation_svc")
    wait_for_workers(redis_url, prefix, 2, timeout_s=60)
    keys = Keys(prefix)
    r = syncredis.Redis.from_url(redis_url)
    text = "Please remind me to call my mother tomorrow."
    pcm = speech_pcm(text)
    step = 960  # 20 ms of PCM16 at 24 kHz
    for cid in ("read", "rung"):
        r.xadd(keys.control_for(cid), {"d": encode(ConversationStarted(conversation_id=cid, mode="audio"))})
    time.sleep(0.5)  # both adopted: their input streams have groups
    pipe = r.pipeline(transaction=False)  # no doorbell: only the sweep finds these
    for seq, start in enumerate(range(0, len(pcm), step)):
        pipe.xadd(keys.input("read"), {"d": _chunk("read", "u", seq, pcm[start : start + step])})
    pipe.xadd(keys.input("read"), {"d": encode(AudioEnd(conversation_id="read", utterance_id="u", sent_ms=1))})
    pipe.execute()

    async def speak() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await publish_audio_utterance(client, keys, "rung", "u", pcm, text, chunk_ms=20.0)
        finally:
            await client.aclose()

    asyncio.run(speak())
    finals: dict[str, list[TranscriptFinal]] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        finals = {cid: [e for _, f in r.xrange(keys.transcripts(cid))
                        if isinstance(e := decode_fields(f), TranscriptFinal)] for cid in ("read", "rung")}
        if all(finals.values()):
            break
        time.sleep(0.2)
    assert [f.utterance_id for f in finals["rung"]] == ["u"] == [f.utterance_id for f in finals["read"]]
    assert finals["rung"][0].text == finals["read"][0].text
    assert "mother" in finals["rung"][0].text.lower()
    time.sleep(0.5)
    for cid in ("read", "rung"):
        (group,) = r.xinfo_groups(keys.input(cid))
        assert group["pending"] == 0 and group["lag"] == 0, (cid, group)
    r.close()
