"""cancel_and_wait ends a task even when Python loses the cancellation (no I/O)."""

from __future__ import annotations

import asyncio

import pytest

from shared.tasks import cancel_and_wait


async def test_a_cancellation_lost_by_wait_for_is_sent_again() -> None:
    """On Python 3.11, a task cancelled as the future its ``wait_for`` waits on
    completes goes on as if it had not been (redis-py sends every command that way).
    Here the cancel lands at exactly that moment: the inner wait has ended and the
    chore has not woken up yet."""
    gate = asyncio.Event()
    went_on = asyncio.Event()

    async def chore() -> None:
        await asyncio.wait_for(gate.wait(), 10)
        went_on.set()
        await asyncio.sleep(3600)  # a periodic chore's sleep

    task = asyncio.create_task(chore())
    await asyncio.sleep(0)  # the chore waits in wait_for
    gate.set()
    await asyncio.sleep(0)  # the inner wait completes
    async with asyncio.timeout(5):
        await cancel_and_wait(task)  # its first cancel lands now, synchronously
    assert task.cancelled()
    print("the first cancellation was lost" if went_on.is_set() else "this Python kept the first cancellation")


async def test_our_own_cancellation_is_not_swallowed() -> None:
    stubborn = True

    async def child() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not stubborn:
                    raise

    task = asyncio.create_task(child())
    waiter = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    stubborn = False
    await cancel_and_wait(task)
    assert task.cancelled()
