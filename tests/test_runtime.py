"""The ownership runtime in-process, against a real Redis: both session services
(simulated transcription, echo answers) run as OwnershipRuntimes in this event
loop, so their state can be checked directly, not through logs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from shared.bus.doorbell import add_with_rings
from shared.keys import Keys
from shared.models import (
    ConversationEnded,
    ConversationStarted,
    TranscriptFinal,
    UtteranceText,
    encode,
    now_ms,
)
from shared.settings import (
    TranscriberSettings,
)
from tests.runtime_helpers import (
    FAST,
    answered_ids,
    entries,
    pipeline,
    running,
    say,
    transcriber_service,
    until,
)


async def test_two_runtimes_answer_in_order_and_release_the_conversation(
    redis_url: str, redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    async with pipeline(redis_url, prefix) as (transcriber, conversation):
        started = ConversationStarted(conversation_id="c")
        await add_with_rings(redis, keys, [(keys.control_for("c"), encode(started), None)])
        for i in range(5):
            await say(redis, keys, "c", f"u{i}", f"utterance number {i}")

        async def all_answered() -> bool:
            return len(await answered_ids(redis, keys, "c")) == 5

        await until(all_answered)
        assert await answered_ids(redis, keys, "c") == [f"u{i}" for i in range(5)]
        assert set(transcriber.live) == set(conversation.live) == {"c"}
        ended = ConversationEnded(conversation_id="c")
        await add_with_rings(redis, keys, [(keys.control_for("c"), encode(ended), None)])

        async def released() -> bool:
            return not transcriber.live and not conversation.live

        await until(released)
    for key in keys.conversation_keys("c"):
        assert 0 < await redis.ttl(key) <= 3600, key
    for key in (keys.input("c"), keys.transcripts("c")):
        (group,) = await redis.xinfo_groups(key)
        assert group["pending"] == 0 and group["lag"] == 0, (key, group)


async def test_a_forged_doorbell_injects_nothing_and_moves_no_group(
    redis_url: str, redis: aioredis.Redis, prefix: str
) -> None:
    """The attack of a doorbell that carried data: a ring naming a live conversation
    with an entry-like field (previous id 0-0, id far in the future, an utterance).
    A ring is only a hint now: it costs a read, and nothing else happens."""
    keys = Keys(prefix)
    async with pipeline(redis_url, prefix):
        await add_with_rings(redis, keys, [(keys.control_for("c"), encode(ConversationStarted(conversation_id="c")),
                                            None)])
        await say(redis, keys, "c", "u1", "hello there")

        async def first_answered() -> bool:
            return await answered_ids(redis, keys, "c") == ["u1"]

        await until(first_answered)
        (before,) = await redis.xinfo_groups(keys.input("c"))
        forged = UtteranceText(conversation_id="c", utterance_id="evil", text="pwned", sent_ms=now_ms())
        await redis.xadd(keys.bell(0, "input"), {"input": "c", "c 0-0 9999999999999-0 d": encode(forged)})
        await asyncio.sleep(0.5)  # several reads and sweeps
        (after,) = await redis.xinfo_groups(keys.input("c"))
        assert after["last-delivered-id"] == before["last-delivered-id"]
        assert after["entries-read"] == before["entries-read"]

        # The next real utterance, written with a plain XADD and a ring, is answered.
        real = UtteranceText(conversation_id="c", utterance_id="u2", text="a real question", sent_ms=now_ms())
        await redis.xadd(keys.input("c"), {"d": encode(real)})
        await redis.xadd(keys.bell(0, "input"), {"input": "c"})

        async def second_answered() -> bool:
            return await answered_ids(redis, keys, "c") == ["u1", "u2"]

        await until(second_answered)
    finals = [e for e in await entries(redis, keys.transcripts("c")) if isinstance(e, TranscriptFinal)]
    assert [(f.utterance_id, f.text) for f in finals] == [("u1", "hello there"), ("u2", "a real question")]
    assert all("pwned" not in str(e) for e in await entries(redis, keys.responses("c")))


async def test_a_ring_for_a_conversation_this_worker_does_not_own_is_ignored(
    redis_url: str, redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    async with pipeline(redis_url, prefix) as (transcriber, conversation):
        await redis.xadd(keys.input("ghost"), {"d": b"not even an entry"})
        await redis.xadd(keys.bell(0, "input"), {"input": "ghost nobody \xff", "junk": "x" * 100})
        await asyncio.sleep(0.4)
        assert transcriber.live == {}
        assert await redis.exists(keys.dead(0)) == 0
        assert await redis.xinfo_groups(keys.input("ghost")) == []


async def test_a_stopping_worker_hands_its_conversation_to_a_peer_that_answers_next(
    redis_url: str, redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    # A lease far longer than the test: the peer can only get the conversation by a hand-back.
    common: dict[str, Any] = {"redis_url": redis_url, "key_prefix": prefix, **FAST, "lease_s": 60.0}
    settings = TranscriberSettings(transcriber_engine="simulated", **common)
    async with pipeline(redis_url, prefix, lease_s=60.0) as (first, conversation):
        await add_with_rings(redis, keys, [(keys.control_for("c"), encode(ConversationStarted(conversation_id="c")),
                                            None)])
        await say(redis, keys, "c", "u1", "before the hand-back")

        async def first_answered() -> bool:
            return await answered_ids(redis, keys, "c") == ["u1"]

        await until(first_answered)
        assert set(first.live) == {"c"}
        async with running(settings, await transcriber_service(settings)) as peer:
            first.stop()  # leaves pipeline's exit a no-op stop

            async def moved() -> bool:
                return set(peer.live) == {"c"}

            await until(moved, timeout_s=5.0)  # well inside the lease: handed back, not expired
            await say(redis, keys, "c", "u2", "after the hand-back")

            async def second_answered() -> bool:
                return await answered_ids(redis, keys, "c") == ["u1", "u2"]

            await until(second_answered)
    (group,) = await redis.xinfo_groups(keys.input("c"))
    assert group["pending"] == 0


async def _dead_reasons(redis: aioredis.Redis, keys: Keys) -> list[str]:
    return [json.loads(fields[b"d"])["reason"] for _, fields in await redis.xrange(keys.dead(0))]


async def test_keys_of_the_wrong_type_go_to_the_dead_letters_and_no_worker_stops(
    redis_url: str, redis: aioredis.Redis, prefix: str
) -> None:
    """Three places a key can hold another type than a stream: a new conversation's
    input (adopting it), an owned input (reading it), an effect's stream (a gate)."""
    keys = Keys(prefix)
    async with pipeline(redis_url, prefix) as (transcriber, conversation):
        await redis.set(keys.input("bad-start"), "not a stream")
        for cid in ("bad-start", "bad-read", "bad-gate", "good"):
            started = ConversationStarted(conversation_id=cid)
            await add_with_rings(redis, keys, [(keys.control_for(cid), encode(started), None)])

        async def adopted() -> bool:
            return set(transcriber.live) == {"bad-read", "bad-gate", "good"}

        await until(adopted)
        await redis.delete(keys.input("bad-read"))
        await redis.set(keys.input("bad-read"), "replaced")
        await redis.xadd(keys.bell(0, "input"), {"input": "bad-read"})
        await redis.set(keys.transcripts("bad-gate"), "in the way")
        await say(redis, keys, "bad-gate", "u1", "this transcript has nowhere to go")
        await say(redis, keys, "good", "u1", "still answered")

        async def settled() -> bool:
            return await answered_ids(redis, keys, "good") == ["u1"] and len(await _dead_reasons(redis, keys)) >= 3

        await until(settled)
        assert set(transcriber.live) == {"bad-gate", "good"}
        reasons = await _dead_reasons(redis, keys)
        assert any(f"cannot own {keys.input('bad-start')}" in r for r in reasons), reasons
        assert any(f"{keys.input('bad-read')} holds a string" in r for r in reasons), reasons
        assert any(f"could not be written to {keys.transcripts('bad-gate')}" in r for r in reasons), reasons
        (group,) = await redis.xinfo_groups(keys.input("bad-gate"))
        assert group["pending"] == 0  # the utterance is acked into the dead letters, not stuck
        for worker in (transcriber, conversation):
            assert worker.not_ready_reason() is None


async def test_no_trim_removes_a_live_claim_under_a_flood_of_starts(
    redis_url: str, redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    async with pipeline(redis_url, prefix, control_maxlen=1000, max_sessions=20) as (transcriber, conversation):
        live = ConversationStarted(conversation_id="live")
        await add_with_rings(redis, keys, [(keys.control_for("live"), encode(live), None)])

        async def adopted() -> bool:
            return "live" in transcriber.live and "live" in conversation.live

        await until(adopted)
        junk = [(keys.control_for(f"junk{i}"), encode(ConversationStarted(conversation_id=f"junk{i}")), None)
                for i in range(3000)]
        for start in range(0, len(junk), 500):
            await add_with_rings(redis, keys, junk[start : start + 500])
        for worker in (transcriber, conversation):
            await worker.chores.trim_controls()
        claim_id = transcriber.live["live"].claim.control_entry_id
        assert await redis.xrange(keys.control(0), claim_id, claim_id) != []  # the claim's entry is still there
        await asyncio.sleep(2.5)  # refreshes of a trimmed claim would have lost it by now (lease 1 s)
        assert "live" in transcriber.live and "live" in conversation.live
        await say(redis, keys, "live", "u1", "still mine after the flood")

        async def answered() -> bool:
            return await answered_ids(redis, keys, "live") == ["u1"]

        await until(answered)
        assert await redis.xlen(keys.control(0)) > 1000  # reported, not cut


async def test_an_entry_left_pending_is_claimed_and_answered_once(
    redis_url: str, redis: aioredis.Redis, prefix: str
) -> None:
    """An utterance delivered to a consumer that never gates it (here: a zombie's read
    after a takeover) is not lost until the next takeover: the owner claims it once it
    has sat pending past STUCK_AFTER_S, and it is answered exactly once."""
    keys = Keys(prefix)
    async with pipeline(redis_url, prefix, stuck_after_s=1.0) as (transcriber, _conversation):
        await add_with_rings(redis, keys, [(keys.control_for("c"), encode(ConversationStarted(conversation_id="c")),
                                            None)])
        await say(redis, keys, "c", "u0", "first")

        async def first() -> bool:
            return await answered_ids(redis, keys, "c") == ["u0"]

        await until(first)
        stuck = UtteranceText(conversation_id="c", utterance_id="u1", text="read by a zombie", sent_ms=now_ms())
        # Added and delivered to the zombie in one transaction: the owner's sweep cannot read it first.
        pipe = redis.pipeline(transaction=True)
        pipe.xadd(keys.input("c"), {"d": encode(stuck)})
        pipe.xreadgroup("transcriber", "zombie", {keys.input("c"): ">"})  # delivered, never gated
        await pipe.execute()
        await asyncio.sleep(0.3)
        assert await answered_ids(redis, keys, "c") == ["u0"]

        async def recovered() -> bool:
            return await answered_ids(redis, keys, "c") == ["u0", "u1"]

        await until(recovered, timeout_s=10.0)
        (group,) = await redis.xinfo_groups(keys.input("c"))
        assert group["pending"] == 0
        await asyncio.sleep(1.5)  # a later pass finds nothing more to claim
    assert await answered_ids(redis, keys, "c") == ["u0", "u1"]
