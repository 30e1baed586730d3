"""The pure Realtime state machines, driven by recorded event sequences:
no socket, no event loop."""

from __future__ import annotations

import base64
from typing import Any

from shared.realtime.server_events import ServerEvent, parse_server_event
from shared.realtime.session_common import sent_events
from shared.realtime.transcription_actions import Delta, Final, Reject, Skip
from shared.realtime.transcription_state import TranscriptionState

CHUNK = base64.b64encode(b"\x01\x00" * 2400).decode()  # 100 ms of PCM16 at 24 kHz
CHUNK_BYTES = 4800


def server(frame: dict[str, Any]) -> ServerEvent:
    return parse_server_event(frame)


def committed(item: str, previous: str | None) -> ServerEvent:
    return server({"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": previous})


def completed(item: str, text: str) -> ServerEvent:
    return server({"type": "conversation.item.input_audio_transcription.completed", "item_id": item,
                   "content_index": 0, "transcript": text})


def failed(item: str) -> ServerEvent:
    return server({"type": "conversation.item.input_audio_transcription.failed", "item_id": item,
                   "content_index": 0, "error": {"type": "transcription_error", "code": "audio_unintelligible",
                                                 "message": "could not transcribe"}})


def types(actions: list) -> list[str]:
    return [e.type for e in sent_events(actions)]


def speak(state: TranscriptionState, uid: str, first_id: int, chunks: int = 2, sent_ms: int = 1000) -> list:
    """Feed ``chunks`` audio chunks and an audio.end; entry ids first_id, first_id+1, ..."""
    actions: list = []
    for k in range(chunks):
        actions += state.chunk(f"{first_id + k}-0", uid, CHUNK, CHUNK_BYTES)
    actions += state.end(f"{first_id + chunks}-0", uid, sent_ms)
    return actions


# --- transcription: client commits ----------------------------------------------------


def test_client_mode_appends_then_commits() -> None:
    state = TranscriptionState("client")
    actions = speak(state, "u1", 1)
    assert types(actions) == ["input_audio_buffer.append", "input_audio_buffer.append", "input_audio_buffer.commit"]
    assert state.outstanding == 1
    assert state.on_event(committed("item_a", None), 0) == []
    assert state.on_event(server({"type": "conversation.item.input_audio_transcription.delta", "item_id": "item_a",
                                  "delta": "hel"}), 0) == [Delta("u1", "hel")]
    assert state.on_event(completed("item_a", "hello"), 0) == [Final("u1", "hello", 1000, ("1-0", "2-0", "3-0"))]
    assert state.outstanding == 0


def test_out_of_order_completions_are_released_in_commit_order() -> None:
    state = TranscriptionState("client")
    for n, uid in enumerate(("u1", "u2", "u3")):
        speak(state, uid, 10 * n + 1, sent_ms=n)
    state.on_event(committed("i1", None), 0)
    state.on_event(committed("i2", "i1"), 0)
    state.on_event(committed("i3", "i2"), 0)
    # Completions arrive 3, 2, 1: nothing may be released before u1.
    assert state.on_event(completed("i3", "three"), 0) == []
    assert state.on_event(completed("i2", "two"), 0) == []
    released = state.on_event(completed("i1", "one"), 0)
    assert [(a.utterance_id, a.text) for a in released] == [("u1", "one"), ("u2", "two"), ("u3", "three")]
    assert released[1].entry_ids == ("11-0", "12-0", "13-0")


def test_completion_before_its_commit_event_waits_for_it() -> None:
    state = TranscriptionState("client")
    speak(state, "u1", 1)
    assert state.on_event(completed("i1", "early"), 0) == []
    assert [a.text for a in state.on_event(committed("i1", None), 0)] == ["early"]


def test_short_or_empty_audio_is_never_committed() -> None:
    state = TranscriptionState("client")
    actions = state.chunk("1-0", "u1", base64.b64encode(b"\x00\x01" * 100).decode(), 200)
    actions += state.end("2-0", "u1", 5)
    # 200 bytes ~ 4 ms: clear the stray audio, skip both entries, no commit.
    assert types(actions) == ["input_audio_buffer.append", "input_audio_buffer.clear"]
    skip = actions[-1]
    assert isinstance(skip, Skip) and skip.entry_ids == ("1-0", "2-0") and "100 ms" in skip.reason
    only_end = state.end("3-0", "u2", 6)
    assert only_end == [Skip(("3-0",), "empty audio buffer", "u2")]
    assert state.outstanding == 0


def test_failed_transcription_is_released_as_a_skip_and_never_stalls_the_order() -> None:
    state = TranscriptionState("client")
    speak(state, "u1", 1)
    speak(state, "u2", 10)
    state.on_event(committed("i1", None), 0)
    state.on_event(committed("i2", "i1"), 0)
    assert state.on_event(completed("i2", "second"), 0) == []
    released = state.on_event(failed("i1"), 0)
    assert isinstance(released[0], Skip) and released[0].failed and "audio_unintelligible" in released[0].reason
    assert released[0].entry_ids == ("1-0", "2-0", "3-0")
    assert isinstance(released[1], Final) and released[1].text == "second"


def test_a_refused_commit_skips_its_utterance() -> None:
    state = TranscriptionState("client")
    actions = speak(state, "u1", 1)
    commit = sent_events(actions)[-1]
    error = server({"type": "error", "error": {"type": "invalid_request_error",
                                               "code": "input_audio_buffer_commit_empty", "message": "too small",
                                               "event_id": commit.event_id}})
    out = state.on_event(error, 0)
    assert isinstance(out[0], Skip) and out[0].failed and "input_audio_buffer_commit_empty" in out[0].reason
    assert state.outstanding == 0


def test_an_utterance_over_the_audio_cap_is_refused_whole_up_to_its_end() -> None:
    state = TranscriptionState("client", max_utterance_bytes=3 * CHUNK_BYTES)
    actions: list = []
    for k in range(3):
        actions += state.chunk(f"{k + 1}-0", "u1", CHUNK, CHUNK_BYTES)
    assert types(actions) == ["input_audio_buffer.append"] * 3
    refused = state.chunk("4-0", "u1", CHUNK, CHUNK_BYTES)
    assert types(refused) == ["input_audio_buffer.clear"]
    (reject,) = [a for a in refused if isinstance(a, Reject)]
    assert (reject.entry_ids, reject.utterance_id, reject.first) == (("1-0", "2-0", "3-0", "4-0"), "u1", True)
    assert state.chunk("5-0", "u1", CHUNK, CHUNK_BYTES) == [Reject(("5-0",), reject.reason, "u1", first=False)]
    assert state.end("6-0", "u1", 1000) == [Reject(("6-0",), reject.reason, "u1", first=False)]
    assert not state.has_open_audio and state.outstanding == 0
    # The next utterance is a new one, sent and committed as usual.
    assert types(speak(state, "u2", 7)) == ["input_audio_buffer.append"] * 2 + ["input_audio_buffer.commit"]
    # A reconnect re-sends the audio kept for the outstanding utterance only: none of the refused one.
    assert types(state.on_reconnect()) == ["input_audio_buffer.append"] * 2 + ["input_audio_buffer.commit"]


def test_server_vad_an_utterance_over_the_audio_cap_is_refused_and_the_next_chunk_starts_afresh() -> None:
    state = TranscriptionState("server_vad", max_utterance_bytes=2 * CHUNK_BYTES)
    state.chunk("1-0", None, CHUNK, CHUNK_BYTES)
    state.chunk("2-0", None, CHUNK, CHUNK_BYTES)
    refused = state.chunk("3-0", None, CHUNK, CHUNK_BYTES)
    assert types(refused) == ["input_audio_buffer.clear"]
    assert [a.entry_ids for a in refused if isinstance(a, Reject)] == [("1-0", "2-0", "3-0")]
    assert types(state.chunk("4-0", None, CHUNK, CHUNK_BYTES)) == ["input_audio_buffer.append"]
    assert state.on_event(committed("item_a", None), 0) == []
    assert state.on_event(completed("item_a", "after"), 0) == [Final("item_a", "after", 0, ("4-0",))]


def test_typed_utterance_keeps_its_place_behind_spoken_ones() -> None:
    state = TranscriptionState("client")
    speak(state, "u1", 1)
    assert state.text("9-0", "t1", "typed", 7) == []  # waits for u1
    state.on_event(committed("i1", None), 0)
    released = state.on_event(completed("i1", "spoken"), 0)
    assert [(a.utterance_id, a.text) for a in released] == [("u1", "spoken"), ("t1", "typed")]
    assert state.text("10-0", "t2", "alone", 8) == [Final("t2", "alone", 8, ("10-0",))]


def test_empty_transcript_is_skipped_not_sent_as_a_final() -> None:
    state = TranscriptionState("client")
    speak(state, "u1", 1)
    state.on_event(committed("i1", None), 0)
    out = state.on_event(completed("i1", "  "), 0)
    assert isinstance(out[0], Skip) and not out[0].failed


def test_reconnect_resends_audio_of_every_utterance_without_a_final() -> None:
    state = TranscriptionState("client")
    speak(state, "u1", 1, chunks=2)
    speak(state, "u2", 10, chunks=1)
    state.on_event(committed("old1", None), 0)
    state.on_event(completed("old1", "first"), 0)  # released: not re-sent
    state.on_event(committed("old2", "old1"), 0)  # committed, transcript lost with the socket
    state.chunk("20-0", "u3", CHUNK, CHUNK_BYTES)  # open utterance, not ended yet
    actions = state.on_reconnect()
    assert types(actions) == ["input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.append"]
    # Old item ids mean nothing on the new session.
    assert state.on_event(completed("old2", "stale"), 0) == []
    state.on_event(committed("new1", None), 0)
    out = state.on_event(completed("new1", "second"), 0)
    assert out == [Final("u2", "second", 1000, ("10-0", "11-0"))]
    end = state.end("21-0", "u3", 3)
    assert types(end) == ["input_audio_buffer.commit"]


def test_flush_commits_an_open_utterance_and_abandon_skips_the_rest() -> None:
    state = TranscriptionState("client")
    state.chunk("1-0", "u1", CHUNK, CHUNK_BYTES)
    assert types(state.flush(now_ms=42)) == ["input_audio_buffer.commit"]
    state.text("2-0", "t1", "typed", 5)
    out = state.abandon("timed out")
    assert out == [Skip(("1-0",), "timed out", "u1", failed=True), Final("t1", "typed", 5, ("2-0",))]
    assert state.outstanding == 0


# --- transcription: server VAD ----------------------------------------------------------


def test_server_vad_commits_close_utterances_and_order_follows_previous_item_id() -> None:
    state = TranscriptionState("server_vad")
    state.chunk("1-0", None, CHUNK, CHUNK_BYTES)
    state.chunk("2-0", None, CHUNK, CHUNK_BYTES)
    assert state.end("3-0", "u1", 100) == []  # audio.end gives sent_ms; the server commits
    assert state.on_event(committed("A", None), 500) == []
    state.chunk("4-0", None, CHUNK, CHUNK_BYTES)
    state.on_event(committed("B", "A"), 600)
    state.end("5-0", None, 700)  # arrived after B's commit: belongs to B
    state.chunk("6-0", None, CHUNK, CHUNK_BYTES)
    state.on_event(committed("C", "B"), 800)
    out = state.on_event(completed("C", "c"), 0) + state.on_event(completed("B", "b"), 0)
    assert out == []
    out = state.on_event(completed("A", "a"), 0)
    assert [(a.utterance_id, a.text, a.sent_ms, a.entry_ids) for a in out] == [
        ("u1", "a", 100, ("1-0", "2-0", "3-0")),
        ("B", "b", 700, ("4-0", "5-0")),
        ("C", "c", 800, ("6-0",)),
    ]


def test_server_vad_places_an_item_after_its_previous_item() -> None:
    state = TranscriptionState("server_vad")
    state.chunk("1-0", "u1", CHUNK, CHUNK_BYTES)
    state.on_event(committed("A", None), 1)
    state.chunk("2-0", "u3", CHUNK, CHUNK_BYTES)
    state.on_event(committed("C", "B"), 3)  # B unknown yet: appended
    state.chunk("3-0", "u2", CHUNK, CHUNK_BYTES)
    state.on_event(committed("B", "A"), 2)  # goes right after A
    out = (state.on_event(completed("C", "c"), 0) + state.on_event(completed("B", "b"), 0)
           + state.on_event(completed("A", "a"), 0))
    assert [a.text for a in out] == ["a", "b", "c"]


def test_server_vad_reconnect_fails_committed_items_and_resends_open_audio() -> None:
    state = TranscriptionState("server_vad")
    state.chunk("1-0", "u1", CHUNK, CHUNK_BYTES)
    state.on_event(committed("A", None), 1)
    state.chunk("2-0", "u2", CHUNK, CHUNK_BYTES)
    actions = state.on_reconnect()
    assert types(actions) == ["input_audio_buffer.append"]
    skip = [a for a in actions if isinstance(a, Skip)]
    assert skip and skip[0].entry_ids == ("1-0",) and skip[0].failed
