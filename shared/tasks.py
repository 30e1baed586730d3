"""asyncio helpers that every long-running part shares."""

from __future__ import annotations

import asyncio
from typing import Any

#: How long to wait for a cancelled task before cancelling it again.
RECANCEL_S = 0.1


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task and wait for it, without swallowing our own cancellation.

    The task is cancelled again until it has ended: on Python 3.11,
    ``asyncio.wait_for`` loses a cancellation that lands just as what it waits
    for completes, and redis-py sends every command through ``wait_for`` when a
    socket timeout is set (ours is), so a task cancelled at that moment would go
    on as if nothing happened (seen: a periodic chore left cancelling but asleep,
    and a worker's shutdown hung waiting for it)."""
    if task is None or task.done():
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=RECANCEL_S)  # raises only when we are cancelled ourselves
    if not task.cancelled():
        task.result()  # what it raised instead, as awaiting it would
