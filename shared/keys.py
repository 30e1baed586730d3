"""Every Redis key name, in one place.

Keys of one conversation carry a partition hash tag (``{p}``) so that on Redis
Cluster they and their partition's control stream share one hash slot: a
worker then reads all the streams it owns in one partition with one
XREADGROUP. With ``partitions == 1`` (the default) every key is in one slot.

Pure module.
"""

from __future__ import annotations

import binascii
import functools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

#: What a KEY_PREFIX may be: no glob character (the ACL's key patterns start with it), no ``:``.
KEY_PREFIX_PATTERN = r"^[A-Za-z0-9_.-]{1,32}$"

TRANSCRIBER_GROUP = "transcriber"
CONVERSATION_GROUP = "conversation"


def partition_of(conversation_id: str, partitions: int) -> int:
    """Stable partition of a conversation (crc32: the same in every process and language)."""
    if partitions <= 1:
        return 0
    return zlib.crc32(conversation_id.encode()) % partitions


#: Redis Cluster's hash slots.
CLUSTER_SLOTS = 16384


def key_slot(tag: str) -> int:
    """The cluster slot of a hash tag (CRC16/XMODEM mod 16384, as CLUSTER KEYSLOT)."""
    return binascii.crc_hqx(tag.encode(), 0) % CLUSTER_SLOTS


@functools.lru_cache(maxsize=4096)
def partition_tag(partition: int, partitions: int) -> str:
    """The hash tag of a partition's keys: ``<p>``, or ``<p>.<n>`` with the smallest n
    that puts the tag's slot in the p-th of ``partitions`` equal ranges of slots.

    Plain ``{0}``, ``{1}``... land wherever CRC16 puts them: 12 of them over 3
    masters may give one master 6 partitions and another 2. A cluster splits its
    slots into contiguous ranges per master, so tags whose slots are evenly spaced
    spread evenly over the masters (4 per master for 12 partitions on 3 masters),
    and still spread after a reshard moves whole ranges. Deterministic: every
    process and language computes the same tags."""
    low = partition * CLUSTER_SLOTS // partitions
    high = (partition + 1) * CLUSTER_SLOTS // partitions
    tag = str(partition)
    n = 0
    while not low <= key_slot(tag) < high:
        n += 1
        tag = f"{partition}.{n}"
    return tag


def partition_of_tag(tag: str) -> int:
    """``3.17`` (or ``3``) -> 3."""
    return int(tag.partition(".")[0])


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "vab"
    partitions: int = 1

    def control(self, partition: int) -> str:
        return f"{self.prefix}:conversations:{{{self.tag(partition)}}}"

    def tag(self, partition: int) -> str:
        """The hash tag of a partition (``partition_tag``)."""
        return partition_tag(partition, self.partitions)

    def controls(self) -> list[str]:
        return [self.control(p) for p in range(self.partitions)]

    def control_for(self, conversation_id: str) -> str:
        return self.control(partition_of(conversation_id, self.partitions))

    def conv_prefix(self, conversation_id: str) -> str:
        """The part of a conversation's key names before ``:<kind>``."""
        return self._conv(conversation_id)

    def _conv(self, conversation_id: str) -> str:
        p = partition_of(conversation_id, self.partitions)
        return f"{self.prefix}:conv:{{{self.tag(p)}}}:{conversation_id}"

    def input(self, conversation_id: str) -> str:
        return self._conv(conversation_id) + ":input"

    def transcripts(self, conversation_id: str) -> str:
        return self._conv(conversation_id) + ":transcripts"

    def responses(self, conversation_id: str) -> str:
        return self._conv(conversation_id) + ":responses"

    def conversation_keys(self, conversation_id: str) -> list[str]:
        return [
            self.input(conversation_id),
            self.transcripts(conversation_id),
            self.responses(conversation_id),
        ]

    def dead(self, partition: int = 0) -> str:
        """Dead letters of one partition (same slot as the streams they came from)."""
        return f"{self.prefix}:dead:{{{self.tag(partition)}}}"

    def deads(self) -> list[str]:
        return [self.dead(p) for p in range(self.partitions)]

    def bell(self, partition: int, kind: str) -> str:
        """A partition's doorbell for one stream kind: "these conversations' <kind>
        streams have new entries" (``control``: the control stream has). One bell
        per kind, so a reader wakes only for what it reads."""
        return f"{self.prefix}:bell:{{{self.tag(partition)}}}:{kind}"

    def bells(self, kinds: Sequence[str]) -> list[str]:
        return [self.bell(p, kind) for p in range(self.partitions) for kind in kinds]

    def bell_for_key(self, key: str) -> str:
        """The bell that a write to ``key`` (a conversation or control stream) rings."""
        kind = data_kind_of_key(key) or CONTROL_KIND
        return self.bell(self.partition_of_key(key), kind)

    def stats(self, partition: int = 0) -> str:
        """A short rolling log of answered utterances' timings, for the monitor."""
        return f"{self.prefix}:stats:{{{self.tag(partition)}}}"

    def stats_keys(self) -> list[str]:
        return [self.stats(p) for p in range(self.partitions)]

    def gateway_conversation(self, conversation_id: str) -> str:
        """A gateway conversation's hash: its API key's fingerprint, its session
        settings and the stream ids its client has received (for a resume)."""
        return self._conv(conversation_id).replace(":conv:", ":gw:", 1)

    def worker(self, service: str, worker_id: str) -> str:
        """A worker's heartbeat hash (expires when the worker stops refreshing it)."""
        return f"{self.prefix}:worker:{service}:{worker_id}"

    def worker_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    def workers(self, service: str) -> str:
        """One service's worker registry (sorted set: worker id scored by its last
        heartbeat, ms): where a worker finds its peers' heartbeats without a SCAN."""
        return f"{self.prefix}:workers:{service}"

    def gateway_sessions(self, key_id: str) -> str:
        """An API key's open gateway sessions across all gateway instances (sorted
        set: session id scored by its expiry, ms). ``key_id`` is the key's
        fingerprint, never the key."""
        return f"{self.prefix}:gw:sessions:{key_id}"

    def partition_of_key(self, key: str) -> int:
        start = key.index("{") + 1
        return partition_of_tag(key[start : key.index("}", start)])

    @property
    def patterns(self) -> KeyPatterns:
        return KeyPatterns(self.prefix)


@dataclass(frozen=True, slots=True)
class KeyPatterns:
    """Glob patterns of the key families ``Keys`` names, any partition and any
    conversation: what the Redis ACL users are granted (``shared.acl``). Redis's glob
    treats ``{`` and ``}`` as plain characters, so ``{*}`` matches any partition tag;
    a conversation id holds no ``:``, so ``*`` stays inside its segment."""

    prefix: str = "vab"

    def control(self) -> str:
        return f"{self.prefix}:conversations:{{*}}"

    def stream(self, kind: str) -> str:
        """Every conversation's ``kind`` stream (``input``, ``transcripts``, ``responses``)."""
        return f"{self.prefix}:conv:{{*}}:*:{kind}"

    def dead(self) -> str:
        return f"{self.prefix}:dead:{{*}}"

    def bell(self, kind: str) -> str:
        return f"{self.prefix}:bell:{{*}}:{kind}"

    def stats(self) -> str:
        return f"{self.prefix}:stats:{{*}}"

    def worker(self, service: str) -> str:
        """One service's heartbeat hashes."""
        return f"{self.prefix}:worker:{service}:*"

    def workers(self, service: str) -> str:
        """One service's worker registry (a single key)."""
        return f"{self.prefix}:workers:{service}"

    def gateway(self) -> str:
        """The gateway's own state (hashes, sorted sets), under ``<prefix>:gw:``."""
        return f"{self.prefix}:gw:*"

    def everything(self) -> str:
        return f"{self.prefix}:*"


#: Stream kinds a doorbell announces, and the field name used for the control stream.
DATA_KINDS = ("input", "transcripts", "responses")
CONTROL_KIND = "control"


def conversation_of_key(key: str) -> str | None:
    """``vab:conv:{0}:abc:input`` -> ``abc`` (None for any other key)."""
    parts = key.split(":")
    return parts[-2] if len(parts) >= 5 and parts[-4] == "conv" else None


def data_kind_of_key(key: str) -> str | None:
    """``...:input`` -> ``input``; None when the key is no conversation stream."""
    kind = key.rsplit(":", 1)[-1]
    return kind if kind in DATA_KINDS and conversation_of_key(key) is not None else None


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


@functools.lru_cache(maxsize=65_536)
def ring_target(key: str) -> tuple[str, str, str] | None:
    """(partition tag, kind, conversation id) of a conversation stream, else None:
    what a write to ``key`` rings. Cached: a flush asks this for every key it writes to."""
    kind = data_kind_of_key(key)
    cid = conversation_of_key(key)
    if kind is None or cid is None:
        return None
    return hash_tag(key), kind, cid
