"""The Redis Streams layer: connection, consumer groups, batched writes.

Contracts:
- ``BatchWriter`` is the only way services write. Ops queued by any session
  are sent together, in queue order, in one pipeline per flush: one round trip
  serves every conversation that produced something since the last flush.
- A *gated* op acks its source entry and, only if that ack removed the entry
  from the pending list, adds the effect (a Lua script, atomic). A retried
  batch, a zombie worker that lost its lease, or a second owner after a
  takeover therefore never writes an effect twice: exactly-once effects on
  top of at-least-once delivery.
- Plain adds (deltas) are at-least-once: a retry after a lost reply may repeat
  one; deltas carry an ``index`` so readers drop repeats.
- A failed flush (Redis away) is retried with backoff until it succeeds;
  nothing queued is dropped. ``wait_below`` gives the reader backpressure.
"""

from __future__ import annotations

import asyncio
import contextlib
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


# KEYS[1]=source stream, KEYS[2]=destination stream
# ARGV: group, gate id, maxlen, field, payload, extra ids to ack...
GATE_SCRIPT = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  if ARGV[5] ~= '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', ARGV[4], ARGV[5])
  end
  for i = 6, #ARGV do
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  end
  return 1
end
return 0
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
        self._bodies = {"gate": GATE_SCRIPT, "refresh": REFRESH_SCRIPT}
        self.sha: dict[str, str] = {}

    async def load(self, redis: aioredis.Redis) -> None:
        for name, body in self._bodies.items():
            self.sha[name] = (await redis.script_load(body))

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


@dataclass(slots=True)
class _Op:
    args: tuple[Any, ...]
    #: Name of a script to run by SHA, or "" for a plain command.
    script: str = ""
    on_result: Callable[[Any], None] | None = None


@dataclass
class WriterStats:
    flushes: int = 0
    ops: int = 0
    suppressed: int = 0
    retries: int = 0


@dataclass
class _Barrier:
    seq: int
    future: asyncio.Future[None] = field(repr=False)


class BatchWriter:
    """Queue of writes, flushed in order by one background task (see module doc)."""

    def __init__(self, redis: aioredis.Redis, scripts: Scripts, max_batch: int = 2000) -> None:
        self._redis = redis
        self._scripts = scripts
        self._max_batch = max_batch
        self._ops: deque[_Op] = deque()
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

    def _push(self, op: _Op) -> None:
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
    ) -> None:
        """Ack ``gate_id`` on ``src``; if that ack took, XADD ``payload`` to ``dst``."""
        self._push(
            _Op(
                (2, src, dst, group, gate_id, maxlen, ENTRY_FIELD, payload, *extra_ack_ids),
                script="gate",
                on_result=on_result,
            )
        )

    def add(self, dst: str, payload: bytes, maxlen: int) -> None:
        self._push(_Op(("XADD", dst, "MAXLEN", "~", maxlen, "*", ENTRY_FIELD, payload)))

    def add_fields(self, dst: str, fields: dict[str, Any], maxlen: int) -> None:
        flat: list[Any] = []
        for k, v in fields.items():
            flat += [k, v]
        self._push(_Op(("XADD", dst, "MAXLEN", "~", maxlen, "*", *flat)))

    def ack(self, src: str, group: str, ids: Sequence[str]) -> None:
        if ids:
            self._push(_Op(("XACK", src, group, *ids)))

    def command(self, *args: Any) -> None:
        self._push(_Op(args))

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
                batch = [self._ops.popleft() for _ in range(n)]
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

    async def _send_until_done(self, batch: list[_Op]) -> None:
        delays = backoff()
        pending = batch
        while pending:
            try:
                pending = await self._send(pending)
                if not self.redis_ok:
                    log.info("redis is back: writes flowing again")
                self.redis_ok = True
            except Exception as exc:
                if not is_transient(exc):
                    # A programming error in a batch must not wedge the writer forever:
                    # drop it loudly (the entries stay pending and are retried on takeover).
                    log.exception("dropping a write batch after a non-transient error")
                    return
                self.redis_ok = False
                self.stats.retries += 1
                delay = next(delays)
                log.warning("redis write failed (%s); retrying in %.2fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _send(self, batch: list[_Op]) -> list[_Op]:
        """Send a batch; return the ops to send again (scripts missing after a restart)."""
        if not self._scripts.sha:
            await self._scripts.load(self._redis)
        pipe = self._redis.pipeline(transaction=False)
        for op in batch:
            if op.script:
                pipe.execute_command("EVALSHA", self._scripts.sha[op.script], *op.args)
            else:
                pipe.execute_command(*op.args)
        results = await pipe.execute(raise_on_error=False)
        self.stats.flushes += 1
        self.stats.ops += len(batch)
        again: list[_Op] = []
        for op, result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):
                again.append(op)
                continue
            if isinstance(result, Exception):
                if is_transient(result):
                    raise result
                log.error("write %s failed: %s", op.args[0], result)
                continue
            if op.script == "gate" and result == 0:
                self.stats.suppressed += 1
                if self.on_suppressed:
                    self.on_suppressed()
            if op.on_result is not None:
                op.on_result(result)
        if again:
            await self._scripts.load(self._redis)
        return again


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
