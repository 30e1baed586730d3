"""The client's follower and client writes against a real Redis: a ring is only
a hint (the follower reads what rang and shows only what the stream holds)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from shared.bus.doorbell import add_with_rings, parse_ring
from shared.bus.program import Scripts
from shared.bus.resp import RawConnection
from shared.bus.writer import BatchWriter
from shared.follow import StreamFollower
from shared.keys import Keys
from shared.models import ENTRY_FIELD
from tests.conftest import running


class _CountingConnection(RawConnection):
    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis)
        self.roundtrips = 0

    async def roundtrip(self, packed: bytes, replies: int, raise_errors: bool = True) -> list[Any]:
        self.roundtrips += 1
        return await super().roundtrip(packed, replies, raise_errors)


async def _write(writer: BatchWriter, key: str, *payloads: bytes) -> None:
    for payload in payloads:
        writer.add(key, payload, 1000)
    await writer.flushed()


def _texts(reply: list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]) -> list[bytes]:
    return [fields[ENTRY_FIELD] for _key, entries in reply for _id, fields in entries]


async def test_follower_reads_only_what_rang_and_shows_only_entries_read_from_the_stream(
    redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    key, other = keys.responses("a"), keys.responses("b")
    follower = StreamFollower(redis, keys, sweep_s=60.0, kinds=("responses",))
    follower.follow(key)
    follower.follow(other)
    async with running(BatchWriter(redis, Scripts(), bells=keys)) as writer:
        try:
            await _write(writer, key, b"r0")
            assert _texts(await follower.read(100)) == [b"r0"]  # the first read sweeps
            counting = _CountingConnection(redis)
            assert follower._links is not None
            await follower._links.aclose()
            follower._links._conns[""] = counting  # one Redis: every command goes to node ""

            await _write(writer, key, b"r1", b"r2")
            assert _texts(await follower.read(1000)) == [b"r1", b"r2"]
            assert counting.roundtrips == 1  # one read, of the stream that rang

            # A forged ring naming a followed stream, with an entry-like field: one read, nothing shown.
            await redis.xadd(keys.bell(0, "responses"), {"responses": "b", "b 0-0 9999999999999-0 e": b"pwned"})
            assert await follower.read(1000) == []
            assert counting.roundtrips == 2

            await redis.xadd(key, {ENTRY_FIELD: b"unrung"})  # a writer that does not ring ...
            await _write(writer, key, b"r3")  # ... is read with the next ring
            assert _texts(await follower.read(1000)) == [b"unrung", b"r3"]
        finally:
            await follower.aclose()


async def test_client_writes_return_their_ids_ring_and_leave_control_uncapped(
    redis: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    control = keys.control_for("a")
    writes: list[tuple[str, bytes | str, int | None]] = [
        (control, b"started", None),
        (keys.input("a"), b"u1", 1000),
        (keys.input("a"), "u2", 1000),
        (keys.input("b"), b"x" * 5000, 1000),
    ]
    ids = await add_with_rings(redis, keys, writes)
    assert ids[0] == (await redis.xrange(control))[-1][0]
    assert [i for i, _ in await redis.xrange(keys.input("a"))] == ids[1:3]
    (control_ring,) = await redis.xrange(keys.bell(0, "control"))
    assert control_ring[1] == {b"control": b"1"}
    (bell_entry,) = await redis.xrange(keys.bell(0, "input"))
    (ring,) = parse_ring([x for pair in bell_entry[1].items() for x in pair])
    assert ring.conversation_ids == ["a", "b"]
    # A control stream is never trimmed: its pending entries are ownership claims.
    for _ in range(3):
        await add_with_rings(redis, keys, [(control, b"more", None)])
    assert await redis.xlen(control) == 4
