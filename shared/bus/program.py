"""The batch program: how queued writes become one Lua call per partition.

A flush sends, per partition (hash tag), one EVALSHA of ``lua/batch.lua`` whose
ARGV is a list of op frames. ``OPS`` below is the op layout, defined here once:
``Program`` builds frames from it, and the Lua handlers read their operands in
the same order (each Lua ``-- op`` line matches ``OpSpec.signature``; a unit
test holds the two together).

A frame is ``code, key count, arg count, key indexes..., args...``; a key is
passed by its index in KEYS so that Redis Cluster sees every key a script touches.

A conversation's ops carry its ``Fence`` (its claim): the program puts an ``F``
frame before each run of ops behind one fence, and the script skips the run when
the claim is no longer this worker's (see ``Fence``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from shared.bus.doorbell import ring_ops
from shared.keys import Keys, partition_of_tag

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One op of the batch script: its code, key operands and arguments in order;
    ``rest`` names a variable-length tail of arguments."""

    code: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    rest: str | None = None

    @property
    def signature(self) -> str:
        """As the Lua file's ``-- op`` line writes it, e.g. ``X(key | maxlen, field, value)``."""
        args = [*self.args, *([f"{self.rest}..."] if self.rest else [])]
        return f"{self.code}({', '.join(self.keys)} | {', '.join(args)})"

    def frame(self, key_idxs: Sequence[int], args: Sequence[Any]) -> list[Any]:
        if len(key_idxs) != len(self.keys):
            raise ValueError(f"op {self.code} takes keys {self.keys}, got {len(key_idxs)}")
        if len(args) < len(self.args) or (self.rest is None and len(args) != len(self.args)):
            raise ValueError(f"op {self.code} takes args {self.signature}, got {len(args)}")
        return [self.code, len(key_idxs), len(args), *key_idxs, *args]


ADD = OpSpec("X", ("key",), ("maxlen", "field", "value"))
ADD_MANY = OpSpec("M", ("key",), ("maxlen", "field"), rest="values")
GATE = OpSpec("G", ("src", "dst"), ("group", "id", "maxlen", "field", "value"), rest="extra_ids")
ACK = OpSpec("K", ("src",), ("group",), rest="ids")
EXPIRE = OpSpec("E", ("key",), ("seconds",))
RING = OpSpec("R", ("bell",), ("maxlen", "kind", "ids"))
FENCE = OpSpec("F", ("control",), ("group", "consumer", "id", "ops"))
OPS: dict[str, OpSpec] = {spec.code: spec for spec in (ADD, ADD_MANY, GATE, ACK, EXPIRE, RING, FENCE)}

#: The result of an op skipped because its fence did not hold (see ``Fence``).
FENCED = b"FENCED"


@dataclass(slots=True, eq=False)
class Fence:
    """The claim a conversation's writes depend on: its ``conversation.started``
    entry (``entry_id`` on ``control_key``), pending for ``consumer`` in ``group``.

    A worker paused or cut off past its lease comes back with writes queued (or
    in flight) for conversations a peer has meanwhile taken over. The gate alone
    would not stop them all: XACK does not check who holds an entry, so the old
    owner could still gate an entry the new owner claimed, or one it read itself
    after the takeover, and its deltas are not gated at all. So the batch program
    writes a fenced op only while the claim is still this worker's (op ``F``,
    checked in the same atomic step as the writes): from the moment a peer takes
    the claim, nothing the old owner sends for that conversation is written.

    ``lost`` is set once a fence did not hold, or once the worker gave the
    conversation up: ops still queued behind it are then never sent."""

    control_key: str
    group: str
    consumer: str
    entry_id: str
    lost: bool = False


def lua_source(name: str) -> str:
    """A Lua program shipped in this package (``lua/<name>.lua``)."""
    return resources.files("shared.bus").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The package's Lua programs, addressed by SHA; reloaded after a Redis restart (NOSCRIPT)."""

    NAMES = ("batch", "refresh")

    def __init__(self) -> None:
        self._bodies = {name: lua_source(name) for name in self.NAMES}
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


@dataclass(slots=True)
class QueuedOp:
    """One queued write; ``BatchWriter.add`` returns it so a later gate can supersede it."""

    code: str
    keys: tuple[str, ...]
    #: Arguments in the op's order (see OPS).
    args: tuple[Any, ...]
    on_result: Callable[[Any], None] | None = None
    #: The claim this op is written under (None: not a conversation's write, or not fenced).
    fence: Fence | None = None
    #: Taken into a flush: too late to supersede.
    sent: bool = False
    #: Superseded before it was sent: never written.
    dropped: bool = False


@dataclass(slots=True)
class _Item:
    """One frame of a program; consecutive adds to one stream fold into one ``M``."""

    spec: OpSpec
    key_idxs: list[int]
    args: list[Any]
    #: The queued ops whose result this frame's result is (none for a ring or a fence).
    ops: list[QueuedOp]
    #: A fence frame's claim.
    fence: Fence | None = None


class Program:
    """The ops of one partition, in order, as the batch script's KEYS and ARGV."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self.items: list[_Item] = []
        #: The fence frame of the run of ops being added, and that run's fence.
        self._run: _Item | None = None
        self._run_fence: Fence | None = None

    def _key(self, key: str) -> int:
        idx = self._index.get(key)
        if idx is None:
            self.keys.append(key)
            idx = self._index[key] = len(self.keys)
        return idx

    def _append(self, item: _Item, fence: Fence | None) -> None:
        """Append a frame; a frame behind another fence than the last one's starts a new run,
        behind a fence frame of its own (the script skips the run if the claim is gone)."""
        if fence is not self._run_fence:
            self._run_fence = fence
            self._run = None
            if fence is not None:
                self._run = _Item(FENCE, [self._key(fence.control_key)],
                                  [fence.group, fence.consumer, fence.entry_id, 0], [], fence)
                self.items.append(self._run)
        if self._run is not None:
            self._run.args[3] += 1
        self.items.append(item)

    def add(self, op: QueuedOp) -> None:
        idxs = [self._key(k) for k in op.keys]
        if op.code != ADD.code:
            self._append(_Item(OPS[op.code], idxs, list(op.args), [op]), op.fence)
            return
        maxlen, fld, value = op.args
        if not isinstance(value, bytes | str):
            # Encoded only now that it is sent (see BatchWriter.add). A payload that cannot be
            # encoded is dropped alone, loudly: it must not take the rest of the batch with it.
            try:
                value = value()
            except Exception:
                log.exception("dropping a queued write to %s: its payload could not be encoded", op.keys[0])
                return
        last = self.items[-1] if self.items else None
        if (last is not None and last.spec in (ADD, ADD_MANY) and last.key_idxs == idxs
                and last.args[:2] == [maxlen, fld] and op.fence is self._run_fence):
            last.spec = ADD_MANY  # its result is then a count: no caller of a folded add needs its id
            last.args.append(value)
            last.ops.append(op)
            return
        self._append(_Item(ADD, idxs, [maxlen, fld, value], [op]), op.fence)

    def add_rings(self, keys: Keys, maxlen: int) -> None:
        """Ring the doorbells for the conversation streams this program writes (a
        gate's effect included): one ring per stream kind naming the conversations
        written to (a program is one partition, so its bells share its slot)."""
        written = [self.keys[item.key_idxs[-1] - 1] for item in self.items if item.spec in (ADD, ADD_MANY, GATE)]
        for tag, kinds in ring_ops(written).items():
            for kind, cids in kinds.items():
                bell = self._key(keys.bell(partition_of_tag(tag), kind))
                self._append(_Item(RING, [bell], [maxlen, kind, " ".join(cids)], []), None)

    def ops(self) -> list[QueuedOp]:
        """The queued ops this program writes (to send again when it failed)."""
        return [op for item in self.items for op in item.ops]

    def argv(self) -> list[Any]:
        out: list[Any] = []
        for item in self.items:
            out += item.spec.frame(item.key_idxs, item.args)
        return out
