"""Redis killed mid-run (SIGKILL, not a shutdown) with ``appendonly yes`` and
``appendfsync everysec``, then started again on the same port and data.

A SIGKILL loses nothing Redis acknowledged: what it wrote to the append-only
file sits in the kernel's cache, and the kernel outlives the process. What
``everysec`` can lose is the last second not yet fsynced, when the *host*
crashes; the second test makes that happen by cutting the file back to what it
held a second before the kill, just after one round of the client's writes: those
utterances are kept, what the workers did with them is lost (the worst case for
the workers: transcripts and answers they remember, gone). Either way the
accounting is the same: every
utterance the client wrote and Redis kept ends in exactly one ``response.done``
or a ``response.failed``, none twice, in order per conversation; an utterance
Redis lost entirely (the client's write went with the lost second) cannot be
answered: its client must send it again (ours do not: they time out and count
it missing), and the test counts those separately.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from shared.bus.doorbell import add_with_rings
from shared.bus.resp import connect
from shared.bus.retry import retry_forever
from shared.keys import Keys
from shared.models import (
    ConversationStarted,
    ResponseDone,
    ResponseFailed,
    UtteranceText,
    decode_fields,
    encode,
    now_ms,
)
from shared.redis_server import RedisServer
from tests.runtime_helpers import pipeline, until

CONVERSATIONS = 8
UTTERANCES = 40
GAP_S = 0.1
#: What appendfsync everysec may lose with its host: the last second written.
FSYNC_WINDOW_S = 1.0


@dataclass
class Outcome:
    """What happened to the utterances a client wrote, read from the streams themselves."""

    written: list[tuple[str, str]] = field(default_factory=list)
    kept: set[tuple[str, str]] = field(default_factory=set)
    dones: Counter[tuple[str, str]] = field(default_factory=Counter)
    failed: dict[tuple[str, str], str] = field(default_factory=dict)
    out_of_order: int = 0

    @property
    def lost(self) -> set[tuple[str, str]]:
        return set(self.written) - self.kept

    @property
    def unanswered(self) -> set[tuple[str, str]]:
        return {u for u in self.kept if not self.dones[u] and u not in self.failed}

    def figures(self) -> str:
        return (f"{len(self.written)} utterances written, {len(self.kept)} kept by Redis, {len(self.lost)} lost "
                f"with Redis (to be sent again by their client), {sum(1 for u in self.kept if self.dones[u])} done, "
                f"{len(self.failed)} failed {sorted(set(self.failed.values()))}, "
                f"{sum(n - 1 for n in self.dones.values() if n > 1)} duplicate dones, "
                f"{self.out_of_order} out of order, {len(self.unanswered)} unanswered")


async def _client(
    redis: aioredis.Redis, keys: Keys, cids: list[str], written: list[tuple[str, str]],
    after_tick: Callable[[int], None],
) -> None:
    """Every GAP_S, one utterance to each conversation in one pipelined write, retried
    while Redis is away (a retry after a lost reply may repeat one: answered once)."""
    for k in range(UTTERANCES):
        uid = f"u{k:03d}"
        batch = [(keys.input(cid), encode(UtteranceText(conversation_id=cid, utterance_id=uid, text=f"{cid} {uid}",
                                                        sent_ms=now_ms())), 1000) for cid in cids]
        await retry_forever("client write", lambda batch=batch: add_with_rings(redis, keys, batch))  # type: ignore[misc]
        written += [(cid, uid) for cid in cids]
        after_tick(k)
        await asyncio.sleep(GAP_S)


async def _read_outcome(redis: aioredis.Redis, keys: Keys, cids: list[str], outcome: Outcome) -> Outcome:
    outcome.kept.clear()
    outcome.dones.clear()
    outcome.failed.clear()
    outcome.out_of_order = 0
    for cid in cids:
        for _, fields in await redis.xrange(keys.input(cid)):
            entry = decode_fields(fields)
            if isinstance(entry, UtteranceText):
                outcome.kept.add((cid, entry.utterance_id))
        last = ""
        for _, fields in await redis.xrange(keys.responses(cid)):
            entry = decode_fields(fields)
            if isinstance(entry, ResponseDone):
                outcome.dones[(cid, entry.utterance_id)] += 1
                if entry.utterance_id < last:
                    outcome.out_of_order += 1
                last = max(last, entry.utterance_id)
            elif isinstance(entry, ResponseFailed):
                outcome.failed[(cid, entry.utterance_id)] = entry.code
    return outcome


def _aof_size(server: RedisServer) -> int:
    """How much the append-only file being written holds now (Redis 7: the last incr file)."""
    return _aof_tail(server).stat().st_size


def _aof_tail(server: RedisServer) -> Path:
    return [f for f in server.aof_files() if f.name.endswith(".incr.aof")][-1]


async def _run(server: RedisServer, lose_unsynced: bool) -> tuple[Outcome, int]:
    """Kill Redis mid-run and start it again; with ``lose_unsynced``, first cut its file
    back to where it was a second before (FSYNC_WINDOW_S): just after one tick's writes
    reached it, so those utterances are kept and what the workers did with them is lost."""
    keys = Keys("crash")
    cids = [f"c{i}" for i in range(CONVERSATIONS)]
    redis = connect(server.url)
    outcome = Outcome()
    #: Size of the append-only file right after each tick's writes were acknowledged (by then
    #: Redis has written them to the file: it writes before it replies).
    file_at_tick: dict[int, int] = {}
    cut = 0
    try:
        async with pipeline(server.url, "crash", stuck_after_s=1.0):
            starts = [(keys.control_for(cid), encode(ConversationStarted(conversation_id=cid)), None) for cid in cids]
            await add_with_rings(redis, keys, starts)
            client = asyncio.create_task(_client(redis, keys, cids, outcome.written,
                                                 lambda k: file_at_tick.__setitem__(k, _aof_size(server))))
            await asyncio.sleep(UTTERANCES * GAP_S / 2)  # mid-run
            server.kill()
            if lose_unsynced:
                kept_tick = max(file_at_tick) - round(FSYNC_WINDOW_S / GAP_S)
                path = _aof_tail(server)
                cut = path.stat().st_size - file_at_tick[kept_tick]
                with path.open("r+b") as f:
                    f.truncate(file_at_tick[kept_tick])
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.start)
            await client

            async def settled() -> bool:
                return not (await _read_outcome(redis, keys, cids, outcome)).unanswered

            with contextlib.suppress(AssertionError):  # what is left unanswered is reported below
                await until(settled, timeout_s=30)
    finally:
        await redis.aclose()
    return outcome, cut


def _check(outcome: Outcome) -> None:
    figures = outcome.figures()
    print(figures)
    assert not outcome.unanswered, f"{sorted(outcome.unanswered)[:10]}: {figures}"
    assert all(n <= 1 for n in outcome.dones.values()), figures
    assert not any(outcome.dones[u] and u in outcome.failed for u in outcome.kept), figures
    assert outcome.out_of_order == 0, figures


async def test_redis_killed_mid_run_loses_nothing_it_acknowledged(own_redis_server: RedisServer) -> None:
    outcome, _ = await _run(own_redis_server, lose_unsynced=False)
    _check(outcome)
    assert not outcome.failed, outcome.figures()
    # Unless the disk was too slow: then Redis answers before it writes (for up to 2 s).
    log = (own_redis_server.data_dir / "server.log").read_text(errors="replace")
    if "fsync is taking too long" not in log:
        assert not outcome.lost, outcome.figures()


async def test_redis_killed_with_its_unsynced_second_lost_still_ends_every_utterance_it_kept(
    own_redis_server: RedisServer,
) -> None:
    outcome, cut = await _run(own_redis_server, lose_unsynced=True)
    print(f"cut {cut} bytes off the append-only file")
    _check(outcome)
    assert cut > 0 and outcome.lost, outcome.figures()  # the cut took client writes with it
