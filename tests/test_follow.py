"""The client's follower against a real Redis: entries that ride on their
doorbell are taken without reading the stream, and a gap falls back to a read."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from shared.bus import CARRY_MAX_WRITES, BatchWriter, RawConnection, Scripts, add_with_rings, parse_ring
from shared.follow import StreamFollower
from shared.keys import Keys
from shared.models import ENTRY_FIELD
from tests.conftest import running


class _CountingConnection(RawConnection):
    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis)
        self.roundtrips = 0

    async def roundtrip(self, packed: bytes, replies: int) -> list[Any]:
        self.roundtrips += 1
        return await super().roundtrip(packed, replies)


async def _write(writer: BatchWriter, key: str, *payloads: bytes) -> None:
    for payload in payloads:
        writer.add(key, payload, 1000)
    await writer.flushed()


def _texts(reply: list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]) -> list[bytes]:
    return [fields[ENTRY_FIELD] for _key, entries in reply for _id, fields in entries]


async def test_follower_takes_carried_entries_without_a_read_and_reads_across_a_gap(
    redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    key = keys.responses("a")
    follower = StreamFollower(redis, keys, sweep_s=60.0, kinds=("responses",))
    follower.follow(key)
    async with running(BatchWriter(redis, Scripts(), bell_key=keys.bell_for_key)) as writer:
        try:
            await _write(writer, key, b"r0")
            assert _texts(await follower.read(100)) == [b"r0"]  # the first read sweeps
            counting = _CountingConnection(redis)
            if follower._conn is not None:
                await follower._conn.aclose()
            follower._conn = counting

            await _write(writer, key, b"r1", b"r2")
            assert _texts(await follower.read(1000)) == [b"r1", b"r2"]
            assert counting.roundtrips == 0  # both came with the doorbell

            await redis.xadd(key, {ENTRY_FIELD: b"unrung"})  # a writer that does not ring
            await _write(writer, key, b"r3")  # carried, but its previous entry was never seen
            assert _texts(await follower.read(1000)) == [b"unrung", b"r3"]
            assert counting.roundtrips == 1

            await _write(writer, key, b"r4")
            assert _texts(await follower.read(1000)) == [b"r4"]
            assert counting.roundtrips == 1
        finally:
            await follower.aclose()


async def test_client_writes_return_their_ids_ring_and_carry_and_leave_control_uncapped(
    redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    control = keys.control_for("a")
    writes: list[tuple[str, bytes | str, int | None]] = [
        (control, b"started", None),
        (keys.input("a"), b"u1", 1000),
        (keys.input("a"), "u2", 1000),
        (keys.input("b"), b"x" * 5000, 1000),  # too big to ride on the doorbell
    ]
    ids = await add_with_rings(redis, Scripts(), keys, writes)
    assert ids[0] == (await redis.xrange(control))[-1][0]
    assert [i for i, _ in await redis.xrange(keys.input("a"))] == ids[1:3]
    (control_ring,) = await redis.xrange(keys.bell(0, "control"))
    assert control_ring[1] == {b"control": b"1"}
    (bell_entry,) = await redis.xrange(keys.bell(0, "input"))
    (ring,) = parse_ring([x for pair in bell_entry[1].items() for x in pair])
    assert ring.conversation_ids == ["a", "b"]
    assert [(c.conversation_id, c.prev_id, c.entry_id) for c in ring.carried] == [
        ("a", b"0-0", ids[1]), ("a", ids[1], ids[2])
    ]
    # A control stream is never trimmed: its pending entries are ownership claims.
    for _ in range(3):
        await add_with_rings(redis, Scripts(), keys, [(control, b"more", None)])
    assert await redis.xlen(control) == 4


async def test_a_big_client_batch_is_written_and_rung_without_carrying(redis: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    writes: list[tuple[str, bytes | str, int | None]] = [
        (keys.input(f"c{i}"), b"u", 1000) for i in range(CARRY_MAX_WRITES + 1)
    ]
    ids = await add_with_rings(redis, Scripts(), keys, writes)
    assert [(await redis.xrange(key))[0][0] for key, _, _ in writes] == ids
    (bell_entry,) = await redis.xrange(keys.bell(0, "input"))
    (ring,) = parse_ring([x for pair in bell_entry[1].items() for x in pair])
    assert ring.conversation_ids == [f"c{i}" for i in range(CARRY_MAX_WRITES + 1)] and ring.carried == []
