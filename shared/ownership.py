"""Ownership bookkeeping: which conversations this worker owns, by which
control entry, and how many session slots are free.

The truth lives in Redis: a conversation is owned by the consumer that holds
its ``conversation.started`` entry pending in the service's group of the
control stream. This table is the worker's own view of that, kept free of I/O
so the rules (capacity, refresh set, draining) are unit-tested alone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(slots=True)
class Claim:
    conversation_id: str
    control_key: str
    control_entry_id: str
    took_over: bool = False


@dataclass
class OwnershipTable:
    capacity: int
    claims: dict[str, Claim] = field(default_factory=dict)
    draining: bool = False

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("capacity must be at least 1")

    @property
    def free_slots(self) -> int:
        return max(0, self.capacity - len(self.claims))

    @property
    def accepting(self) -> bool:
        """Whether to ask for new conversations (read the control stream, run the reaper)."""
        return not self.draining and self.free_slots > 0

    def owns(self, conversation_id: str) -> bool:
        return conversation_id in self.claims

    def add(self, claim: Claim) -> None:
        if claim.conversation_id in self.claims:
            raise ValueError(f"conversation {claim.conversation_id} is already owned")
        # Going over capacity can happen only through a race the caller allowed
        # (a reaper claim and a read landing together); it is bounded by one read.
        self.claims[claim.conversation_id] = claim

    def remove(self, conversation_id: str) -> Claim | None:
        return self.claims.pop(conversation_id, None)

    def by_control_key(self) -> dict[str, list[str]]:
        """Control entry ids to refresh, grouped by control stream (one call each)."""
        grouped: dict[str, list[str]] = defaultdict(list)
        for claim in self.claims.values():
            grouped[claim.control_key].append(claim.control_entry_id)
        return dict(grouped)

    def lose(self, control_key: str, entry_ids: list[str]) -> list[str]:
        """Drop claims that a peer took over; return their conversation ids."""
        lost = set(entry_ids)
        gone = [
            c.conversation_id
            for c in self.claims.values()
            if c.control_key == control_key and c.control_entry_id in lost
        ]
        for conversation_id in gone:
            del self.claims[conversation_id]
        return gone
