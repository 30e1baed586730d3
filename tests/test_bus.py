"""The Redis Streams layer against a real Redis: gated acks give exactly-once
effects, the refresh script never steals a peer's claim, a fence writes nothing
for a claim a peer holds, the writer survives NOSCRIPT and keeps order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis

from shared.bus.doorbell import parse_ring
from shared.bus.groups import ensure_group
from shared.bus.program import Fence, Scripts
from shared.bus.resp import connect
from shared.bus.writer import BatchWriter, FencedWriter
from shared.keys import Keys
from shared.redis_server import RedisServer
from tests.conftest import running


async def _pending_entries(
    redis: aioredis.Redis, key: str, group: str, consumer: str, payloads: list[bytes]
) -> list[str]:
    """Add ``payloads`` to ``key`` and deliver them to ``consumer`` of ``group``: their ids, pending."""
    await ensure_group(redis, key, group)
    ids = [(await redis.xadd(key, {"d": payload})).decode() for payload in payloads]
    await redis.xreadgroup(group, consumer, {key: ">"}, count=len(payloads))
    return ids


async def _pending_entry(redis: aioredis.Redis, key: str, group: str, consumer: str) -> str:
    return (await _pending_entries(redis, key, group, consumer, [b"x"]))[0]


async def test_gate_writes_the_effect_once(redis: aioredis.Redis, prefix: str) -> None:
    src, dst = f"{prefix}:src", f"{prefix}:dst"
    entry_id = await _pending_entry(redis, src, "g", "w1")
    async with running(BatchWriter(redis, Scripts())) as writer:
        results: list[int] = []
        for _ in range(3):  # a retried batch, a zombie, a second owner: all the same gate
            writer.gate(src, "g", entry_id, dst, b"effect", maxlen=1000, on_result=results.append)
        await writer.flushed()
    assert results == [1, 0, 0]
    assert await redis.xlen(dst) == 1
    assert (await redis.xpending(src, "g"))["pending"] == 0
    assert writer.stats.suppressed == 2


async def test_gate_acks_extra_ids_only_when_the_gate_takes(redis: aioredis.Redis, prefix: str) -> None:
    src, dst = f"{prefix}:src", f"{prefix}:dst"
    ids = await _pending_entries(redis, src, "g", "w1", [b"chunk"] * 3)
    async with running(BatchWriter(redis, Scripts())) as writer:
        writer.gate(src, "g", ids[-1], dst, b"final", maxlen=1000, extra_ack_ids=ids[:-1])
        await writer.flushed()
    assert (await redis.xpending(src, "g"))["pending"] == 0
    assert await redis.xlen(dst) == 1


async def test_writer_keeps_queue_order_and_reloads_scripts(redis: aioredis.Redis, prefix: str) -> None:
    src, dst = f"{prefix}:src", f"{prefix}:dst"
    entry_id = await _pending_entry(redis, src, "g", "w1")
    scripts = Scripts()
    await scripts.load(redis)
    await redis.script_flush()  # as after a Redis restart: every SHA is unknown
    async with running(BatchWriter(redis, scripts)) as writer:
        for i in range(5):
            writer.add(dst, f"delta{i}".encode(), maxlen=1000)
        writer.gate(src, "g", entry_id, dst, b"done", maxlen=1000)
        await writer.flushed()
    rows = await redis.xrange(dst)
    assert [fields[b"d"] for _, fields in rows] == [b"delta0", b"delta1", b"delta2", b"delta3", b"delta4", b"done"]


async def test_gate_supersedes_only_the_adds_not_yet_sent(redis: aioredis.Redis, prefix: str) -> None:
    src, dst = f"{prefix}:src", f"{prefix}:dst"
    ids = await _pending_entries(redis, src, "g", "w1", [b"t"] * 2)
    async with running(BatchWriter(redis, Scripts())) as writer:
        encoded: list[bytes] = []

        def lazy(payload: bytes) -> Callable[[], bytes]:
            def encode() -> bytes:
                encoded.append(payload)
                return payload
            return encode

        # A whole answer queued before any flush: only its done is written (the rest never encoded).
        fast = [writer.add(dst, lazy(b"started1"), 1000), writer.add(dst, lazy(b"delta1.0"), 1000)]
        writer.gate(src, "g", ids[0], dst, b"done1", 1000, supersedes=fast)
        await writer.flushed()
        # A streamed answer: what went out stays, what is still queued is dropped.
        slow = [writer.add(dst, lazy(b"started2"), 1000), writer.add(dst, b"delta2.0", 1000)]
        await writer.flushed()
        slow.append(writer.add(dst, b"delta2.1", 1000))
        writer.gate(src, "g", ids[1], dst, b"done2", 1000, supersedes=slow)
        await writer.flushed()
    rows = await redis.xrange(dst)
    assert [fields[b"d"] for _, fields in rows] == [b"done1", b"started2", b"delta2.0", b"done2"]
    assert writer.stats.coalesced == 3
    assert encoded == [b"started2"]
    assert writer.backlog == 0
    assert (await redis.xpending(src, "g"))["pending"] == 0


async def test_writer_rings_one_bell_per_kind_naming_each_conversation_once(
    redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    async with running(BatchWriter(redis, Scripts(), bells=keys)) as writer:
        for cid in ("a", "b", "a"):
            writer.add(keys.transcripts(cid), b"t", 1000)
        writer.add(keys.responses("b"), b"r", 1000)
        writer.add(keys.dead(0), b"x", 1000)  # no conversation stream: rings nothing
        await writer.flushed()
    rung = {}
    for kind in ("input", "transcripts", "responses", "control"):
        rows = await redis.xrange(keys.bell(0, kind))
        rung[kind] = [{f.decode(): v.decode() for f, v in fields.items() if b" " not in f} for _, fields in rows]
    assert rung == {"input": [], "transcripts": [{"transcripts": "a b"}], "responses": [{"responses": "b"}],
                    "control": []}


async def test_a_payload_that_cannot_be_encoded_is_dropped_alone(redis: aioredis.Redis, prefix: str) -> None:
    src, dst = f"{prefix}:src", f"{prefix}:dst"
    entry_id = await _pending_entry(redis, src, "g", "w1")
    async with running(BatchWriter(redis, Scripts())) as writer:

        def broken() -> bytes:
            raise ValueError("cannot encode")

        writer.add(dst, b"before", 1000)
        writer.add(dst, broken, 1000)
        writer.gate(src, "g", entry_id, dst, b"done", 1000)
        await writer.flushed()
    assert [fields[b"d"] for _, fields in await redis.xrange(dst)] == [b"before", b"done"]
    assert (await redis.xpending(src, "g"))["pending"] == 0


async def test_refresh_skips_entries_a_peer_took(redis: aioredis.Redis, prefix: str) -> None:
    ctl = f"{prefix}:ctl"
    await ensure_group(redis, ctl, "g")
    a = (await redis.xadd(ctl, {"d": b"a"})).decode()
    b = (await redis.xadd(ctl, {"d": b"b"})).decode()
    await redis.xreadgroup("g", "w1", {ctl: ">"}, count=10)
    # A peer takes b over (w1 was paused past its lease).
    await redis.xclaim(ctl, "g", "w2", 0, [b])
    scripts = Scripts()
    lost = await scripts.call(redis, "refresh", [ctl], ["g", "w1", a, b])
    assert [x.decode() for x in lost] == [b]
    owners = {r["message_id"].decode(): r["consumer"].decode()
              for r in await redis.xpending_range(ctl, "g", min="-", max="+", count=10)}
    assert owners == {a: "w1", b: "w2"}


async def test_ensure_group_is_idempotent(redis: aioredis.Redis, prefix: str) -> None:
    key = f"{prefix}:s"
    assert await ensure_group(redis, key, "g") is True
    assert await ensure_group(redis, key, "g") is False


async def test_gate_never_consumes_an_entry_its_group_did_not_deliver(redis: aioredis.Redis, prefix: str) -> None:
    """Only what a group delivered can be gated: a gate or an ack naming an entry
    never delivered (e.g. an id from a forged doorbell) writes nothing and leaves
    the group where it was, so the entry is still delivered by the next read."""
    src, dst = f"{prefix}:src", f"{prefix}:dst"
    await ensure_group(redis, src, "g")
    ids = [(await redis.xadd(src, {"d": f"t{i}".encode()})).decode() for i in range(2)]
    async with running(BatchWriter(redis, Scripts())) as writer:
        results: list[int] = []
        writer.gate(src, "g", ids[0], dst, b"e0", 1000, extra_ack_ids=[ids[1]], on_result=results.append)
        writer.gate(src, "g", "9999999999999-0", dst, b"forged", 1000, on_result=results.append)
        writer.ack(src, "g", ids)
        await writer.flushed()
    assert results == [0, 0]
    assert await redis.xlen(dst) == 0
    (group,) = await redis.xinfo_groups(src)
    assert group["last-delivered-id"] == b"0-0" and group["pending"] == 0
    reply = await redis.xreadgroup("g", "w1", {src: ">"})
    assert [entry_id.decode() for entry_id, _ in reply[0][1]] == ids


async def test_a_ring_names_each_conversation_of_a_big_batch_once(redis: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    async with running(BatchWriter(redis, Scripts(), bells=keys)) as writer:
        for i in range(100):
            writer.add(keys.transcripts(f"c{i % 40}"), b"t", 1000)
        await writer.flushed()
    (ring,) = [parse_ring([x for pair in f.items() for x in pair])[0] for _, f in
               await redis.xrange(keys.bell(0, "transcripts"))]
    assert ring.kind == "transcripts" and sorted(ring.conversation_ids) == sorted(f"c{i}" for i in range(40))


async def test_a_batch_refused_for_full_memory_is_retried_whole_once_memory_frees(
    own_redis_server: RedisServer,
) -> None:
    """Under maxmemory with noeviction the batch script is refused before it runs
    (no ack without its effect); the writer waits it out and writes it exactly once."""
    redis = connect(own_redis_server.url)
    try:
        src, dst = "oom:src", "oom:dst"
        entry_id = await _pending_entry(redis, src, "g", "w1")
        used = int((await redis.info("memory"))["used_memory"])
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", str(max(1, used - 1024)))
        async with running(BatchWriter(redis, Scripts())) as writer:
            results: list[int] = []
            writer.gate(src, "g", entry_id, dst, b"effect", 1000, on_result=results.append)
            await asyncio.sleep(0.5)
            assert writer.redis_ok is False and results == []
            assert (await redis.xpending(src, "g"))["pending"] == 1 and await redis.xlen(dst) == 0
            await redis.config_set("maxmemory", "0")
            await asyncio.wait_for(writer.flushed(), 10)
        assert results == [1] and writer.redis_ok is True
        assert (await redis.xpending(src, "g"))["pending"] == 0 and await redis.xlen(dst) == 1
    finally:
        await redis.aclose()


async def _claim(redis: aioredis.Redis, control: str, group: str, consumer: str) -> str:
    """A conversation.started stand-in on ``control``, delivered to ``consumer``: its claim."""
    return await _pending_entry(redis, control, group, consumer)


async def test_a_fence_writes_nothing_once_a_peer_holds_the_claim(redis: aioredis.Redis, prefix: str) -> None:
    """A worker paused past its lease comes back with writes queued: a gate of an entry
    the new owner claimed, a gate of one nobody claimed yet, an ungated delta. Behind
    the old owner's fence none of them is written, the worker hears of it once, and
    what it queues later behind the same fence is never sent. A fence that holds, and
    ops behind no fence, in the same program, are written as usual."""
    control, src, dst = f"{prefix}:ctl", f"{prefix}:src", f"{prefix}:dst"
    claim = await _claim(redis, control, "g", "old")
    mine = await _claim(redis, control, "g", "me")
    claimed, unclaimed = await _pending_entries(redis, src, "g", "old", [b"t1", b"t2"])
    await redis.xclaim(control, "g", "new", 0, [claim])  # the takeover
    await redis.xclaim(src, "g", "new", 0, [claimed])  # the new owner's replay has begun
    old = Fence(control, "g", "old", claim)
    held = Fence(control, "g", "me", mine)
    async with running(BatchWriter(redis, Scripts())) as writer:
        fenced: list[Fence] = []
        writer.on_fenced = fenced.append
        results: list[int] = []
        stale = FencedWriter(writer, old)
        stale.gate(src, "g", claimed, dst, b"stale done 1", 1000, on_result=results.append)
        writer.add(dst, b"unfenced", 1000)
        FencedWriter(writer, held).add(dst, b"held", 1000)
        stale.add(dst, b"stale delta", 1000)
        stale.gate(src, "g", unclaimed, dst, b"stale done 2", 1000, on_result=results.append)
        await writer.flushed()
        stale.add(dst, b"queued after", 1000)
        await writer.flushed()
    assert [fields[b"d"] for _, fields in await redis.xrange(dst)] == [b"unfenced", b"held"]
    assert fenced == [old] and old.lost and not held.lost
    assert results == []  # a fenced op has no result: it was never written
    assert writer.stats.fenced == 4
    pending = {r["message_id"].decode(): r["consumer"].decode()
               for r in await redis.xpending_range(src, "g", min="-", max="+", count=10)}
    assert pending == {claimed: "new", unclaimed: "old"}  # nothing acked: both still to be answered


async def test_a_fence_that_holds_changes_nothing(redis: aioredis.Redis, prefix: str) -> None:
    control, src, dst = f"{prefix}:ctl", f"{prefix}:src", f"{prefix}:dst"
    claim = await _claim(redis, control, "g", "w1")
    entry_id = await _pending_entry(redis, src, "g", "w1")
    fence = Fence(control, "g", "w1", claim)
    async with running(BatchWriter(redis, Scripts())) as writer:
        results: list[int] = []
        fenced_writer = FencedWriter(writer, fence)
        for i in range(3):
            fenced_writer.add(dst, f"delta{i}".encode(), 1000)
        fenced_writer.gate(src, "g", entry_id, dst, b"done", 1000, on_result=results.append)
        fenced_writer.gate(src, "g", entry_id, dst, b"again", 1000, on_result=results.append)
        await writer.flushed()
    assert [fields[b"d"] for _, fields in await redis.xrange(dst)] == [b"delta0", b"delta1", b"delta2", b"done"]
    assert results == [1, 0] and not fence.lost and writer.stats.fenced == 0
