"""asyncio helpers that every long-running part shares."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

#: How long a cancelled task may run on before it is cancelled again. Python 3.11's
#: ``asyncio.wait_for`` loses a cancellation that arrives just as its inner call
#: completes (it returns the result instead; fixed in 3.12), and redis-py sends every
#: command through ``wait_for`` when a socket timeout is set: a chore cancelled in
#: that instant went on looping, and a shutdown waited for it forever.
RECANCEL_S = 1.0


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task and wait for it, without swallowing our own cancellation; a task
    that lost its cancellation (see RECANCEL_S) is cancelled again."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        while not (await asyncio.wait([task], timeout=RECANCEL_S))[0]:
            task.cancel()
        await task  # done: what it ended with (a CancelledError is suppressed)
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError
