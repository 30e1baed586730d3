"""Bounded memory: what a worker holds for a conversation does not grow with
what is written to it. The per-conversation queue's caps and its resumption
(pure, then in process against a real Redis), takeover claims in pages, and the
memory bound itself, measured. (History and dead letters: test_bounded_history.py.)"""

from __future__ import annotations

import asyncio
import base64
import gc
import random
import threading
from typing import Any

import psutil
import pytest
import redis.asyncio as aioredis

from shared.bus.doorbell import add_with_rings
from shared.bus.groups import ensure_group
from shared.engines.base import InputEntry, TranscriptionEngine, TranscriptionSession, TranscriptSink
from shared.keys import Keys
from shared.models import (
    MAX_AUDIO_CHUNK_BYTES,
    MAX_ENTRY_BYTES,
    ConversationStarted,
    DeadLetter,
    UtteranceText,
    encode,
)
from shared.runtime.conversations import Live, QueueLimits
from shared.settings import CommonSettings, ConversationSettings, TranscriberSettings
from tests.runtime_helpers import FAST, answered_ids, audio_chunk_entry, conversation_service, running, say, until
from transcriber_svc.worker import TranscriberService

# --- the queue's limits ------------------------------------------------------------------------


@pytest.mark.parametrize(("max_entries", "max_bytes"), [
    (1000, 4 * 1024 * 1024), (2, 2 * MAX_ENTRY_BYTES), (10, 64 * 1024 * 1024), (7, 3 * MAX_ENTRY_BYTES + 5),
])
def test_a_read_never_takes_a_queue_with_room_past_either_cap(max_entries: int, max_bytes: int) -> None:
    limits = QueueLimits(max_entries, max_bytes)
    count = limits.read_count(1000)
    assert count >= 1
    # The fullest queue that still has room, plus a read of the largest valid entries.
    assert limits.has_room(limits.low_entries, limits.low_bytes)
    assert limits.low_entries + count <= max_entries
    assert limits.low_bytes + count * MAX_ENTRY_BYTES <= max_bytes
    assert not limits.has_room(limits.low_entries + 1, 0) and not limits.has_room(0, limits.low_bytes + 1)


def test_the_default_limits() -> None:
    limits = QueueLimits.from_settings(CommonSettings())
    assert (limits.max_entries, limits.max_bytes) == (1000, 4 * 1024 * 1024)
    assert limits.read_count(1000) == 15  # as the README says
    assert len(audio_chunk_entry("c" * 64, 2**62)) <= MAX_ENTRY_BYTES


@pytest.mark.parametrize("seed", range(20))
def test_reading_with_room_and_resuming_at_the_low_water_mark_delivers_everything_in_order(seed: int) -> None:
    """The reader and the drain as a model: the reader reads a conversation only when it
    is marked and has room (a full read marks it again); the drain, at random moments,
    handles one entry and marks the conversation when its queue gets back to the mark.
    The queue never passes a cap, and every entry is handled once, in order."""
    rng = random.Random(seed)
    limits = QueueLimits(rng.randrange(2, 40), rng.randrange(2 * MAX_ENTRY_BYTES, 12 * MAX_ENTRY_BYTES))
    sizes = [rng.choice([200, 4_000, MAX_ENTRY_BYTES]) for _ in range(500)]
    stream = list(enumerate(sizes))
    delivered = 0
    queue: list[tuple[int, int]] = []
    handled: list[int] = []
    marked = True
    count = limits.read_count(1000)
    while len(handled) < len(stream):
        if marked and rng.random() < 0.5:
            marked = False
            if limits.has_room(len(queue), sum(s for _, s in queue)):
                batch = stream[delivered : delivered + count]
                delivered += len(batch)
                queue += batch
                marked = len(batch) == count  # a full read: more may wait
                assert len(queue) <= limits.max_entries
                assert sum(s for _, s in queue) <= limits.max_bytes
        elif queue:
            full = not limits.has_room(len(queue), sum(s for _, s in queue))
            handled.append(queue.pop(0)[0])
            if full and limits.has_room(len(queue), sum(s for _, s in queue)):
                marked = True
        elif rng.random() < 0.05:
            marked = True  # a ring or a sweep
    assert handled == list(range(len(stream)))


# --- in-process: a conversation behind a slow engine --------------------------------------------


class _SlowTranscription(TranscriptionEngine):
    """A test engine: ``utterance.text`` is its own transcript, audio is skipped; a
    conversation in ``slow`` waits ``delay_s`` per entry, and for ``gate`` when set."""

    name = "slow-test"

    def __init__(self, slow: set[str], delay_s: float = 0.0, gate: asyncio.Event | None = None) -> None:
        self.slow = slow
        self.delay_s = delay_s
        self.gate = gate
        #: Entry ids fed, per conversation, in the order fed.
        self.fed: dict[str, list[str]] = {}

    async def open_session(self, conversation_id: str, sink: TranscriptSink) -> TranscriptionSession:
        return _SlowSession(self, conversation_id, sink)


class _SlowSession(TranscriptionSession):
    def __init__(self, engine: _SlowTranscription, conversation_id: str, sink: TranscriptSink) -> None:
        self.engine = engine
        self.conversation_id = conversation_id
        self.sink = sink

    async def feed(self, entry_id: str, entry: InputEntry) -> None:
        if self.conversation_id in self.engine.slow:
            if self.engine.gate is not None:
                await self.engine.gate.wait()
            await asyncio.sleep(self.engine.delay_s)
        self.engine.fed.setdefault(self.conversation_id, []).append(entry_id)
        if isinstance(entry, UtteranceText):
            self.sink.final(entry.utterance_id, entry.text, entry.sent_ms, [entry_id])
        else:
            self.sink.skip([entry_id], "the test engine does not transcribe audio")

    async def flush(self) -> None:
        return None


class _QueuePeak:
    """The largest queue (entries, payload bytes) any conversation reached, measured at
    every push (not sampled: a peak between samples would be missed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entries: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        real = Live.push

        def push(live: Live, entry: Any) -> None:
            real(live, entry)
            cid = live.conversation_id
            self.entries[cid] = max(self.entries.get(cid, 0), len(live.queue))
            self.bytes[cid] = max(self.bytes.get(cid, 0), live.queued_bytes)

        monkeypatch.setattr(Live, "push", push)


async def _start(redis: aioredis.Redis, keys: Keys, cid: str) -> None:
    await add_with_rings(redis, keys, [(keys.control_for(cid), encode(ConversationStarted(conversation_id=cid)),
                                        None)])


async def _group(redis: aioredis.Redis, key: str) -> dict[str, Any]:
    (group,) = await redis.xinfo_groups(key)
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in group.items()}


async def test_a_conversation_behind_is_not_read_until_its_queue_drains_and_others_go_on(
    redis_url: str, redis: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(prefix)
    peak = _QueuePeak(monkeypatch)
    gate = asyncio.Event()
    engine = _SlowTranscription({"behind"}, gate=gate)
    common: dict[str, Any] = {"redis_url": redis_url, "key_prefix": prefix, **FAST, "queue_max_entries": 20}
    t_settings = TranscriberSettings(**common)
    c_settings = ConversationSettings(conversation_engine="echo", **common)
    async with (
        running(t_settings, TranscriberService(t_settings, engine)) as transcriber,
        running(c_settings, await conversation_service(c_settings)),
    ):
        await _start(redis, keys, "behind")
        await _start(redis, keys, "other")
        for i in range(200):
            await say(redis, keys, "behind", f"b{i}", f"utterance {i}")
        await asyncio.sleep(0.5)  # rings and a few sweeps: the stuck conversation is read as far as it may be
        held = await _group(redis, keys.input("behind"))
        assert held["lag"] >= 200 - 20  # left in Redis, undelivered (not pending)
        assert held["pending"] <= 20
        assert len(transcriber.live["behind"].queue) <= 20
        # The other conversation on the same worker is answered meanwhile.
        for i in range(3):
            await say(redis, keys, "other", f"o{i}", f"question {i}")

        async def others_answered() -> bool:
            return await answered_ids(redis, keys, "other") == ["o0", "o1", "o2"]

        await until(others_answered)
        gate.set()  # the engine catches up: the conversation is read again as its queue drains

        async def all_answered() -> bool:
            return len(await answered_ids(redis, keys, "behind")) == 200

        await until(all_answered, timeout_s=30)
    assert await answered_ids(redis, keys, "behind") == [f"b{i}" for i in range(200)]
    ids = [entry_id.decode() for entry_id, _ in await redis.xrange(keys.input("behind"))]
    assert engine.fed["behind"] == ids  # each once, in stream order
    assert peak.entries["behind"] <= 20
    done = await _group(redis, keys.input("behind"))
    assert (done["pending"], done["lag"]) == (0, 0)


async def test_a_takeover_claims_the_pending_entries_page_by_page_in_order_as_the_queue_drains(
    redis_url: str, redis: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead owner left 70 entries pending (one of them a poison entry, delivered too
    often) and 30 undelivered. The new owner, with a queue of at most 10 entries, claims
    the pending ones in pages as its queue drains, then reads the rest: each entry once,
    in stream order, and the poison one dead-lettered."""
    keys = Keys(prefix)
    peak = _QueuePeak(monkeypatch)
    listed: list[int] = []
    real_xpending_range = aioredis.Redis.xpending_range

    async def xpending_range(self: aioredis.Redis, *args: Any, **kwargs: Any) -> Any:
        rows = await real_xpending_range(self, *args, **kwargs)
        listed.append(len(rows))
        return rows

    monkeypatch.setattr(aioredis.Redis, "xpending_range", xpending_range)
    control, data, group = keys.control_for("c"), keys.input("c"), "transcriber"
    await ensure_group(redis, control, group)
    await ensure_group(redis, data, group)
    await redis.xadd(control, {"d": encode(ConversationStarted(conversation_id="c"))})
    await redis.xreadgroup(group, "dead-worker", {control: ">"}, count=1)
    for i in range(100):
        await say(redis, keys, "c", f"u{i}", f"utterance {i}")
    delivered = await redis.xreadgroup(group, "dead-worker", {data: ">"}, count=70)
    ids = [entry_id.decode() for entry_id, _ in await redis.xrange(data)]
    assert len(delivered[0][1]) == 70
    poison = ids[10]
    for _ in range(3):
        await redis.xclaim(data, group, "dead-worker", 0, [poison])
    ((control_id, _),) = await redis.xrange(control)
    # The dead worker's claim, idle past any lease: the next reaper pass takes it.
    await redis.xclaim(control, group, "dead-worker", 0, [control_id], idle=60_000, justid=True)
    engine = _SlowTranscription(set())
    settings = TranscriberSettings(redis_url=redis_url, key_prefix=prefix, **FAST, queue_max_entries=10)
    async with running(settings, TranscriberService(settings, engine)) as runtime:

        async def all_fed() -> bool:
            return len(engine.fed.get("c", [])) == 99

        await until(all_fed)
        assert runtime.live["c"].replay is None
    assert engine.fed["c"] == [i for i in ids if i != poison]
    assert peak.entries["c"] <= 10
    # Pages of at most the queue's room (5 of 10), and the listing went on past the first page.
    assert len(listed) >= 70 // 5 and max(listed) <= 5
    ((_, letter_fields),) = await redis.xrange(keys.dead(0))
    letter = DeadLetter.model_validate_json(letter_fields[b"d"])
    assert letter.entry_id == poison and "poison" in letter.reason
    done = await _group(redis, data)
    assert (done["pending"], done["lag"]) == (0, 0)


# --- the memory bound, measured -----------------------------------------------------------------

#: Adds ARGV[3] audio chunks to KEYS[1], entry i being ARGV[1] .. i .. ARGV[2], inside Redis:
#: the test process never holds the audio it writes, so its resident memory is the worker's.
FILL_SCRIPT = """
for i = tonumber(ARGV[4]), tonumber(ARGV[4]) + tonumber(ARGV[3]) - 1 do
  redis.call('XADD', KEYS[1], '*', 'd', ARGV[1] .. i .. ARGV[2])
end
"""


async def _fill(redis: aioredis.Redis, keys: Keys, cid: str, chunks: int) -> None:
    """``chunks`` audio chunks of MAX_AUDIO_CHUNK_BYTES (96,000 bytes of PCM) for one utterance."""
    audio = base64.b64encode(b"\x01\x00" * (MAX_AUDIO_CHUNK_BYTES // 2)).decode()
    head = f'{{"v":1,"type":"audio.chunk","conversation_id":"{cid}","utterance_id":"u1","seq":'
    tail = f',"audio":"{audio}"}}'
    for start in range(0, chunks, 100):
        await redis.eval(FILL_SCRIPT, 1, keys.input(cid), head, tail, min(100, chunks - start), start)


class _RssPeak:
    """The process's resident set: at the start, and the most it reached (sampled every
    2 ms by a thread, so the event loop under test cannot delay a sample)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> _RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20


#: What a conversation any number of 96 KB chunks behind a slow engine may add to a
#: worker's resident memory with the default queue caps (QUEUE_MAX_BYTES 4 MiB of payload:
#: the queued entries and their decoded copies, one read in flight, allocator slack).
#: Measured: about 8 MB for the first flood, nothing more for the second, 4 times longer.
RSS_BOUND_MB = 32
#: Two floods, the second four times the first: the bound does not depend on the length.
#: Without the queue's bound the first alone would need ~128 MB (500 x 128 KB read, and
#: as much again decoded), the second ~512 MB. 20,000 chunks (2.5 GB in Redis) would
#: prove no more than 2,000 do: past the queue's few dozen entries the rest is never read.
FLOODS = (500, 2000)


async def _flood_behind_a_slow_engine(
    redis: aioredis.Redis, keys: Keys, engine: _SlowTranscription, flood: str, other: str, chunks: int
) -> float:
    """Write ``chunks`` chunks for ``flood``, start it, have ``other`` answered meanwhile,
    wait until the flood is handled: the RSS growth meanwhile, in MB."""
    await _fill(redis, keys, flood, chunks)
    ids = [entry_id.decode() for entry_id, _ in await redis.xrange(keys.input(flood))]
    assert len(ids) == chunks
    gc.collect()
    with _RssPeak() as rss:
        await _start(redis, keys, flood)
        await _start(redis, keys, other)
        # Another conversation on the same worker is answered while the flood is handled.
        for i in range(3):
            await say(redis, keys, other, f"o{i}", f"question {i}")

            async def answered(count: int = i + 1) -> bool:
                return len(await answered_ids(redis, keys, other)) == count

            await until(answered, timeout_s=5)
        assert len(engine.fed.get(flood, [])) < chunks  # still behind meanwhile

        async def flood_handled() -> bool:
            return len(engine.fed.get(flood, [])) == chunks

        await until(flood_handled, timeout_s=60)
    assert engine.fed[flood] == ids  # every chunk once, in stream order
    return rss.growth_mb


@pytest.mark.slow
async def test_a_conversation_thousands_of_chunks_behind_a_slow_engine_stays_within_the_memory_bound(
    redis_url: str, redis: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(prefix)
    peak = _QueuePeak(monkeypatch)
    # 4 ms per chunk: a slow engine next to the reader, which reads a chunk in well under 1 ms.
    engine = _SlowTranscription({f"flood{n}" for n in FLOODS}, delay_s=0.004)
    common: dict[str, Any] = {"redis_url": redis_url, "key_prefix": prefix, **FAST}  # the default queue caps
    t_settings = TranscriberSettings(**common)
    c_settings = ConversationSettings(conversation_engine="echo", **common)
    async with (
        running(t_settings, TranscriberService(t_settings, engine)),
        running(c_settings, await conversation_service(c_settings)),
    ):
        for n in FLOODS:
            flood = f"flood{n}"
            growth = await _flood_behind_a_slow_engine(redis, keys, engine, flood, f"other{n}", n)
            print(f"{n} chunks behind: RSS grew {growth:.1f} MB; the queue peaked at "
                  f"{peak.entries[flood]} entries, {peak.bytes[flood]} bytes")
            assert growth < RSS_BOUND_MB, f"{n} chunks behind grew the worker by {growth:.1f} MB"
            assert peak.bytes[flood] <= t_settings.queue_max_bytes
