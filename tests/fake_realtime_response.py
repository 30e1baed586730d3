"""One response of the fake Realtime server's conversation session.

``response.created`` goes out at once (before the server reads the next client
event, as the API orders it), then a task streams the answer: several
``response.output_text.delta`` then ``response.done`` (completed) with usage,
with the events the client does not model sent too (``response.output_item.added``
...). :meth:`FakeResponse.cancel` stops the deltas and ends it with a
``response.done`` of status ``cancelled`` carrying the output so far; that
partial assistant item stays in the conversation. Faults: rate limit (status
``failed``), a drop after the first delta, a stall after the first delta (only a
cancel ends it), expiry after N completed responses.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from tests.fake_realtime_script import answer_text

if TYPE_CHECKING:
    from tests.fake_realtime_session import FakeSession


class FakeResponse:
    def __init__(self, session: FakeSession, params: dict[str, Any]) -> None:
        self.session = session
        self.id = session.next_id("resp")
        self.base = {"object": "realtime.response", "id": self.id,
                     "output_modalities": params.get("output_modalities", ["audio"])}
        #: The assistant item once announced, and the text streamed in it so far.
        self.item: dict[str, Any] | None = None
        self.text = ""
        #: True once its response.done is on its way: a cancel then finds nothing active.
        self.ended = False
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return not self.ended

    async def start(self) -> None:
        await self.session.send({"type": "response.created",
                                 "response": {**self.base, "status": "in_progress", "output": []}})
        self._task = self.session.spawn(self._stream())

    async def cancel(self) -> None:
        """Stop the deltas; end with ``cancelled`` and the output so far."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.ended:  # it ended on its own while being stopped
            return
        s = self.session
        output: list[dict[str, Any]] = []
        if self.item is not None:
            partial = {**self.item, "status": "incomplete", "content": [{"type": "output_text", "text": self.text}]}
            s.items.append(partial)
            previous, s.last_item_id = s.last_item_id, partial["id"]
            await s.send({"type": "conversation.item.done", "previous_item_id": previous, "item": partial})
            output.append(partial)
        out_tokens = len(self.text.split())
        await self._done({"status": "cancelled", "status_details": {"type": "cancelled", "reason": "client_cancelled"},
                          "output": output, "usage": {"total_tokens": out_tokens, "input_tokens": 0,
                                                      "output_tokens": out_tokens}})

    async def _done(self, fields: dict[str, Any]) -> None:
        self.ended = True
        await self.session.send({"type": "response.done", "response": {**self.base, **fields}})

    async def _stream(self) -> None:
        s, f, rid = self.session, self.session.faults, self.id
        if f.rate_limit_responses > 0:
            f.rate_limit_responses -= 1
            await self._done({"status": "failed", "output": [], "usage": None, "status_details": {
                "type": "failed", "error": {
                    "type": "tokens", "code": "rate_limit_exceeded",
                    "message": "Rate limit reached for gpt-realtime in organization org-x on tokens per min."}}})
            return
        drop_now = (f.drop_after_responses is not None and s.record.responses >= f.drop_after_responses
                    and f.drop_budget > 0)
        if drop_now:
            f.drop_budget -= 1
        stall = f.stall_responses > 0
        if stall:
            f.stall_responses -= 1
        text = answer_text(s.last_user_text(), s.message_count())
        item_id = s.next_id("item")
        item = self.item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress",
                            "content": []}
        await s.send({"type": "conversation.item.added", "previous_item_id": s.last_item_id, "item": item})
        await s.send({"type": "response.output_item.added", "response_id": rid, "output_index": 0, "item": item})
        await s.send({"type": "response.content_part.added", "response_id": rid, "item_id": item_id,
                      "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": ""}})
        words = text.split(" ")
        pieces = [" ".join(words[i:i + 2]) + (" " if i + 2 < len(words) else "") for i in range(0, len(words), 2)]
        for n, piece in enumerate(pieces):
            # The frame is written before send() can yield: a cancel from here on finds it sent.
            self.text += piece
            await s.send({"type": "response.output_text.delta", "response_id": rid, "item_id": item_id,
                          "output_index": 0, "content_index": 0, "delta": piece})
            if drop_now and n == 0:
                await s.drop("drop_after_responses")
                return
            if stall and n == 0:
                await asyncio.Event().wait()  # until cancelled (or the connection ends)
            if f.delta_delay_s:
                await asyncio.sleep(f.delta_delay_s)
        done_item = {**item, "status": "completed", "content": [{"type": "output_text", "text": text}]}
        await s.send({"type": "response.output_text.done", "response_id": rid, "item_id": item_id,
                      "output_index": 0, "content_index": 0, "text": text})
        await s.send({"type": "response.content_part.done", "response_id": rid, "item_id": item_id,
                      "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": text}})
        await s.send({"type": "response.output_item.done", "response_id": rid, "output_index": 0,
                      "item": done_item})
        s.items.append(done_item)
        previous, s.last_item_id = s.last_item_id, item_id
        await s.send({"type": "conversation.item.done", "previous_item_id": previous, "item": done_item})
        in_tokens, out_tokens = s.message_count() * 5, len(words)
        await self._done({"status": "completed", "status_details": None, "output": [done_item], "usage": {
            "total_tokens": in_tokens + out_tokens, "input_tokens": in_tokens, "output_tokens": out_tokens,
            "input_token_details": {"text_tokens": in_tokens}}})
        s.record.responses += 1
        await s.send({"type": "rate_limits.updated", "rate_limits": [
            {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06},
            {"name": "tokens", "limit": 50000, "remaining": 49000, "reset_seconds": 1.2}]})
        if f.expire_after_responses is not None and s.record.responses >= f.expire_after_responses \
                and f.expire_budget > 0:
            f.expire_budget -= 1
            await s.expire()
