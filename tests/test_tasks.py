"""cancel_and_wait: a task that loses its cancellation (Python 3.11's wait_for does
that when its call completes in the same instant, and redis-py sends every command
through wait_for) is cancelled again instead of being waited for forever; what a
task raised still reaches the caller, and the caller's own cancellation is kept."""

from __future__ import annotations

import asyncio

import pytest

from shared import tasks
from shared.tasks import cancel_and_wait


async def _loses_its_first_cancellation(lost: list[int]) -> None:
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if lost:
                raise
            lost.append(1)  # as wait_for in 3.11: the cancellation is gone, the loop goes on


async def test_a_task_that_lost_its_cancellation_is_cancelled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "RECANCEL_S", 0.01)
    lost: list[int] = []
    task = asyncio.create_task(_loses_its_first_cancellation(lost))
    await asyncio.sleep(0)
    async with asyncio.timeout(60):  # the old cancel_and_wait waited forever here
        await cancel_and_wait(task)
    assert lost == [1] and task.cancelled()


async def test_what_the_task_raised_reaches_the_caller() -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)


async def test_the_callers_own_cancellation_is_kept() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # a cleanup that takes a while
            raise

    child = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cancel_and_wait(child))
    await asyncio.sleep(0)  # the waiter now waits for the child's cleanup
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await asyncio.gather(child, return_exceptions=True)
    assert child.cancelled()


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
