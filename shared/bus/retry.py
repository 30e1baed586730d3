"""Which Redis errors are worth waiting out, and the one retry helper.

``is_transient`` is the policy (a pure function, the websockets pattern):
True means "Redis is away for now": retry with ``shared.backoff`` delays.
``retry_forever`` applies it to one call; the writer's flush loop and the
runtime's periodic loops apply the same policy to their own steps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.backoff import backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors that mean "Redis is away for now": retry with backoff.
#: On a cluster: no reachable node serves a slot (a master is down, its replica not yet
#: promoted), or redirections did not settle (a slot still moving).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    ClusterError,
    SlotNotCoveredError,
)

#: Error replies of a Redis that is up but cannot serve for now: loading its AOF after a
#: restart (LOADING), full memory (OOM, until memory is freed or raised), a failed snapshot
#: that blocks writes (MISCONF), a replica or a demoted master (READONLY), a busy script
#: (BUSY), a cluster without a reachable master or a slot being migrated. Nothing of the
#: refused command ran: it is retried whole. redis-py turns most of these into classes of
#: their own (and drops the code from the message); the rest are matched by their code.
#: WRONGTYPE and the like are not here: waiting does not fix them, and each caller gives
#: them a path of their own (a dead letter).
TRANSIENT_REPLY_CLASSES: tuple[type[BaseException], ...] = (
    BusyLoadingError, OutOfMemoryError, ReadOnlyError, TryAgainError, ClusterDownError, MasterDownError,
    AskError,  # MOVED too (a subclass): redirections shared.bus.nodes gave up following
)
#: The codes redis-py leaves in a plain ResponseError (with their space: BUSYGROUP is no BUSY).
#: UNBLOCKED: a blocking read on a master that a failover just made a replica.
TRANSIENT_REPLIES = ("MISCONF ", "BUSY ", "UNBLOCKED ")
#: The ACL refused the command (NOPERM): the deployment's users do not match the code (an
#: ACL file older than the code, one made for another KEY_PREFIX, a user given the wrong
#: REDIS_URL). Nothing of the command ran. Waited out like the refusals above, but loudly
#: (an error line naming the refusal, /readyz 503 with it): an operator fixes the ACL
#: (``ACL LOAD``, no restart) and the work goes on where it stopped. Dropping the work, or
#: dead-lettering it, would lose it for a configuration mistake. (A refusal inside a Lua
#: program fails that one op: see shared/bus/writer.py.)
ACL_REFUSALS: tuple[type[BaseException], ...] = (NoPermissionError,)


def is_transient(exc: BaseException) -> bool:
    """True: nothing of the command ran and waiting (or an operator) can fix it: retry."""
    if isinstance(exc, TRANSIENT_ERRORS + TRANSIENT_REPLY_CLASSES + ACL_REFUSALS):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(TRANSIENT_REPLIES)


def failure_reason(exc: BaseException) -> str:
    """Why Redis cannot be used now, for /readyz and the log (a transient ``exc``):
    unreachable, refusing this user (the ACL), or refusing for now (full, loading...)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return "redis unreachable"
    if isinstance(exc, ACL_REFUSALS):
        return f"redis refuses this user (NOPERM: {exc})"
    return f"redis refuses writes ({type(exc).__name__})"


def log_failure(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """The one line of an outage's start: an ACL refusal is an error (an operator must act),
    anything else a warning; both say what failed and why (the error's text carries no
    secret: redis-py names host and port, never a password)."""
    if isinstance(exc, ACL_REFUSALS):
        logger.error("%s: %s; retrying until the ACL allows it", what, failure_reason(exc))
    else:
        logger.warning("%s: redis unavailable (%s: %s); retrying", what, type(exc).__name__, exc)


async def retry_forever(
    what: str,
    call: Callable[[], Awaitable[T]],
    on_error: Callable[[BaseException], None] | None = None,
) -> T:
    """Run ``call`` until it succeeds, backing off on transient Redis errors;
    any other error propagates. ``what`` names the step in the log lines."""
    delays = backoff()
    failed = False
    while True:
        try:
            result = await call()
            if failed:
                log.info("%s: redis is back", what)
            return result
        except Exception as exc:
            if not is_transient(exc):
                raise
            if on_error:
                on_error(exc)
            if not failed:
                log_failure(log, what, exc)
            failed = True
            await asyncio.sleep(next(delays))


