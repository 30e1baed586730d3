"""Entry models: the discriminated union, limits, and the reasons bad entries get."""

from __future__ import annotations

import base64
import json

import pytest

from shared.models import (
    MAX_AUDIO_CHUNK_BYTES,
    MAX_TEXT_CHARS,
    AudioChunk,
    ConversationStarted,
    EntryError,
    ResponseDone,
    Timings,
    UtteranceText,
    decode,
    decode_fields,
    encode,
    expect,
)


def test_round_trip_through_the_union() -> None:
    entry = UtteranceText(conversation_id="c1", utterance_id="u1", text="hello", sent_ms=5)
    back = decode(encode(entry))
    assert back == entry
    assert isinstance(back, UtteranceText)
    assert json.loads(encode(entry))["v"] == 1


def test_response_done_round_trip_keeps_timings_and_usage() -> None:
    done = ResponseDone(conversation_id="c", utterance_id="u", response_id="r", text="hi",
                        timings=Timings(sent_ms=1, transcript_final_ms=2, first_delta_ms=3, done_ms=4))
    assert decode(encode(done)) == done


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        (b"{not json", "Invalid JSON"),
        (b'{"type": "no.such.type", "conversation_id": "c"}', "does not match any of the expected tags"),
        (b'{"conversation_id": "c"}', "Unable to extract tag"),
        (b'{"type": "conversation.started", "conversation_id": "c", "v": 2}', "v"),
        (b'{"type": "conversation.started", "conversation_id": "bad id!"}', "conversation_id"),
        (b'{"type": "conversation.started", "conversation_id": "c", "extra": 1}', "extra"),
    ],
)
def test_bad_entries_raise_with_a_reason(raw: bytes, reason_part: str) -> None:
    with pytest.raises(EntryError) as info:
        decode(raw)
    assert reason_part in info.value.reason


def test_text_over_the_limit_is_refused() -> None:
    raw = encode(UtteranceText.model_construct(conversation_id="c", utterance_id="u", text="x" * (MAX_TEXT_CHARS + 1),
                                               sent_ms=1, type="utterance.text", v=1))
    with pytest.raises(EntryError, match="text"):
        decode(raw)


def test_audio_limits() -> None:
    ok = base64.b64encode(b"\x00\x01" * 10).decode()
    assert AudioChunk(conversation_id="c", seq=0, audio=ok).pcm() == b"\x00\x01" * 10
    too_big = base64.b64encode(b"\x00" * (MAX_AUDIO_CHUNK_BYTES + 2)).decode()
    with pytest.raises(ValueError, match="over"):
        AudioChunk(conversation_id="c", seq=0, audio=too_big)
    with pytest.raises(ValueError, match="whole number of PCM16 samples"):
        AudioChunk(conversation_id="c", seq=0, audio=base64.b64encode(b"\x00\x01\x02").decode())
    with pytest.raises(ValueError, match="base64"):
        AudioChunk(conversation_id="c", seq=0, audio="###")


def test_decode_fields_needs_the_d_field() -> None:
    with pytest.raises(EntryError, match="no 'd' field"):
        decode_fields({b"x": b"1"})


def test_expect_names_the_stream_types() -> None:
    entry = decode(encode(ConversationStarted(conversation_id="c")))
    with pytest.raises(EntryError, match="does not belong"):
        expect(entry, UtteranceText)


def test_hot_path_encoders_decode_to_the_same_models() -> None:
    from shared.models import (
        ResponseDelta,
        ResponseStarted,
        encode_response_delta,
        encode_response_done,
        encode_response_started,
    )

    timings = Timings(sent_ms=1, transcript_final_ms=2, first_delta_ms=None, done_ms=4)
    assert decode(encode_response_started("c", "u", "r1")) == ResponseStarted(
        conversation_id="c", utterance_id="u", response_id="r1")
    assert decode(encode_response_delta("c", "u", "r1", 2, "hé \"x\"")) == ResponseDelta(
        conversation_id="c", utterance_id="u", response_id="r1", index=2, delta="hé \"x\"")
    from shared.models import TranscriptFinal, encode_transcript_final

    assert decode(encode_transcript_final("c", "u", "hi", 1, 2)) == TranscriptFinal(
        conversation_id="c", utterance_id="u", text="hi", sent_ms=1, final_ms=2)
    done = decode(encode_response_done("c", "u", "r1", "t" * 9000, {"input_tokens": 3, "odd": "x"},  # type: ignore[dict-item]
                                       sent_ms=1, transcript_final_ms=2, first_delta_ms=None, done_ms=4))
    assert isinstance(done, ResponseDone)
    assert done.text == "t" * MAX_TEXT_CHARS and done.usage.input_tokens == 3 and done.timings == timings
