"""Start a coroutine eagerly: run it now, and make a Task only if it suspends.

Python 3.12 has this built in (``asyncio.eager_task_factory``); this is the
same idea for 3.11. A worker kicks one drain coroutine per conversation with
new entries; with the simulated and echo engines (and any handler whose work
is already at hand) the drain finishes without ever waiting, so a Task per
kick was pure overhead: creating, scheduling and finishing it cost more than
the work (py-spy: ``create_task`` alone was 5 % of a transcriber's CPU).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def start_eagerly(coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T] | None:
    """Run ``coro`` up to its first suspension. None if it finished (its result
    is dropped: use it for coroutines that report through side effects), else
    a Task that runs the rest. An exception raised before the first suspension
    propagates to the caller, as a direct call would."""
    try:
        first = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_rest(coro, first), name=name)


async def _rest(coro: Coroutine[Any, Any, T], first: Any) -> T:
    result: T = await _Resume(coro, first)
    return result


class _Resume:
    """Hands a suspended coroutine's pending yield to the Task driving it, and
    relays what the Task sends or throws back into it (results, cancellation)."""

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self._coro, self._first
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value
