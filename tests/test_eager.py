"""shared.eager.start_eagerly: runs a coroutine now, and a Task carries on
only when it suspends (results, exceptions and cancellation reach it)."""

from __future__ import annotations

import asyncio

import pytest

from shared.eager import start_eagerly


async def test_a_coroutine_that_never_waits_runs_at_once_without_a_task() -> None:
    seen: list[str] = []

    async def work() -> None:
        seen.append("ran")

    assert start_eagerly(work()) is None
    assert seen == ["ran"]


async def test_one_that_waits_runs_its_start_now_and_the_rest_in_a_task() -> None:
    seen: list[str] = []
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def work() -> str:
        seen.append("start")
        value = await gate
        await asyncio.sleep(0)
        seen.append(value)
        return value * 2

    task = start_eagerly(work(), name="w")
    assert task is not None and task.get_name() == "w"
    assert seen == ["start"]
    gate.set_result("x")
    assert await task == "xx"
    assert seen == ["start", "x"]


async def test_errors_and_cancellation_reach_the_coroutine() -> None:
    cleaned: list[str] = []

    async def fails_at_once() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError):
        start_eagerly(fails_at_once())

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    task = start_eagerly(fails_later())
    assert task is not None
    with pytest.raises(KeyError):
        await task

    async def waits_forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("finally")

    task = start_eagerly(waits_forever())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"]
