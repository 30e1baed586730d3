"""Our pipeline as a system under test: start the services, write and read
their streams exactly as a client does.

Per utterance the client writes one ``utterance.text`` entry on the
conversation's input stream; it reads the conversation's transcripts stream
(``transcript.final``: the first hop's output) and responses stream
(``response.done``: the second hop's output) with plain XREAD over every
followed conversation's streams in one call.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.latency import DONE, FAILED, MID, Observation, Utt, id_ms, stamp_batch
from shared.bus.doorbell import add_with_rings
from shared.devstack import ServiceProcess, Stack, deterministic_env
from shared.follow import StreamFollower
from shared.keys import CONVERSATION_GROUP, TRANSCRIBER_GROUP, Keys
from shared.models import ConversationStarted, encode

#: Input streams are capped like the services cap theirs (INPUT_MAXLEN's default).
INPUT_MAXLEN = 20_000

_DONE_TAG = b'"type":"response.done"'
_FAILED_TAG = b'"type":"response.failed"'
_FINAL_TAG = b'"type":"transcript.final"'

StreamReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


def service_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """The services' environment for a benchmark run (simulated + echo engines, quiet)."""
    return deterministic_env(redis_url, prefix, **{"METRICS_ENABLED": "false", "LOG_LEVEL": "WARNING", **extra})


async def wait_for_workers(redis: aioredis.Redis, prefix: str, count: int, timeout_s: float = 60.0) -> None:
    """Wait until ``count`` workers of this prefix have written their heartbeat."""
    deadline = time.monotonic() + timeout_s
    found = 0
    while time.monotonic() < deadline:
        found = len([k async for k in redis.scan_iter(match=f"{prefix}:worker:*", count=1000)])
        if found >= count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"only {found} of {count} workers of {prefix} came up within {timeout_s}s")


async def worker_sessions(redis: aioredis.Redis, keys: Keys) -> dict[str, dict[str, int]]:
    """Conversations owned per worker, per service group: the pending control
    entries of each consumer (an owner keeps its ``conversation.started`` pending)."""
    out: dict[str, dict[str, int]] = {}
    for group in (TRANSCRIBER_GROUP, CONVERSATION_GROUP):
        owned: dict[str, int] = {}
        for control in keys.controls():
            summary = await redis.xpending(control, group)
            for c in summary.get("consumers") or []:
                name = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
                owned[name] = owned.get(name, 0) + int(c["pending"])
        out[group] = owned
    return out


class Services:
    """``transcribers`` + ``conversations`` worker processes under one prefix."""

    def __init__(self, redis_url: str, prefix: str, log_dir: Path, **env: str) -> None:
        self.prefix = prefix
        self.stack = Stack(service_env(redis_url, prefix, **env), log_dir)
        self.transcribers: list[ServiceProcess] = []
        self.conversations: list[ServiceProcess] = []

    async def start(self, redis: aioredis.Redis, transcribers: int = 1, conversations: int = 1) -> None:
        for _ in range(transcribers):
            self.transcribers.append(self.stack.start("transcriber_svc"))
        for _ in range(conversations):
            self.conversations.append(self.stack.start("conversation_svc"))
        try:
            await wait_for_workers(redis, self.prefix, transcribers + conversations)
        except RuntimeError:
            for p in self.stack.procs:
                if not p.alive():
                    sys.stderr.write(f"[bench] {p.module} exited: {p.log_text()[-2000:]}\n")
            raise

    def pids(self) -> dict[str, int]:
        out = {f"transcriber-{i}": p.pid for i, p in enumerate(self.transcribers)}
        out.update({f"conversation-{i}": p.pid for i, p in enumerate(self.conversations)})
        return out

    def check_alive(self) -> list[str]:
        """Modules that exited early (a crash under load is a finding)."""
        return [f"{p.module} pid {p.pid} (exit {p.proc.returncode})" for p in self.stack.procs if not p.alive()]

    def stop(self) -> None:
        self.stack.stop_all()


class PipelineTarget:
    """The client side of our pipeline (see the module doc)."""

    name = "ours"

    def __init__(self, redis: aioredis.Redis, keys: Keys, read_mid: bool = True) -> None:
        self.redis = redis
        self.keys = keys
        self.read_mid = read_mid
        self._key_conv: dict[bytes, str] = {}
        self._follower = StreamFollower(redis, keys)

    async def start_conversations(self, cids: Sequence[str]) -> None:
        for start in range(0, len(cids), 1000):
            writes = [(self.keys.control_for(cid), encode(ConversationStarted(conversation_id=cid)), None)
                      for cid in cids[start : start + 1000]]
            await add_with_rings(self.redis, self.keys, writes)

    def _keys_of(self, cid: str) -> list[str]:
        keys = [self.keys.responses(cid)]
        if self.read_mid:
            keys.append(self.keys.transcripts(cid))
        return keys

    def follow(self, cids: Sequence[str]) -> None:
        for cid in cids:
            for key in self._keys_of(cid):
                self._key_conv[key.encode()] = cid
                self._follower.follow(key)

    def unfollow(self, cids: Sequence[str]) -> None:
        for cid in cids:
            for key in self._keys_of(cid):
                self._follower.unfollow(key)

    async def send(self, batch: Sequence[Utt]) -> None:
        keys = [self.keys.input(u.cid) for u in batch]
        payloads = stamp_batch(batch)
        # Our protocol: a writer rings the partition's doorbell (one entry per batch, carrying small entries).
        ids = await add_with_rings(self.redis, self.keys,
                                   [(key, payload, INPUT_MAXLEN) for key, payload in zip(keys, payloads, strict=True)])
        for u, entry_id in zip(batch, ids, strict=True):
            u.in_id_ms = id_ms(entry_id)

    async def read(self, block_ms: int) -> tuple[list[Observation], int]:
        """Like any client of the pipeline: wait on the doorbells, read the streams
        that rang (and every followed stream once a second, as the sweep)."""
        reply = await self._follower.read(block_ms)
        out: list[Observation] = []
        n = 0
        for key_b, entries in reply:
            cid = self._key_conv[key_b]
            for entry_id, fields in entries:
                n += 1
                raw = fields.get(b"d", b"")
                if _DONE_TAG in raw:
                    kind = DONE
                elif _FINAL_TAG in raw:
                    kind = MID
                elif _FAILED_TAG in raw:
                    kind = FAILED
                else:
                    continue
                out.append((kind, cid, json.loads(raw)["utterance_id"], id_ms(entry_id), None))
        return out, n

    async def aclose(self) -> None:
        await self._follower.aclose()


async def delete_prefix(redis: aioredis.Redis, prefix: str) -> int:
    """Delete every key of a prefix (the bench's own streams)."""
    n = 0
    batch: list[Any] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            n += int(await redis.unlink(*batch))
            batch = []
    if batch:
        n += int(await redis.unlink(*batch))
    return n
