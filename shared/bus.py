"""The Redis Streams layer: connection, consumer groups, batched writes.

Contracts:
- ``BatchWriter`` is the only way services write. Ops queued by any session
  are sent together, in queue order, in one pipeline per flush: one round trip
  serves every conversation that produced something since the last flush.
- A *gated* op acks its source entry and, only if that ack removed the entry
  from the pending list, adds the effect (a Lua script, atomic). A retried
  batch, a zombie worker that lost its lease, or a second owner after a
  takeover therefore never writes an effect twice: exactly-once effects on
  top of at-least-once delivery. An entry the reader took from its doorbell
  (never delivered by XREADGROUP) is consumed by moving the group past it,
  only if it is the group's very next entry: nothing is skipped, and a
  second gate finds it consumed.
- Plain adds (deltas) are at-least-once: a retry after a lost reply may repeat
  one; deltas carry an ``index`` so readers drop repeats.
- A failed flush (Redis away) is retried with backoff until it succeeds;
  nothing queued is dropped. ``wait_below`` gives the reader backpressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.backoff import backoff
from shared.keys import CONTROL_KIND, Keys, conversation_of_key, data_kind_of_key
from shared.models import ENTRY_FIELD

log = logging.getLogger(__name__)

#: Errors that mean "Redis is away for now": retry with backoff.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    # A Redis that is loading its AOF after a restart answers LOADING for a while.
    return isinstance(exc, ResponseError) and str(exc).startswith(("LOADING", "MASTERDOWN", "TRYAGAIN"))


def connect(url: str, **kwargs: Any) -> aioredis.Redis:
    """A client that returns bytes (no decoding on the hot path)."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=5,
        health_check_interval=0,
        **kwargs,
    )


# One flush = one script call per partition: the batch is a small program in
# ARGV (op code, then operands; keys by their index in KEYS, so Redis Cluster
# sees every key the script touches). Each op runs under pcall so one bad op
# cannot abort the rest; the reply holds one result per op.
#   X key maxlen field value                  XADD (maxlen '': uncapped); the result is the new id
#   M key maxlen field n value1..valuen       n XADDs to one stream (consecutive X ops, folded)
#   G src dst group gate maxlen field value n id1..idn
#                                              take gate with the n older ids; only if it took: XADD
#   K src group n id1..idn                     take each id
# "take" = XACK, or for an entry never delivered (taken from its doorbell, see
# Carried) that is the group's next one, XGROUP SETID past it: consumed either way.
#   E key seconds                              EXPIRE
#   R bell maxlen kind limit n (key cid)x n    the doorbell: XADD bell kind "cid1 cid2 ..." plus, per
#                                              conversation whose entries of this script total <= limit
#                                              bytes, those entries: field "<cid> <prev id> <id> <field>",
#                                              value the entry's value (prev id: the entry before it)
BATCH_SCRIPT = """
local out = {}
local i = 1
local n = #ARGV
local call = redis.call
-- What each stream got in this script, in order: id, field, value (for the doorbells that carry them).
local added = {}
-- Functions defined once (not a closure per op): this script runs thousands of ops a second.
local function add(key, maxlen, field, value)
  local id
  if maxlen == '' then  -- uncapped (a control stream: its pending entries are ownership claims)
    id = call('XADD', key, '*', field, value)
  else
    id = call('XADD', key, 'MAXLEN', '~', maxlen, '*', field, value)
  end
  local a = added[key]
  if a == nil then
    added[key] = {id, field, value}
  else
    a[#a+1] = id; a[#a+1] = field; a[#a+1] = value
  end
  return id
end
local function ring(bell, maxlen, kind, limit, base, count)
  local cids, carried = {}, {}
  for j = 1, count do
    local key, cid = KEYS[tonumber(ARGV[base+2*j-1])], ARGV[base+2*j]
    cids[j] = cid
    local a = added[key]
    if a ~= nil and #carried < 4000 then
      local size = 0
      for k = 3, #a, 3 do size = size + #a[k] end
      if size <= limit then
        local older = call('XREVRANGE', key, '(' .. a[1], '-', 'COUNT', 1)
        local prev = '0-0'
        if older[1] ~= nil then prev = older[1][1] end
        for k = 1, #a, 3 do
          carried[#carried+1] = cid .. ' ' .. prev .. ' ' .. a[k] .. ' ' .. a[k+1]
          carried[#carried+1] = a[k+2]
          prev = a[k]
        end
      end
    end
  end
  call('XADD', bell, 'MAXLEN', '~', maxlen, '*', kind, table.concat(cids, ' '), unpack(carried))
  return count
end
local function before(a, b)  -- stream id a < b
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end
-- Consume id (and the older ids ARGV[base+1..base+extra] that go with it) for group:
-- XACK when it was delivered; when it never was (a reader took it from its doorbell),
-- only if it and the undelivered extras are exactly the group's next entries, moving
-- the group past them (XGROUP SETID): nothing is skipped. 1 if this call consumed id.
local function take(src, group, id, base, extra)
  if call('XACK', src, group, id) == 1 then
    for j = 1, extra do call('XACK', src, group, ARGV[base+j]) end
    return 1
  end
  for _, g in ipairs(call('XINFO', 'GROUPS', src)) do
    local name, last, read, counts
    for k = 1, #g, 2 do
      local f = g[k]
      if f == 'name' then name = g[k+1]
      elseif f == 'last-delivered-id' then last = g[k+1]
      elseif f == 'entries-read' then read = g[k+1]; counts = true end
    end
    if name == group then
      if not before(last, id) then return 0 end  -- delivered and acked already: a repeat
      local fresh, delivered = {}, {}
      for j = 1, extra do
        local e = ARGV[base+j]
        if before(last, e) then fresh[#fresh+1] = e else delivered[#delivered+1] = e end
      end
      -- What lies strictly between the group's position and id must be exactly the fresh extras
      -- (usually none: an empty range, cheap).
      local between = call('XRANGE', src, '(' .. last, '(' .. id, 'COUNT', #fresh + 1)
      if #between ~= #fresh then return 0 end
      for j = 1, #fresh do
        if between[j][1] ~= fresh[j] then return 0 end
      end
      fresh[#fresh+1] = id
      for j = 1, #delivered do call('XACK', src, group, delivered[j]) end
      -- Keep the group's entries-read count (Redis 7+; its lag needs it): a new group's is nil.
      if counts and type(read) ~= 'number' and last == '0-0' then read = 0 end
      if type(read) == 'number' then
        call('XGROUP', 'SETID', src, group, id, 'ENTRIESREAD', read + #fresh)
      else
        call('XGROUP', 'SETID', src, group, id)
      end
      return 1
    end
  end
  return 0
end
local function takes(src, group, base, count)
  local took = 0
  for j = 1, count do took = took + take(src, group, ARGV[base+j], 0, 0) end
  return took
end
local function gate(src, dst, group, id, maxlen, field, value, base, extra)
  if take(src, group, id, base, extra) == 1 then
    if value ~= '' then add(dst, maxlen, field, value) end
    return 1
  end
  return 0
end
local function many(key, maxlen, field, base, count)
  for j = 1, count do add(key, maxlen, field, ARGV[base+j]) end
  return count
end
while i <= n do
  local op = ARGV[i]
  local ok, res
  if op == 'G' then
    local extra = tonumber(ARGV[i+8])
    ok, res = pcall(gate, KEYS[tonumber(ARGV[i+1])], KEYS[tonumber(ARGV[i+2])], ARGV[i+3], ARGV[i+4],
                    ARGV[i+5], ARGV[i+6], ARGV[i+7], i+8, extra)
    i = i + 9 + extra
  elseif op == 'X' then
    ok, res = pcall(add, KEYS[tonumber(ARGV[i+1])], ARGV[i+2], ARGV[i+3], ARGV[i+4])
    i = i + 5
  elseif op == 'M' then
    local count = tonumber(ARGV[i+4])
    ok, res = pcall(many, KEYS[tonumber(ARGV[i+1])], ARGV[i+2], ARGV[i+3], i+4, count)
    i = i + 5 + count
  elseif op == 'K' then
    local count = tonumber(ARGV[i+3])
    ok, res = pcall(takes, KEYS[tonumber(ARGV[i+1])], ARGV[i+2], i+3, count)
    i = i + 4 + count
  elseif op == 'E' then
    ok, res = pcall(call, 'EXPIRE', KEYS[tonumber(ARGV[i+1])], ARGV[i+2])
    i = i + 3
  elseif op == 'R' then
    local count = tonumber(ARGV[i+5])
    ok, res = pcall(ring, KEYS[tonumber(ARGV[i+1])], ARGV[i+2], ARGV[i+3], tonumber(ARGV[i+4]), i+5, count)
    i = i + 6 + 2 * count
  else
    return redis.error_reply('bad op ' .. tostring(op) .. ' at ' .. i)
  end
  if ok then
    if res == nil then res = 1 end
    out[#out+1] = res
  else
    out[#out+1] = 'ERR ' .. tostring(res)
  end
end
return out
"""

# KEYS[1]=control stream; ARGV: group, consumer, entry ids...
# Refresh only entries this consumer still holds: a blind XCLAIM would steal
# back a conversation a peer took over while this worker was paused.
REFRESH_SCRIPT = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""


class Scripts:
    """Lua scripts addressed by SHA, reloaded after a Redis restart (NOSCRIPT)."""

    def __init__(self) -> None:
        self._bodies = {"batch": BATCH_SCRIPT, "refresh": REFRESH_SCRIPT}
        self.sha: dict[str, str] = {}

    async def load(self, redis: aioredis.Redis) -> None:
        for name, body in self._bodies.items():
            self.sha[name] = await redis.script_load(body)

    async def call(self, redis: aioredis.Redis, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if name not in self.sha:
            await self.load(redis)
        try:
            return await redis.evalsha(self.sha[name], len(keys), *keys, *args)
        except NoScriptError:
            await self.load(redis)
            return await redis.evalsha(self.sha[name], len(keys), *keys, *args)


StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


async def xrange_entries(
    redis: aioredis.Redis, key: str, min: str = "-", max: str = "+", count: int | None = None, reverse: bool = False
) -> StreamEntries:
    """XRANGE / XREVRANGE with the reply typed (redis-py declares it Optional)."""
    if reverse:
        rows = await redis.xrevrange(key, max=max, min=min, count=count)
    else:
        rows = await redis.xrange(key, min=min, max=max, count=count)
    return cast(StreamEntries, rows or [])


async def ensure_group(redis: aioredis.Redis, key: str, group: str) -> bool:
    """Create ``group`` on ``key`` from the stream's start; False if it existed."""
    try:
        await redis.xgroup_create(key, group, id="0", mkstream=True)
        return True
    except ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise


StreamReply = list[tuple[bytes, StreamEntries]]


class GroupReader:
    """Non-blocking XREADGROUP ``>`` over many streams on a connection of its own
    (the blocking wait is on the doorbells).

    A sweep lists every owned stream, thousands for a busy worker; packing that
    command is most of a read's cost, so it is packed once per change of the
    stream set (``plan_key``) and sent as bytes. The reply is parsed here (no
    redis-py response callback on this path).
    """

    def __init__(self, redis: aioredis.Redis, group: str, consumer: str) -> None:
        self._conn = RawConnection(redis)
        self._group = group
        self._consumer = consumer
        self._plan_key: object = None
        self._packed = b""
        #: Reads sent and entries they returned (logged at shutdown: the mean batch size).
        self.reads = 0
        self.entries = 0

    async def read(self, plan_key: object, streams: Sequence[str], count: int) -> StreamReply:
        """Read ``>`` on ``streams``. The command is packed once per ``plan_key``
        (the full set of owned streams); ``plan_key`` None packs a one-off set."""
        if plan_key is None or plan_key != self._plan_key:
            packed = pack_command((
                "XREADGROUP", "GROUP", self._group, self._consumer, "COUNT", count,
                "STREAMS", *streams, *([">"] * len(streams)),
            ))
            if plan_key is not None:
                self._packed, self._plan_key = packed, plan_key
        else:
            packed = self._packed
        reply = parse_stream_reply((await self._conn.roundtrip(packed, 1))[0])
        self.reads += 1
        for _key, entries in reply:
            self.entries += len(entries)
        return reply

    async def aclose(self) -> None:
        await self._conn.aclose()


def parse_stream_reply(raw: Any) -> StreamReply:
    """An XREAD / XREADGROUP reply as hiredis gives it (no redis-py callback):
    [(key, [(entry id, {field: value})])]. An entry trimmed while pending has no fields."""
    if not raw:
        return []
    # RESP3 (redis-py 8's default) answers a map {key: entries}; RESP2 a list of [key, entries].
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [
        (key, [(entry_id, _pairs(fields)) for entry_id, fields in entries])
        for key, entries in cast(list[tuple[bytes, list[tuple[bytes, list[bytes] | None]]]], pairs)
    ]


#: Doorbell entries carry the new entries of a stream up to this many bytes (per stream and batch).
CARRY_LIMIT = 4096
#: ... and only from a batch of at most this many writes. Carrying saves each reader a read and
#: a wake-up, which is most of a hop's latency under light load; in a big batch the reads are
#: batched too, and consuming entries that were never delivered (the gate's XINFO, XRANGE and
#: SETID: ~6 us of Redis time) costs more than the share of the read it saves (measured).
CARRY_MAX_WRITES = 32


@dataclass(slots=True)
class Carried:
    """A stream entry that came with its doorbell: ``prev_id`` is the stream's entry
    just before it, so a reader whose last id is ``prev_id`` can take it as the
    next entry without reading the stream."""

    conversation_id: str
    prev_id: bytes
    entry_id: bytes
    fields: dict[bytes, bytes]


@dataclass(slots=True)
class Ring:
    """One doorbell entry: these conversations' ``kind`` streams got entries;
    ``carried`` holds those entries for the conversations whose batch was small."""

    kind: str
    conversation_ids: list[str]
    carried: list[Carried]


class Doorbell:
    """Listens to the per-partition doorbell streams.

    Whoever writes to a conversation's stream also adds a doorbell entry (one
    per write batch: field = stream kind, value = the conversation ids). A
    worker blocks on the doorbells (a few keys) instead of on every stream it
    owns (thousands), then reads just the streams that rang. A writer that
    does not ring is still read, by the worker's periodic sweep. The workers'
    writer also puts small new entries on the doorbell entry itself (see
    :class:`Carried`), so a follower that is up to date needs no read at all.
    """

    def __init__(self, redis: aioredis.Redis, keys: Sequence[str]) -> None:
        self._redis = redis
        self._conn = RawConnection(redis)
        self._keys = list(keys)
        self._last: dict[str, str] = {}

    async def start(self) -> None:
        """Listen from now on (what rang before is covered by the first sweep)."""
        for key in self._keys:
            newest = await xrange_entries(self._redis, key, count=1, reverse=True)
            self._last[key] = newest[0][0].decode() if newest else "0-0"

    async def wait(self, block_ms: int, count: int = 1000) -> list[Ring]:
        """The doorbell entries rung since the last call, oldest first; [] after
        ``block_ms`` of quiet."""
        packed = pack_command((
            "XREAD", "COUNT", count, "BLOCK", max(1, block_ms), "STREAMS", *self._keys,
            *(self._last[k] for k in self._keys),
        ))
        raw = (await self._conn.roundtrip(packed, 1))[0]
        if not raw:
            return []
        rings: list[Ring] = []
        pairs = raw.items() if isinstance(raw, dict) else raw
        for key, entries in cast(list[tuple[bytes, list[tuple[bytes, list[bytes]]]]], pairs):
            for _entry_id, fields in entries:
                rings.extend(parse_ring(fields))
            self._last[key.decode()] = entries[-1][0].decode()
        return rings

    async def aclose(self) -> None:
        await self._conn.aclose()


def parse_ring(flat: list[bytes]) -> list[Ring]:
    """A doorbell entry's flat field list -> its rings: ``kind`` fields name the
    conversations; ``"<cid> <prev id> <id> <field>"`` fields carry entries."""
    rings: list[Ring] = []
    carried: list[Carried] = []
    for i in range(0, len(flat) - 1, 2):
        name, value = flat[i], flat[i + 1]
        if b" " not in name:
            rings.append(Ring(name.decode(), value.decode().split(), carried))
            continue
        parts = name.split(b" ")
        if len(parts) == 4:
            carried.append(Carried(parts[0].decode(), parts[1], parts[2], {parts[3]: value}))
    return rings


@functools.lru_cache(maxsize=65_536)
def _ring_target(key: str) -> tuple[str, str, str] | None:
    """(partition tag, kind, conversation id) of a conversation stream, else None.
    Cached: a flush asks this for every key it writes to."""
    kind = data_kind_of_key(key)
    cid = conversation_of_key(key)
    if kind is None or cid is None:
        return None
    return hash_tag(key), kind, cid


def ring_ops(keys: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """Doorbell rings for writes to ``keys``: {partition tag: {kind: [conversation ids]}}."""
    rings: dict[str, dict[str, dict[str, None]]] = {}
    for key in keys:
        target = _ring_target(key)
        if target is not None:
            tag, kind, cid = target
            rings.setdefault(tag, {}).setdefault(kind, {})[cid] = None
    return {tag: {kind: list(ids) for kind, ids in kinds.items()} for tag, kinds in rings.items()}


async def add_with_rings(
    redis: aioredis.Redis,
    scripts: Scripts,
    keys: Keys,
    writes: Sequence[tuple[str, bytes | str, int | None]],
    bell_maxlen: int = 10_000,
    carry_limit: int = CARRY_LIMIT,
) -> list[bytes]:
    """A client's writes: XADD each (key, payload, maxlen; None = uncapped, as a
    control stream must be) with the doorbell rings, one script call per
    partition. Small entries ride on their doorbell (see :class:`Carried`), so
    the worker that owns the stream takes them without reading it. Returns the
    new entry ids in the order of ``writes``. A batch too big to carry (see
    CARRY_MAX_WRITES) goes as plain pipelined XADDs and rings: Lua costs Redis
    more per XADD than a plain command, and carrying would not happen anyway."""
    controls = frozenset(keys.controls())
    if len(writes) > CARRY_MAX_WRITES:
        pipe = redis.pipeline(transaction=False)
        for key, payload, maxlen in writes:
            if maxlen is None:
                pipe.xadd(key, {ENTRY_FIELD: payload})
            else:
                pipe.xadd(key, {ENTRY_FIELD: payload}, maxlen=maxlen, approximate=True)
        add_rings(pipe, keys, [key for key, _, _ in writes], bell_maxlen)
        return cast(list[bytes], (await pipe.execute())[: len(writes)])
    programs: dict[str, tuple[_Program, list[int]]] = {}
    for n, (key, payload, maxlen) in enumerate(writes):
        prog, order = programs.setdefault(hash_tag(key), (_Program(fold=False), []))
        prog.add(QueuedOp("X", (key,), ("" if maxlen is None else maxlen, ENTRY_FIELD, payload)))
        order.append(n)
    ids: list[bytes] = [b""] * len(writes)
    for prog, order in programs.values():
        prog.add_rings(keys.bell_for_key, bell_maxlen, carry_limit, controls)
        results = await scripts.call(redis, "batch", prog.keys, prog.argv())
        for n, result in zip(order, results, strict=False):
            if not isinstance(result, bytes) or result.startswith(b"ERR "):
                raise ResponseError(f"write to {writes[n][0]} failed: {result!r}")
            ids[n] = result
    return ids


def add_rings(pipe: Any, keys: Keys, written: Sequence[str], maxlen: int = 10_000) -> None:
    """Queue on ``pipe`` the doorbell entries for a client's writes to ``written``
    (conversation streams and control streams)."""
    controls = set(keys.controls())
    for key in {k for k in written if k in controls}:
        pipe.xadd(keys.bell_for_key(key), {CONTROL_KIND: "1"}, maxlen=maxlen, approximate=True)
    for tag, kinds in ring_ops([k for k in written if k not in controls]).items():
        for kind, ids in kinds.items():
            pipe.xadd(keys.bell(int(tag), kind), {kind: " ".join(ids)}, maxlen=maxlen, approximate=True)


def pack_command(args: Sequence[Any]) -> bytes:
    """RESP-encode one command (bytes, str and int arguments). A flush packs
    thousands of arguments: this is several times faster than redis-py's packer."""
    out = [b"*%d\r\n" % len(args)]
    append = out.append
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class RawConnection:
    """A connection of its own for pre-packed commands and their replies."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._conn = redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]

    async def roundtrip(self, packed: bytes, replies: int) -> list[Any]:
        """Send ``packed`` (``replies`` commands), return their replies in order.
        The first error reply is raised after every reply has been read."""
        try:
            await self._conn.send_packed_command(packed, check_health=False)
            out: list[Any] = []
            error: ResponseError | None = None
            for _ in range(replies):
                try:
                    out.append(await self._conn.read_response())
                except ResponseError as exc:
                    error = error or exc
                    out.append(exc)
        except BaseException:
            # A reply may still be on its way: this connection cannot be reused.
            await self._conn.disconnect()
            raise
        if error is not None:
            raise error
        return out

    async def aclose(self) -> None:
        await self._conn.disconnect()


def id_order(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id as (ms, seq), for comparing ids in order."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


def _pairs(flat: list[bytes] | None) -> dict[bytes, bytes]:
    if not flat:
        return {}
    it = iter(flat)
    return dict(zip(it, it, strict=True))


@functools.lru_cache(maxsize=65_536)
def hash_tag(key: str) -> str:
    """The ``{...}`` part of a key: keys with the same tag share a cluster slot.
    Cached: the writer asks this once per queued op."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@dataclass(slots=True)
class QueuedOp:
    """One queued write; ``add`` returns it so a later gate can supersede it."""

    code: str
    keys: tuple[str, ...]
    #: Operands after the key indexes, in the script's order.
    args: tuple[Any, ...]
    on_result: Callable[[Any], None] | None = None
    #: Taken into a flush: too late to supersede.
    sent: bool = False
    #: Superseded before it was sent: never written.
    dropped: bool = False


@dataclass(slots=True)
class _Item:
    """One op of a batch program; consecutive XADDs to one stream fold into one ``M``."""

    code: str
    key_idxs: list[int]
    args: list[Any]
    ops: list[QueuedOp]
    values: list[Any] = field(default_factory=list)


class _Program:
    """The ops of one partition, in order, as the batch script's ARGV."""

    def __init__(self, fold: bool = True) -> None:
        #: Fold consecutive adds to one stream into one ``M`` op (their ids are then not returned).
        self._fold = fold
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self.items: list[_Item] = []

    def _key(self, key: str) -> int:
        idx = self._index.get(key)
        if idx is None:
            self.keys.append(key)
            idx = self._index[key] = len(self.keys)
        return idx

    def add(self, op: QueuedOp) -> None:
        idxs = [self._key(k) for k in op.keys]
        if op.code == "X":
            maxlen, fld, value = op.args
            if not isinstance(value, bytes | str):
                # Encoded only now that it is sent (see BatchWriter.add). A payload that cannot be
                # encoded is dropped alone, loudly: it must not take the rest of the batch with it.
                try:
                    value = value()
                except Exception:
                    log.exception("dropping a queued write to %s: its payload could not be encoded", op.keys[0])
                    return
            last = self.items[-1] if self.items and self._fold else None
            if last is not None and last.code in ("X", "M") and last.key_idxs == idxs and last.args == [maxlen, fld]:
                last.code = "M"
                last.values.append(value)
                last.ops.append(op)
                return
            self.items.append(_Item("X", idxs, [maxlen, fld], [op], [value]))
            return
        self.items.append(_Item(op.code, idxs, list(op.args), [op]))

    def add_rings(
        self, bell_key: Callable[[str], str], maxlen: int, carry_limit: int, controls: frozenset[str] = frozenset()
    ) -> None:
        """One doorbell XADD per stream kind: the conversations this program writes to
        (a program is one partition, so its kinds' bells are in the same slot), and
        their new entries when those total at most ``carry_limit`` bytes per stream
        and the program is small (see CARRY_MAX_WRITES); one ``control`` ring when
        it writes to a control stream in ``controls``."""
        rings: dict[str, tuple[str, dict[str, int]]] = {}  # kind -> (a key of that kind, {cid: key index})
        control_bells: set[str] = set()
        writes = 0
        for item in self.items:
            if item.code not in ("X", "M", "G"):
                continue
            writes += len(item.values) or 1
            idx = item.key_idxs[-1]
            key = self.keys[idx - 1]
            if key in controls:
                control_bells.add(bell_key(key))
                continue
            target = _ring_target(key)
            if target is not None:
                _tag, kind, cid = target
                ring = rings.get(kind)
                if ring is None:
                    ring = rings[kind] = (self.keys[idx - 1], {})
                ring[1][cid] = idx
        if writes > CARRY_MAX_WRITES:
            carry_limit = -1
        for kind, (key, ids) in rings.items():
            args: list[Any] = [maxlen, kind, carry_limit, len(ids)]
            for cid, idx in ids.items():
                args += (idx, cid)
            self.items.append(_Item("R", [self._key(bell_key(key))], args, []))
        for bell in sorted(control_bells):
            self.items.append(_Item("X", [self._key(bell)], [maxlen, CONTROL_KIND], [], [b"1"]))

    def argv(self) -> list[Any]:
        out: list[Any] = []
        for item in self.items:
            if item.code == "X":
                out.extend(("X", *item.key_idxs, *item.args, item.values[0]))
            elif item.code == "M":
                out.extend(("M", *item.key_idxs, *item.args, len(item.values), *item.values))
            else:
                out.extend((item.code, *item.key_idxs, *item.args))
        return out


@dataclass
class WriterStats:
    flushes: int = 0
    ops: int = 0
    suppressed: int = 0
    retries: int = 0
    op_errors: int = 0
    #: Queued adds a later gate superseded before they were sent.
    coalesced: int = 0


@dataclass
class _Barrier:
    seq: int
    future: asyncio.Future[None] = field(repr=False)


class BatchWriter:
    """Queue of writes, flushed in order by one background task (see module doc)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        scripts: Scripts,
        max_batch: int = 1000,
        bell_key: Callable[[str], str] | None = None,
        bell_maxlen: int = 10_000,
        carry_limit: int = CARRY_LIMIT,
    ) -> None:
        self._redis = redis
        self._conn = RawConnection(redis)
        #: Maps a written stream to its partition's doorbell (None: ring nothing).
        self._bell_key = bell_key
        self._bell_maxlen = bell_maxlen
        #: A stream's new entries ride on its doorbell entry when they total at most this many bytes.
        self._carry_limit = carry_limit
        self._scripts = scripts
        self._max_batch = max_batch
        self._ops: deque[QueuedOp] = deque()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._queued = 0
        self._written = 0
        self._barriers: list[_Barrier] = []
        self.stats = WriterStats()
        self.on_suppressed: Callable[[], None] | None = None
        self.redis_ok = True

    # --- queueing (sync, called from sessions) ---------------------------

    def _push(self, op: QueuedOp) -> None:
        self._ops.append(op)
        self._queued += 1
        self._wake.set()

    def gate(
        self,
        src: str,
        group: str,
        gate_id: str,
        dst: str,
        payload: bytes,
        maxlen: int,
        extra_ack_ids: Sequence[str] = (),
        on_result: Callable[[Any], None] | None = None,
        supersedes: Sequence[QueuedOp] = (),
    ) -> None:
        """Ack ``gate_id`` on ``src``; if that ack took, XADD ``payload`` to ``dst``
        and ack ``extra_ack_ids`` too. ``on_result`` gets 1 (written) or 0 (already acked).

        ``supersedes``: adds this effect makes redundant (a response's started
        and delta entries, whose text the done entry carries in full). Those
        not sent yet are dropped: an answer that completes within one flush is
        one entry, not one per delta; one that streams slowly keeps its deltas."""
        for op in supersedes:
            if not op.sent and not op.dropped:
                op.dropped = True
                self.stats.coalesced += 1
        self._push(QueuedOp("G", (src, dst), (group, gate_id, maxlen, ENTRY_FIELD, payload,
                                         len(extra_ack_ids), *extra_ack_ids), on_result))

    def add(
        self, dst: str, payload: bytes | str | Callable[[], bytes], maxlen: int, field: bytes = ENTRY_FIELD
    ) -> QueuedOp:
        """XADD ``payload`` to ``dst``. A callable payload is encoded at send time,
        so an add that a later gate supersedes is never encoded at all."""
        op = QueuedOp("X", (dst,), (maxlen, field, payload))
        self._push(op)
        return op

    def ack(self, src: str, group: str, ids: Sequence[str]) -> None:
        if ids:
            self._push(QueuedOp("K", (src,), (group, len(ids), *ids)))

    def expire(self, key: str, seconds: int) -> None:
        self._push(QueuedOp("E", (key,), (seconds,)))

    async def aclose(self) -> None:
        """Close the writer's connection (after the flush task is stopped)."""
        await self._conn.aclose()

    # --- waiting ----------------------------------------------------------

    @property
    def backlog(self) -> int:
        return self._queued - self._written

    async def wait_below(self, limit: int) -> None:
        while self.backlog >= limit:
            self._space.clear()
            await self._space.wait()

    async def flushed(self) -> None:
        """Return once every op queued before this call is written."""
        if self.backlog == 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers.append(_Barrier(self._queued, fut))
        await fut

    # --- the flush task -----------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ops:
                n = min(len(self._ops), self._max_batch)
                batch = []
                for _ in range(n):
                    op = self._ops.popleft()
                    op.sent = True
                    if not op.dropped:
                        batch.append(op)
                if batch:
                    await self._send_until_done(batch)
                self._written += n
                self._release()

    def _release(self) -> None:
        self._space.set()
        if self._barriers:
            keep = []
            for b in self._barriers:
                if b.seq <= self._written:
                    if not b.future.done():
                        b.future.set_result(None)
                else:
                    keep.append(b)
            self._barriers = keep

    async def _send_until_done(self, batch: list[QueuedOp]) -> None:
        delays = backoff()
        while True:
            try:
                await self._send(batch)
                if not self.redis_ok:
                    log.info("redis is back: writes flowing again")
                self.redis_ok = True
                return
            except NoScriptError:
                # Redis restarted and forgot the script: nothing of the batch ran.
                await self._scripts.load(self._redis)
            except Exception as exc:
                if not is_transient(exc):
                    # A programming error must not wedge the writer forever: drop the
                    # batch loudly (its source entries stay pending and are retried on takeover).
                    log.exception("dropping a write batch after a non-transient error")
                    return
                self.redis_ok = False
                self.stats.retries += 1
                delay = next(delays)
                log.warning("redis write failed (%s); retrying in %.2fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _send(self, batch: list[QueuedOp]) -> None:
        """One EVALSHA per partition (hash tag), all in one round trip."""
        if "batch" not in self._scripts.sha:
            await self._scripts.load(self._redis)
        programs: dict[str, _Program] = {}
        for op in batch:
            tag = hash_tag(op.keys[0])
            prog = programs.get(tag)
            if prog is None:
                prog = programs[tag] = _Program()
            prog.add(op)
        if self._bell_key is not None:
            for prog in programs.values():
                prog.add_rings(self._bell_key, self._bell_maxlen, self._carry_limit)
        sha = self._scripts.sha["batch"]
        packed = b"".join(pack_command(("EVALSHA", sha, len(p.keys), *p.keys, *p.argv())) for p in programs.values())
        replies = await self._conn.roundtrip(packed, len(programs))
        self.stats.flushes += 1
        self.stats.ops += len(batch)
        for prog, results in zip(programs.values(), replies, strict=True):
            # Doorbell items come last in a program and cover no op: zip stops before them.
            for item, result in zip(prog.items, results, strict=False):
                if not item.ops:
                    continue
                op = item.ops[0]
                if isinstance(result, bytes) and result.startswith(b"ERR "):
                    self.stats.op_errors += 1
                    log.error("write %s to %s failed: %s", op.code, op.keys[0], result[4:].decode(errors="replace"))
                    continue
                if op.code == "G" and result == 0:
                    self.stats.suppressed += 1
                    if self.on_suppressed:
                        self.on_suppressed()
                for covered in item.ops:
                    if covered.on_result is not None:
                        covered.on_result(result)


async def retry_forever(
    what: str,
    call: Callable[[], Awaitable[Any]],
    on_error: Callable[[BaseException], None] | None = None,
) -> Any:
    """Run ``call`` until it succeeds, backing off on transient Redis errors."""
    delays = backoff()
    failed = False
    while True:
        try:
            result = await call()
            if failed:
                log.info("%s: redis is back", what)
            return result
        except Exception as exc:
            if not is_transient(exc):
                raise
            if on_error:
                on_error(exc)
            delay = next(delays)
            if not failed:
                log.warning("%s: redis unavailable (%s); retrying", what, type(exc).__name__)
            failed = True
            await asyncio.sleep(delay)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task and wait for it, without swallowing our own cancellation."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError
