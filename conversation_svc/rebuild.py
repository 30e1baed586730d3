"""What a new conversation owner reads back after a takeover: the newest turns
of the history, and the user turns that wait for a ``response.request``. Both
walk the streams from their newest end, a page at a time: the cost is bounded
by what is kept, not by the streams' length."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from shared.bus.resp import xrange_entries
from shared.bus.retry import retry_forever
from shared.history import History, NewestTurns, UnansweredTail
from shared.models import Entry, EntryError, decode_fields
from shared.service import SessionContext

#: Entries read per XREVRANGE when a new owner rebuilds a conversation's history.
REBUILD_PAGE = 200


async def walk_back(redis: Any, key: str, add: Callable[[list[Entry]], bool]) -> None:
    """Feed ``add`` pages of a stream, newest first, until it returns True or the stream ends."""
    upper = "+"
    while True:
        rows = await retry_forever("rebuild history", partial(
            xrange_entries, redis, key, max=upper, count=REBUILD_PAGE, reverse=True))
        out: list[Entry] = []
        for _, fields in rows:
            try:
                out.append(decode_fields(fields))
            except EntryError:
                continue
        if add(out) or len(rows) < REBUILD_PAGE:
            return
        upper = "(" + rows[-1][0].decode()


async def rebuild_history(ctx: SessionContext, max_turns: int) -> History:
    """The done responses back to the newest ``max_turns`` answers, then the final
    transcripts (and requests, and truncations) back to theirs (``NewestTurns``)."""
    keys = ctx.keys
    collector = NewestTurns(max_turns)
    await walk_back(ctx.redis, keys.responses(ctx.conversation_id), collector.add_responses)
    if collector.needs_transcripts:
        await walk_back(ctx.redis, keys.transcripts(ctx.conversation_id), collector.add_transcripts)
    return collector.history()


async def rebuild_unanswered(ctx: SessionContext, history: History) -> list[tuple[str, str]]:
    """The user turns since the last answer that wait for a ``response.request``."""
    tail = UnansweredTail(history)
    await walk_back(ctx.redis, ctx.keys.transcripts(ctx.conversation_id), tail.add)
    return tail.turns()
