"""Pure pieces: keys and partitions, history rebuild, the tracker, backoff,
engine choice, echo deltas."""

from __future__ import annotations

import random

import pytest

from conversation_svc.engines.echo import echo_answer, split_deltas
from shared.backoff import backoff
from shared.engines.base import EngineUnavailable
from shared.engines.choice import choose
from shared.history import History, Turn, rebuild
from shared.keys import Keys, partition_of
from shared.models import ResponseDelta, ResponseDone, Timings, TranscriptDelta, TranscriptFinal
from simulator_svc.tracker import Tracker, percentile


def test_partition_is_stable_and_in_range() -> None:
    assert partition_of("conv-1", 1) == 0
    ps = {partition_of(f"c{i}", 8) for i in range(200)}
    assert ps == set(range(8))
    assert partition_of("abc", 8) == partition_of("abc", 8)


def test_conversation_keys_share_their_control_stream_slot() -> None:
    keys = Keys("p", partitions=16)
    for cid in ("a", "b", "conversation-xyz"):
        tag = keys.control_for(cid).split("{")[1].split("}")[0]
        for k in keys.conversation_keys(cid):
            assert k.split("{")[1].split("}")[0] == tag
        p = keys.partition_of_key(keys.input(cid))
        assert p == partition_of(cid, 16) and keys.tag(p) == tag
        assert keys.dead(p).endswith("{" + tag + "}")


def test_partition_tags_spread_evenly_over_the_slots() -> None:
    """12 partitions on 3 masters (contiguous thirds of the slots): 4 per master. Plain
    tags {0}..{11} would not spread (CRC16 puts them anywhere)."""
    from shared.keys import CLUSTER_SLOTS, key_slot

    for partitions in (3, 12, 16, 64):
        keys = Keys("p", partitions=partitions)
        slots = [key_slot(keys.tag(p)) for p in range(partitions)]
        assert slots == sorted(slots)  # partition p lies in the p-th range of slots
        for masters in (1, 2, 3, 4):
            if partitions % masters:
                continue
            per_master = [sum(1 for s in slots if s * masters // CLUSTER_SLOTS == m) for m in range(masters)]
            assert per_master == [partitions // masters] * masters
    assert Keys("p", partitions=1).tag(0) == "0"  # one Redis: the names of before
    plain = [key_slot(str(p)) * 3 // CLUSTER_SLOTS for p in range(12)]
    assert sorted(plain.count(m) for m in range(3)) != [4, 4, 4]


def _final(uid: str, text: str) -> TranscriptFinal:
    return TranscriptFinal(conversation_id="c", utterance_id=uid, text=text, sent_ms=1, final_ms=2)


def _done(uid: str, text: str) -> ResponseDone:
    return ResponseDone(conversation_id="c", utterance_id=uid, response_id="r" + uid, text=text,
                        timings=Timings(sent_ms=1, transcript_final_ms=2, done_ms=3))


def test_rebuild_pairs_finals_with_answers_in_transcript_order() -> None:
    transcripts = [_final("u1", "one"), TranscriptDelta(conversation_id="c", utterance_id="u2", text="t"),
                   _final("u2", "two"), _final("u3", "three")]
    responses = [_done("u2", "A2"), ResponseDelta(conversation_id="c", utterance_id="u1", response_id="x",
                                                   index=0, delta="A"), _done("u1", "A1")]
    history = rebuild(transcripts, responses, max_turns=10)
    assert list(history.turns) == [Turn("u1", "one", "A1"), Turn("u2", "two", "A2")]
    assert history.is_answered("u1") and not history.is_answered("u3")


def test_history_is_bounded_but_remembers_what_was_answered() -> None:
    h = History(max_turns=2)
    for i in range(5):
        h.add(Turn(f"u{i}", "q", "a"))
    assert [t.utterance_id for t in h.turns] == ["u3", "u4"]
    assert h.is_answered("u0")


def test_answered_memory_is_bounded() -> None:
    from shared.history import ANSWERED_MEMORY

    h = History(max_turns=2)
    for i in range(ANSWERED_MEMORY + 10):
        h.mark_answered(f"u{i}")
    assert not h.is_answered("u0") and h.is_answered(f"u{ANSWERED_MEMORY + 9}")


def test_tracker_counts_missing_duplicates_and_order() -> None:
    t = Tracker()
    for i in range(3):
        t.sent("c", f"u{i}", i, "x", 0.0)
    t.done("c", "u1", "a", 10.0)
    t.done("c", "u0", "a", 12.0)
    t.done("c", "u0", "a", 13.0)
    s = t.summary()
    assert s["missing"] == 1 and s["duplicates"] == 1 and s["out_of_order"] == 1
    assert s["responses_done"] == 2
    assert not t.settled()
    t.failed("c", "u2", "boom")
    assert t.settled()


def test_percentile_nearest_rank() -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) is None


def test_backoff_grows_to_a_cap() -> None:
    delays = backoff(initial_s=0.1, factor=2, max_s=1.0, jitter=0.0, rng=random.Random(1))
    assert [round(next(delays), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_auto_engine_choice() -> None:
    assert choose("transcription", "simulated", has_api_key=True, missing_local=[]) == "simulated"
    assert choose("conversation", "auto", has_api_key=True, missing_local=[]) == "openai"
    assert choose("conversation", "auto", has_api_key=False, missing_local=[]) == "local"
    with pytest.raises(EngineUnavailable) as info:
        choose("conversation", "auto", has_api_key=False, missing_local=["llama_cpp"])
    message = str(info.value)
    assert "OPENAI_API_KEY" in message and "llama_cpp" in message and "CONVERSATION_ENGINE=echo" in message


def test_echo_answer_streams_in_several_deltas() -> None:
    answer = echo_answer("This is a test.", 1)
    assert answer.startswith("I've received your transcription: \"This is a test.\"")
    deltas = split_deltas(answer, 3)
    assert len(deltas) > 2 and "".join(deltas) == answer
    assert split_deltas(answer, 1000) == [answer]


def test_echo_gives_the_same_answer_whole_or_streamed() -> None:
    """The worker takes echo's answer whole (answer_now); streaming it must say the same."""
    import asyncio

    from conversation_svc.engines.echo import EchoConversation
    from shared.engines.base import Completed, TextDelta

    async def both() -> None:
        whole = await EchoConversation(words_per_delta=2).open_session("c", "", [Turn("u0", "hi", "hello")])
        streamed = await EchoConversation(words_per_delta=2).open_session("c", "", [Turn("u0", "hi", "hello")])
        answer = whole.answer_now("How are you today?")
        events = [e async for e in streamed.respond("How are you today?")]
        assert answer is not None and answer.text == echo_answer("How are you today?", 2)
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == answer.text
        assert events[-1] == Completed(answer.usage) and answer.usage["input_tokens"] == 4
        second = whole.answer_now("Again")
        assert second is not None and second.text.endswith("(turn 3)")

    asyncio.run(both())


def test_rings_name_each_conversation_once_per_kind_and_partition() -> None:
    from shared.bus.doorbell import ring_ops

    keys = Keys("p", partitions=4)
    written = [keys.input("a"), keys.input("a"), keys.transcripts("a"), keys.input("b"), keys.dead(0),
               keys.stats(0)]
    rings = ring_ops(written)
    flat = {(tag, kind, cid) for tag, kinds in rings.items() for kind, ids in kinds.items() for cid in ids}
    ta, tb = keys.tag(partition_of("a", 4)), keys.tag(partition_of("b", 4))
    assert flat == {(ta, "input", "a"), (ta, "transcripts", "a"), (tb, "input", "b")}
    assert all(len(ids) == len(set(ids)) for kinds in rings.values() for ids in kinds.values())
    # One bell per partition and kind: a reader wakes only for the streams it reads.
    p = partition_of("a", 4)
    assert keys.bell_for_key(keys.input("a")) == keys.bell(p, "input") == f"p:bell:{{{keys.tag(p)}}}:input"
    assert keys.bell_for_key(keys.control_for("a")) == keys.bell(p, "control")
    assert keys.bells(["input", "control"]) == [keys.bell(q, k) for q in range(4) for k in ("input", "control")]


def test_pack_command_is_resp() -> None:
    from shared.bus.resp import pack_command

    packed = pack_command(("XADD", b"k\x00", 7, "é"))
    assert packed == b"*4\r\n$4\r\nXADD\r\n$2\r\nk\x00\r\n$1\r\n7\r\n$2\r\n\xc3\xa9\r\n"


def test_stream_ids_order_by_time_then_sequence() -> None:
    from shared.bus.resp import id_order

    assert id_order(b"5-10") > id_order("5-9") > id_order("4-99") > id_order("0-0")
    assert id_order("1795703983893-0") == (1795703983893, 0)


def test_a_master_short_of_replicas_is_not_waited_on_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    """REDIS_WAIT_REPLICAS on a promoted replica with no replica of its own: one WAIT times
    out, then that node is written to without WAIT until SHORT_OF_REPLICAS_S passed."""
    from shared.bus import nodes

    clock = [100.0]
    monkeypatch.setattr(nodes.time, "monotonic", lambda: clock[0])
    acks = nodes.ReplicaAcks()
    assert acks.worth_waiting("a:1") and acks.worth_waiting("b:2")
    acks.short("a:1", 0, 1)
    assert not acks.worth_waiting("a:1") and acks.worth_waiting("b:2")
    clock[0] += nodes.SHORT_OF_REPLICAS_S
    assert acks.worth_waiting("a:1")  # tried again: a replica may be back
