"""Fuzzing the stream entries: decoding, encoding and the audio helpers an
``audio.chunk`` payload reaches.

Properties: whatever a stream holds (any bytes, any JSON, any field map),
:func:`decode` / :func:`decode_fields` return an entry or raise
:class:`EntryError` with a reason (which a worker dead-letters), never another
exception; every entry the models accept encodes and decodes back equal (also
through the hot-path encoders); an accepted chunk's audio goes through the PCM
helpers without an error. Case counts: the hypothesis profiles in conftest.py.
"""

from __future__ import annotations

import base64
import json
import math
import string
from typing import Any, get_args

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from shared.audio import Endpointer, pcm16_to_float32, resample, resampled_length
from shared.models import (
    ENTRY_FIELD,
    MAX_AUDIO_CHUNK_BYTES,
    MAX_TEXT_CHARS,
    AudioChunk,
    AudioEnd,
    ConversationEnded,
    ConversationStarted,
    Entry,
    EntryError,
    ResponseCancel,
    ResponseDelta,
    ResponseDone,
    ResponseFailed,
    ResponseRequest,
    ResponseStarted,
    ResponseTruncate,
    Timings,
    TranscriptDelta,
    TranscriptFailed,
    TranscriptFinal,
    Usage,
    UtteranceText,
    decode,
    decode_fields,
    encode,
    encode_response_delta,
    encode_response_done,
    encode_response_started,
    encode_transcript_final,
)
from tests.fuzz_helpers import any_text, deep_json, edited, field_names, plain_json

pytestmark = pytest.mark.fuzz

# --- strategies: valid entries, from the models' own limits ---------------------------

idents = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=64)
ints = st.integers()  # JSON integers have no bound: hypothesis draws some past 64 bits
naturals = st.integers(min_value=0)


def texts(limit: int) -> st.SearchStrategy[str]:
    """Any text up to ``limit`` characters, lengths at the limit included."""
    return st.one_of(
        st.text(max_size=min(limit, 50)),
        st.builds(lambda head, c, n: (head + c * n)[:limit], st.text(max_size=10), st.characters(codec="utf-8"),
                  st.integers(limit - 3, limit)),
    )


# PCM16 of any even length up to the limit (long ones as a short pattern repeated: cheap);
# not starting like a file container, which AudioChunk refuses (1 in 2**32 random draws).
FILE_HEADERS = (b"RIFF", b"RIFX", b"OggS", b"fLaC", b"ID3\x03", b"ID3\x04")
pcm = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(0, MAX_AUDIO_CHUNK_BYTES // 8)),
).map(lambda b: b[: len(b) // 2 * 2]).filter(lambda b: not b.startswith(FILE_HEADERS))


def _entry(model: type[BaseModel], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[BaseModel]:
    return st.builds(model, conversation_id=idents, **fields)


usages = st.builds(
    lambda known, extra: Usage(**{**extra, **known}),
    st.fixed_dictionaries({}, optional={"input_tokens": ints, "output_tokens": ints, "total_tokens": ints}),
    # `encode` leaves out None: an extra field that is null comes back absent (see test below).
    st.dictionaries(field_names.filter(lambda k: k not in Usage.model_fields), plain_json.filter(
        lambda v: v is not None), max_size=3),
)
timings = st.builds(Timings, sent_ms=ints, transcript_final_ms=ints, first_delta_ms=st.none() | ints, done_ms=ints)

ENTRY_STRATEGIES: dict[str, st.SearchStrategy[BaseModel]] = {
    "conversation.started": _entry(ConversationStarted, mode=st.sampled_from(["text", "audio"]),
                                   instructions=st.none() | texts(MAX_TEXT_CHARS)),
    "conversation.ended": _entry(ConversationEnded, reason=texts(200)),
    "utterance.text": _entry(UtteranceText, utterance_id=idents, text=texts(MAX_TEXT_CHARS), sent_ms=ints,
                             respond=st.booleans()),
    "audio.chunk": _entry(AudioChunk, utterance_id=st.none() | idents, seq=naturals,
                          audio=pcm.map(lambda b: base64.b64encode(b).decode())),
    "audio.end": _entry(AudioEnd, utterance_id=st.none() | idents, sent_ms=ints,
                        reference_text=st.none() | texts(MAX_TEXT_CHARS), respond=st.booleans()),
    "response.request": _entry(ResponseRequest, request_id=idents, sent_ms=ints),
    "response.cancel": _entry(ResponseCancel, target_id=idents, sent_ms=ints),
    "response.truncate": _entry(ResponseTruncate, target_id=idents, text=texts(MAX_TEXT_CHARS)),
    "transcript.failed": _entry(TranscriptFailed, utterance_id=idents, code=texts(100), reason=texts(2000)),
    "transcript.delta": _entry(TranscriptDelta, utterance_id=idents, text=texts(MAX_TEXT_CHARS)),
    "transcript.final": _entry(TranscriptFinal, utterance_id=idents, text=texts(MAX_TEXT_CHARS), sent_ms=ints,
                               final_ms=ints, respond=st.booleans()),
    "response.started": _entry(ResponseStarted, utterance_id=idents, response_id=idents),
    "response.delta": _entry(ResponseDelta, utterance_id=idents, response_id=idents, index=naturals,
                             delta=texts(MAX_TEXT_CHARS)),
    "response.done": _entry(ResponseDone, utterance_id=idents, response_id=idents, text=texts(MAX_TEXT_CHARS),
                            usage=usages, timings=timings, prompt=st.none() | texts(MAX_TEXT_CHARS),
                            status=st.sampled_from(["completed", "cancelled"])),
    "response.failed": _entry(ResponseFailed, utterance_id=idents, response_id=idents, code=texts(100),
                              reason=texts(2000)),
}
entries = st.one_of(*ENTRY_STRATEGIES.values())
ENTRY_MODELS: tuple[type[BaseModel], ...] = get_args(get_args(Entry)[0])


def test_every_entry_type_has_a_strategy() -> None:
    assert set(ENTRY_STRATEGIES) == {m.model_fields["type"].default for m in ENTRY_MODELS}


# --- strategies: anything a stream may hold -------------------------------------------

# One entry of each type with every optional field set, for `edited` to damage.
ENTRY_BASES: list[dict[str, Any]] = [json.loads(encode(e)) for e in (
    ConversationStarted(conversation_id="c", mode="audio", instructions="be brief"),
    ConversationEnded(conversation_id="c", reason="client"),
    UtteranceText(conversation_id="c", utterance_id="u", text="hello", sent_ms=1),
    AudioChunk(conversation_id="c", utterance_id="u", seq=3, audio="AAABAA=="),
    AudioEnd(conversation_id="c", utterance_id="u", sent_ms=1, reference_text="hello", respond=False),
    ResponseRequest(conversation_id="c", request_id="q", sent_ms=1),
    ResponseCancel(conversation_id="c", target_id="q", sent_ms=1),
    ResponseTruncate(conversation_id="c", target_id="q", text="hel"),
    TranscriptFailed(conversation_id="c", utterance_id="u", code="no_speech", reason="silence"),
    TranscriptDelta(conversation_id="c", utterance_id="u", text="hel"),
    TranscriptFinal(conversation_id="c", utterance_id="u", text="hello", sent_ms=1, final_ms=2),
    ResponseStarted(conversation_id="c", utterance_id="u", response_id="r"),
    ResponseDelta(conversation_id="c", utterance_id="u", response_id="r", index=0, delta="hi"),
    ResponseDone(conversation_id="c", utterance_id="u", response_id="r", text="hi",
                 usage=Usage(input_tokens=1, output_tokens=2, total_tokens=3, details={"cached": 0}),
                 timings=Timings(sent_ms=1, transcript_final_ms=2, first_delta_ms=3, done_ms=4),
                 prompt="hello", status="cancelled"),
    ResponseFailed(conversation_id="c", utterance_id="u", response_id="r", code="rate_limit", reason="slow down"),
)]
edited_entries = edited(ENTRY_BASES, sorted(ENTRY_STRATEGIES))


def test_every_entry_type_has_a_base() -> None:
    assert {b["type"] for b in ENTRY_BASES} == set(ENTRY_STRATEGIES)


def _decoded_or_reason(raw: bytes | str) -> None:
    """The property: an entry, or EntryError with a reason. Anything else propagates (a bug)."""
    try:
        entry = decode(raw)
    except EntryError as exc:
        assert isinstance(exc.reason, str) and exc.reason.strip()
        return
    # Accepted: it encodes to an entry that decodes and encodes the same (a null extra usage
    # field is dropped by `encode`, see below: hence the comparison of encoded forms).
    assert encode(decode(encode(entry))) == encode(entry)


# --- properties -----------------------------------------------------------------------


@given(entries)
def test_round_trip(entry: BaseModel) -> None:
    """One target for the union: its cases spread over the entry types (one_of)."""
    raw = encode(entry)
    back = decode(raw)
    assert type(back) is type(entry)
    assert back == entry
    assert decode_fields({ENTRY_FIELD: raw}) == entry


@given(st.binary() | any_text | deep_json)
@example(b"")
@example(b"\xff\xfe\x00")
@example("\ud800")
@example('"\\ud800"')
@example("[" * 5000)
def test_decode_anything(raw: bytes | str) -> None:
    _decoded_or_reason(raw)
    if isinstance(raw, str) and not any(0xD800 <= ord(c) <= 0xDFFF for c in raw):
        _decoded_or_reason(raw.encode())


@given(edited_entries)
def test_decode_edited_entries(obj: Any) -> None:
    # ensure_ascii: lone surrogates from the edits become \\uXXXX escapes, as another writer may send them.
    _decoded_or_reason(json.dumps(obj).encode())


# The values' decoding is fuzzed above: here, the field map around them (values: bytes, or a valid entry).
VALID_RAW = [encode(UtteranceText(conversation_id="c", utterance_id="u", text="hi", sent_ms=1)),
             encode(AudioChunk(conversation_id="c", seq=0, audio="AAA="))]


@given(st.dictionaries(st.binary(max_size=4) | st.just(ENTRY_FIELD),
                       st.binary(max_size=64) | st.sampled_from(VALID_RAW), max_size=3))
@example({})
@example({b"x": b"{}"})
def test_decode_fields_any_field_map(fields: dict[bytes, bytes]) -> None:
    try:
        entry = decode_fields(fields)
    except EntryError as exc:
        assert exc.reason.strip()
        return
    assert encode(decode(encode(entry))) == encode(entry)


def test_a_null_extra_usage_field_is_dropped_by_encode() -> None:
    """Why `usages` draws no null extra: ``encode`` leaves out None values, so an extra
    usage field that is null does not come back (the same entry otherwise)."""
    done = ResponseDone(conversation_id="c", utterance_id="u", response_id="r", text="",
                        usage=Usage(**{"details": None}), timings=Timings(sent_ms=1, transcript_final_ms=2, done_ms=3))
    back = decode(encode(done))
    assert isinstance(back, ResponseDone)
    assert back.usage.model_extra == {} and back.model_copy(update={"usage": done.usage}) == done


# --- the hot-path encoders: the same entries as the models --------------------------


@given(idents, idents, idents, st.text(), ints,
       ints, naturals, st.dictionaries(st.text(max_size=12), ints | st.text(max_size=5), max_size=3),
       st.none() | ints)
def test_fast_encoders_decode_to_the_models(
    cid: str, uid: str, rid: str, text: str, a: int, b: int, index: int, usage: dict[str, Any], first: int | None,
) -> None:
    # `text` is what an engine produced (unbounded here): the encoders cut it to the limit.
    cut = text[:MAX_TEXT_CHARS]
    assert decode(encode_transcript_final(cid, uid, text, a, b)) == TranscriptFinal(
        conversation_id=cid, utterance_id=uid, text=cut, sent_ms=a, final_ms=b)
    assert decode(encode_response_started(cid, uid, rid)) == ResponseStarted(
        conversation_id=cid, utterance_id=uid, response_id=rid)
    assert decode(encode_response_delta(cid, uid, rid, index, text)) == ResponseDelta(
        conversation_id=cid, utterance_id=uid, response_id=rid, index=index, delta=cut)
    done = decode(encode_response_done(cid, uid, rid, text, usage, a, b, first, index))
    assert done == ResponseDone(
        conversation_id=cid, utterance_id=uid, response_id=rid, text=cut,
        usage=Usage(**{k: v for k, v in usage.items() if isinstance(v, int)}),
        timings=Timings(sent_ms=a, transcript_final_ms=b, first_delta_ms=first, done_ms=index))


# --- audio: an audio.chunk's payload through the PCM helpers --------------------------

# Base64-ish text: valid base64 of any bytes (odd lengths, file headers), then maybe damaged.
b64_payloads = st.one_of(
    st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from([b"RIFF", b"OggS", b"fLaC", b"ID3\x03"]).flatmap(
        lambda magic: st.binary(max_size=40).map(lambda b: base64.b64encode(magic + b).decode())),
    st.text(string.ascii_letters + string.digits + "+/=\n -_", max_size=80),
    any_text,
    st.integers(MAX_AUDIO_CHUNK_BYTES - 4, MAX_AUDIO_CHUNK_BYTES + 4).map(
        lambda n: base64.b64encode(bytes(n)).decode()),
)


@given(b64_payloads, st.none() | idents, st.integers())
@example("AAA=", None, 0)  # 2 bytes... of which one is padding: 1 byte, not a whole sample
@example("", None, -1)
def test_audio_chunk_payload(audio: str, utterance_id: str | None, seq: int) -> None:
    obj = {"type": "audio.chunk", "conversation_id": "c", "seq": seq, "audio": audio}
    if utterance_id is not None:
        obj["utterance_id"] = utterance_id
    try:
        entry = decode(json.dumps(obj).encode())
    except EntryError as exc:
        assert exc.reason.strip()
        return
    assert isinstance(entry, AudioChunk)
    data = entry.pcm()
    assert len(data) % 2 == 0 and len(data) <= MAX_AUDIO_CHUNK_BYTES
    _pcm_helpers(data)


def _pcm_helpers(data: bytes) -> None:
    samples = pcm16_to_float32(data)
    assert len(samples) == len(data) // 2
    assert all(-1.0 <= s < 1.0 for s in samples[:64])
    out = resample(samples, 24_000, 16_000)  # the local recognizer's path
    assert len(out) == resampled_length(len(samples), 24_000, 16_000)
    assert all(math.isfinite(float(v)) for v in out[:64])
    ep = Endpointer()
    for event in ep.feed(data) + ep.end_of_stream():
        assert event.start_ms >= 0


@given(st.lists(st.binary(max_size=2_000), max_size=6))
def test_pcm_helpers_take_any_bytes(parts: list[bytes]) -> None:
    """PCM of any size: pcm16_to_float32 refuses an odd byte count (its one documented
    error); the endpointer takes any split (a remainder is carried) and its stream time
    only moves forward."""
    ep = Endpointer()
    last = 0.0
    for part in parts:
        try:
            samples = pcm16_to_float32(part)
        except ValueError:
            assert len(part) % 2
        else:
            assert len(samples) * 2 == len(part)
        ep.feed(part)
        assert ep.position_ms >= last
        last = ep.position_ms
    ep.end_of_stream()
    whole = b"".join(parts)
    _pcm_helpers(whole[: len(whole) // 2 * 2])
