"""The Redis Streams layer against a real Redis: gated acks give exactly-once
effects, the refresh script never steals a peer's claim, the writer survives
NOSCRIPT and keeps order."""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from shared.bus import CARRY_MAX_WRITES, BatchWriter, Scripts, ensure_group, parse_ring
from shared.keys import Keys
from shared.models import ENTRY_FIELD
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
    async with running(BatchWriter(redis, Scripts(), bell_key=keys.bell_for_key)) as writer:
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


async def test_doorbell_carries_small_entries_chained_by_their_previous_id(
    redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    async with running(BatchWriter(redis, Scripts(), bell_key=keys.bell_for_key, carry_limit=100)) as writer:
        old = await redis.xadd(keys.transcripts("a"), {"e": b"written before"})
        writer.add(keys.transcripts("a"), b"t1", 1000)
        writer.add(keys.transcripts("b"), b"x" * 101, 1000)  # over the limit: rung, not carried
        writer.add(keys.transcripts("a"), b"t2", 1000)
        await writer.flushed()
    (bell_entry,) = await redis.xrange(keys.bell(0, "transcripts"))
    flat = [x for pair in bell_entry[1].items() for x in pair]
    (ring,) = parse_ring(flat)
    assert ring.kind == "transcripts" and ring.conversation_ids == ["a", "b"]
    ids = [entry_id for entry_id, _ in await redis.xrange(keys.transcripts("a"))]
    assert ids[0] == old
    assert [(c.conversation_id, c.prev_id, c.entry_id, c.fields) for c in ring.carried] == [
        ("a", ids[0], ids[1], {ENTRY_FIELD: b"t1"}),
        ("a", ids[1], ids[2], {ENTRY_FIELD: b"t2"}),
    ]


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


async def test_gate_and_ack_take_an_undelivered_entry_only_when_it_is_next(
    redis: aioredis.Redis, prefix: str
) -> None:
    """Entries taken from their doorbell were never delivered: the gate moves the
    group past them, in order, once; a gap (an older undelivered entry) takes nothing."""
    src, dst = f"{prefix}:src", f"{prefix}:dst"
    await ensure_group(redis, src, "g")
    ids = [(await redis.xadd(src, {"d": f"t{i}".encode()})).decode() for i in range(4)]
    async with running(BatchWriter(redis, Scripts())) as writer:
        results: list[int] = []
        writer.gate(src, "g", ids[1], dst, b"skips t0", 1000, on_result=results.append)  # t0 not consumed yet
        writer.gate(src, "g", ids[0], dst, b"e0", 1000, on_result=results.append)
        writer.gate(src, "g", ids[0], dst, b"e0 again", 1000, on_result=results.append)
        writer.ack(src, "g", [ids[1]])
        writer.gate(src, "g", ids[2], dst, b"e2", 1000, on_result=results.append)
        await writer.flushed()
    assert results == [0, 1, 0, 1]
    assert [f[b"d"] for _, f in await redis.xrange(dst)] == [b"e0", b"e2"]
    (group,) = await redis.xinfo_groups(src)
    assert group["last-delivered-id"].decode() == ids[2] and group["pending"] == 0
    assert group["lag"] == 1  # the entries-read count moved with the group
    reply = await redis.xreadgroup("g", "w1", {src: ">"})
    assert [entry_id.decode() for entry_id, _ in reply[0][1]] == [ids[3]]


async def test_gate_takes_undelivered_extra_ids_with_its_own_or_nothing(redis: aioredis.Redis, prefix: str) -> None:
    """A final transcript's gate acks its audio chunks: some read, some taken from
    their doorbell. It consumes them all with its own entry, or (a gap) none of them."""
    src, dst = f"{prefix}:src", f"{prefix}:dst"
    await ensure_group(redis, src, "g")
    ids = [(await redis.xadd(src, {"d": f"c{i}".encode()})).decode() for i in range(6)]
    await redis.xreadgroup("g", "w1", {src: ">"}, count=1)  # c0 delivered; c1.. never
    async with running(BatchWriter(redis, Scripts())) as writer:
        results: list[int] = []
        writer.gate(src, "g", ids[3], dst, b"gap", 1000, extra_ack_ids=[ids[0], ids[2]], on_result=results.append)
        writer.gate(src, "g", ids[3], dst, b"final", 1000, extra_ack_ids=ids[0:3], on_result=results.append)
        writer.gate(src, "g", ids[3], dst, b"again", 1000, extra_ack_ids=ids[0:3], on_result=results.append)
        await writer.flushed()
    assert results == [0, 1, 0]
    assert [f[b"d"] for _, f in await redis.xrange(dst)] == [b"final"]
    (group,) = await redis.xinfo_groups(src)
    assert group["last-delivered-id"].decode() == ids[3] and group["pending"] == 0 and group["lag"] == 2


async def test_a_big_batch_rings_without_carrying(redis: aioredis.Redis, prefix: str) -> None:
    """Readers batch their reads under load: a batch of more than CARRY_MAX_WRITES only rings."""
    keys = Keys(prefix)
    async with running(BatchWriter(redis, Scripts(), bell_key=keys.bell_for_key)) as writer:
        for i in range(CARRY_MAX_WRITES + 1):
            writer.add(keys.transcripts(f"c{i}"), b"t", 1000)
        await writer.flushed()
        writer.add(keys.transcripts("c0"), b"t", 1000)
        await writer.flushed()
    big, small = [parse_ring([x for pair in f.items() for x in pair])[0] for _, f in
                  await redis.xrange(keys.bell(0, "transcripts"))]
    assert len(big.conversation_ids) == CARRY_MAX_WRITES + 1 and big.carried == []
    assert [c.conversation_id for c in small.carried] == ["c0"]
