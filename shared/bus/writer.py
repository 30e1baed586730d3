"""The writer: every write of a worker goes through one ``BatchWriter``.

Contracts:
- Ops queued by any session are sent together, in queue order, one Lua call
  per partition (see ``shared.bus.program``), all in one round trip per flush:
  one round trip serves every conversation that produced something since the
  last flush.
- A *gated* op acks its source entry and, only if that ack removed the entry
  from the group's pending list, adds the effect (atomic, in the script). A
  retried batch, a zombie worker that lost its lease, or a second owner after
  a takeover therefore never writes an effect twice: exactly-once effects on
  top of at-least-once delivery (docs/architecture.md).
- Plain adds (deltas) are at-least-once: a retry after a lost reply may repeat
  one; deltas carry an ``index`` so readers drop repeats.
- A conversation's ops are *fenced* by its claim (``FencedWriter``, one per
  owned conversation): the program writes them only while this worker still
  holds the claim, so a worker that was paused or cut off past its lease writes
  nothing for a conversation a peer took over; ``on_fenced`` tells the runtime,
  which forgets the conversation (``shared.bus.program.Fence``).
- Every flush also rings the doorbells of the streams it wrote (hints only).
- A failed flush (Redis away) is retried with backoff until it succeeds;
  nothing queued is dropped. ``wait_below`` gives the reader backpressure.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from shared.backoff import backoff
from shared.bus.nodes import RawCommand, RawLinks
from shared.bus.program import ACK, ADD, EXPIRE, FENCED, GATE, Fence, Program, QueuedOp, Scripts
from shared.bus.resp import pack_command
from shared.bus.retry import failure_reason, is_transient, log_failure
from shared.keys import Keys, hash_tag
from shared.models import ENTRY_FIELD

log = logging.getLogger(__name__)


@dataclass
class WriterStats:
    flushes: int = 0
    ops: int = 0
    suppressed: int = 0
    retries: int = 0
    op_errors: int = 0
    #: Queued adds a later gate superseded before they were sent.
    coalesced: int = 0
    #: Ops not written because their conversation's claim was no longer this worker's.
    fenced: int = 0


class _Unsent(Exception):
    """Some partitions' programs failed (their master away): their ops, and why."""

    def __init__(self, ops: list[QueuedOp], cause: Exception) -> None:
        super().__init__(str(cause))
        self.ops = ops
        self.cause = cause


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
        bells: Keys | None = None,
        bell_maxlen: int = 10_000,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self._redis = redis
        #: Raw connections, one per node: each partition's program goes to its slot's master.
        self._links = RawLinks(redis, wait_replicas, wait_timeout_ms)
        #: Names the doorbells each flush rings for the streams it wrote (None: ring nothing).
        self._bells = bells
        self._bell_maxlen = bell_maxlen
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
        #: Called with a gate whose effect Redis refused (e.g. its stream's key holds another type):
        #: nothing of it was written and its source entry is still pending.
        self.on_gate_failed: Callable[[QueuedOp, str], None] | None = None
        #: Called once with a fence that did not hold: a peer holds that conversation's claim
        #: now, and nothing queued behind the fence is or will be written.
        self.on_fenced: Callable[[Fence], None] | None = None
        self.redis_ok = True
        #: While not ``redis_ok``: why, for readiness ("redis unreachable", or the refusal).
        self.failing_with = ""

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
        fence: Fence | None = None,
    ) -> None:
        """Ack ``gate_id`` on ``src``; if that ack took, XADD ``payload`` to ``dst``
        and ack ``extra_ack_ids`` too. ``on_result`` gets 1 (written) or 0 (already acked).

        ``supersedes``: adds this effect makes redundant (a response's started
        and delta entries, whose text the done entry carries in full). Those
        not sent yet are dropped: an answer that completes within one flush is
        one entry, not one per delta; one that streams slowly keeps its deltas.

        ``fence``: the claim this write depends on (see ``FencedWriter``)."""
        for op in supersedes:
            if not op.sent and not op.dropped:
                op.dropped = True
                self.stats.coalesced += 1
        self._push(QueuedOp(GATE.code, (src, dst), (group, gate_id, maxlen, ENTRY_FIELD, payload, *extra_ack_ids),
                            on_result, fence))

    def add(
        self, dst: str, payload: bytes | str | Callable[[], bytes], maxlen: int, field: bytes = ENTRY_FIELD,
        fence: Fence | None = None,
    ) -> QueuedOp:
        """XADD ``payload`` to ``dst``. A callable payload is encoded at send time,
        so an add that a later gate supersedes is never encoded at all."""
        op = QueuedOp(ADD.code, (dst,), (maxlen, field, payload), fence=fence)
        self._push(op)
        return op

    def ack(self, src: str, group: str, ids: Sequence[str], fence: Fence | None = None) -> None:
        if ids:
            self._push(QueuedOp(ACK.code, (src,), (group, *ids), fence=fence))

    def expire(self, key: str, seconds: int, fence: Fence | None = None) -> None:
        self._push(QueuedOp(EXPIRE.code, (key,), (seconds,), fence=fence))

    async def aclose(self) -> None:
        """Close the writer's connection (after the flush task is stopped)."""
        await self._links.aclose()

    # --- waiting ----------------------------------------------------------

    @property
    def backlog(self) -> int:
        return self._queued - self._written

    @property
    def unsent(self) -> int:
        """Ops queued and not taken into a flush yet (``backlog`` also counts those in flight)."""
        return len(self._ops)

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
                    if op.dropped:
                        continue
                    if op.fence is not None and op.fence.lost:
                        self.stats.fenced += 1  # its conversation is no longer ours: never sent
                        continue
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
                # Only what failed is sent again: on a cluster, the programs of the other
                # partitions' masters were written (and their results handled).
                batch = await self._send(batch)
                if not batch:
                    if not self.redis_ok:
                        log.info("redis is back: writes flowing again")
                    self.redis_ok = True
                    return
                continue  # NOSCRIPT: the script was loaded again, send at once
            except Exception as exc:
                if isinstance(exc, _Unsent):
                    batch, exc = exc.ops, exc.cause
                if not is_transient(exc):
                    # A programming error must not wedge the writer forever: drop the
                    # batch loudly (its source entries stay pending and are retried on takeover).
                    log.error("dropping a write batch after a non-transient error", exc_info=exc)
                    return
                if self.redis_ok:
                    log_failure(log, "redis write", exc)
                self.redis_ok = False
                self.failing_with = failure_reason(exc)
                self.stats.retries += 1
                await asyncio.sleep(next(delays))

    async def _send(self, batch: list[QueuedOp]) -> list[QueuedOp]:
        """One EVALSHA per partition (hash tag), one round trip per node. Returns the ops
        to send again at once (their node had forgotten the script: it is loaded again);
        raises ``_Unsent`` with the ops of partitions that failed for another reason."""
        if "batch" not in self._scripts.sha:
            await self._scripts.load(self._redis)
        programs: dict[str, Program] = {}
        for op in batch:
            tag = hash_tag(op.keys[0])
            prog = programs.get(tag)
            if prog is None:
                prog = programs[tag] = Program()
            prog.add(op)
        if self._bells is not None:
            for prog in programs.values():
                prog.add_rings(self._bells, self._bell_maxlen)
        sha = self._scripts.sha["batch"]
        progs = [p for p in programs.values() if p.keys]
        results = await self._links.send([
            RawCommand(p.keys[0], pack_command(("EVALSHA", sha, len(p.keys), *p.keys, *p.argv()))) for p in progs
        ])
        self.stats.flushes += 1
        again: list[QueuedOp] = []
        failed: list[QueuedOp] = []
        cause: Exception | None = None
        for prog, (reply,) in zip(progs, results, strict=True):
            if isinstance(reply, NoScriptError):
                # Redis restarted (or a replica was promoted) without the script: nothing of
                # this program ran. Load it again (where it failed too: on a cluster, every master).
                self._scripts.sha.pop("batch", None)
                again += prog.ops()
            elif isinstance(reply, Exception):
                failed += prog.ops()
                cause = cause or reply
            else:
                self._handle(prog, reply)
        self.stats.ops += len(batch) - len(again) - len(failed)
        if failed:
            assert cause is not None
            raise _Unsent(failed + again, cause)
        return again

    def _handle(self, prog: Program, results: Any) -> None:
        for item, result in zip(prog.items, results, strict=True):
            if item.fence is not None and result != 1:
                self._fence_failed(item.fence, result)
            if not item.ops:
                continue  # a fence or a doorbell ring
            if result == FENCED:
                self.stats.fenced += len(item.ops)
                continue
            op = item.ops[0]
            if isinstance(result, bytes) and result.startswith(b"ERR "):
                self.stats.op_errors += 1
                reason = result[4:].decode(errors="replace")
                log.error("write %s to %s failed: %s", op.code, op.keys[-1], reason)
                if op.code == GATE.code and self.on_gate_failed is not None:
                    self.on_gate_failed(op, reason)
                continue
            if op.code == GATE.code and result == 0:
                self.stats.suppressed += 1
                if self.on_suppressed:
                    self.on_suppressed()
            for covered in item.ops:
                if covered.on_result is not None:
                    covered.on_result(result)

    def _fence_failed(self, fence: Fence, result: Any) -> None:
        if isinstance(result, bytes) and result.startswith(b"ERR "):
            log.error("the claim %s %s could not be checked (%s): writing nothing behind it",
                      fence.control_key, fence.entry_id, result[4:].decode(errors="replace"))
        if fence.lost:
            return
        fence.lost = True
        if self.on_fenced is not None:
            self.on_fenced(fence)


class FencedWriter:
    """One owned conversation's view of the writer: every op it queues is fenced by
    the conversation's claim (see ``Fence``), so none is written once a peer holds
    that claim. Same calls as ``BatchWriter``; ``batch`` is the writer itself, for
    writes that belong to no one conversation."""

    def __init__(self, batch: BatchWriter, fence: Fence) -> None:
        self.batch = batch
        self.fence = fence

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
        self.batch.gate(src, group, gate_id, dst, payload, maxlen, extra_ack_ids, on_result, supersedes, self.fence)

    def add(
        self, dst: str, payload: bytes | str | Callable[[], bytes], maxlen: int, field: bytes = ENTRY_FIELD
    ) -> QueuedOp:
        return self.batch.add(dst, payload, maxlen, field, self.fence)

    def ack(self, src: str, group: str, ids: Sequence[str]) -> None:
        self.batch.ack(src, group, ids, self.fence)

    def expire(self, key: str, seconds: int) -> None:
        self.batch.expire(key, seconds, self.fence)
