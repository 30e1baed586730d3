"""What one Redis Cluster node says about the cluster, parsed: its ``CLUSTER NODES``
table and its ``CLUSTER INFO`` fields. Pure text parsing (no client, no I/O), so the
harness in ``shared.redis_cluster`` can compare the views of several nodes: a cluster
is settled only when every live node tells the same story.

The ``CLUSTER NODES`` line format (Redis 7.0, Valkey 8) is
``<id> <ip:port@cport[,hostname]> <flags> <master id or -> <ping-sent> <pong-recv>
<config-epoch> <link-state> <slot> <slot> ...`` where a slot is ``N`` or ``N-M``, and
``[N->-id]`` / ``[N-<-id]`` mark a slot being migrated (not owned yet: skipped here).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Hash slots of a Redis Cluster (fixed by the protocol).
SLOTS = 16384

SlotRange = tuple[int, int]  # first and last slot, both included


@dataclass(frozen=True)
class NodeEntry:
    """One line of ``CLUSTER NODES``: one node as the answering node sees it."""

    node_id: str
    flags: frozenset[str]
    master_id: str | None  # the master of a replica; None for a master
    slots: tuple[SlotRange, ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def is_replica(self) -> bool:
        return "slave" in self.flags

    @property
    def is_myself(self) -> bool:
        return "myself" in self.flags

    @property
    def failing(self) -> bool:
        """Flagged as failed (``fail``), suspected (``fail?``), or not reachable at all yet."""
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})

    def owns(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)

    @property
    def slot_count(self) -> int:
        return sum(last - first + 1 for first, last in self.slots)


def _slot_range(field: str) -> SlotRange | None:
    if field.startswith("["):  # a slot in migration: the answering node does not own it yet
        return None
    first, _, last = field.partition("-")
    return int(first), int(last or first)


def parse_nodes(text: str) -> dict[str, NodeEntry]:
    """``CLUSTER NODES`` by node id. Nodes still in handshake are left out: their id is
    a temporary one that the MEET replaces with the node's real id."""
    entries: dict[str, NodeEntry] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = frozenset(fields[2].split(","))
        if "handshake" in flags:
            continue
        slots = tuple(r for r in (_slot_range(f) for f in fields[8:]) if r is not None)
        master_id = None if fields[3] == "-" else fields[3]
        entries[fields[0]] = NodeEntry(fields[0], flags, master_id, slots)
    return entries


def myself(entries: dict[str, NodeEntry]) -> NodeEntry:
    for entry in entries.values():
        if entry.is_myself:
            return entry
    raise ValueError("CLUSTER NODES without a 'myself' line")


def parse_info(text: str) -> dict[str, str]:
    """``CLUSTER INFO``'s ``name:value`` lines."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep:
            fields[name] = value
    return fields


def even_slot_ranges(masters: int) -> list[SlotRange]:
    """The slots split into ``masters`` contiguous ranges of (nearly) equal size."""
    if not 1 <= masters <= SLOTS:
        raise ValueError(f"masters must be within 1..{SLOTS}, not {masters}")
    return [(i * SLOTS // masters, (i + 1) * SLOTS // masters - 1) for i in range(masters)]


def slot_owners(entries: dict[str, NodeEntry]) -> dict[SlotRange, str]:
    """Each slot range a master serves, by the id of that master (one node's view)."""
    return {r: e.node_id for e in entries.values() if e.is_master for r in e.slots}
