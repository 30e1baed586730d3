"""What the Realtime session state machines share: the :class:`Send` action,
picking the sent client events out of a list of actions, and numbering the
client event ids a session state issues. Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared.realtime.client_events import ClientEvent


@dataclass(frozen=True, slots=True)
class Send:
    """Send this client event on the current connection."""

    event: ClientEvent


def sent_events(actions: Iterable[object]) -> list[ClientEvent]:
    """The client events among ``actions``, in order."""
    return [a.event for a in actions if isinstance(a, Send)]


class EventIds:
    """The ids of one session state's client events: ``evt_<kind>_<n>``, n
    counting every id it issued (so an ``error`` event names its cause)."""

    def __init__(self) -> None:
        self._issued = 0

    def new(self, kind: str) -> str:
        self._issued += 1
        return f"evt_{kind}_{self._issued}"
