"""What lets a client resume its conversation on any gateway: one small Redis
hash per conversation, ``<prefix>:gw:{p}:<id>``.

- ``owner``: the fingerprint of the API key that started it (another key cannot
  resume it);
- ``session``: the session settings (JSON), so a resumed socket keeps them;
- ``transcripts`` / ``responses``: the last entry id of each stream whose event
  the client was sent in full (a response counts once its ``response.done`` went
  out): a resumed socket reads on from there, so an answer produced while the
  client was away is delivered once, and one cut off mid-way is sent again whole.

The hash expires ``ttl_s`` after its last write: a conversation not resumed by
then is gone for the gateway (the workers close it when it idles).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from shared.keys import Keys


@dataclass(frozen=True, slots=True)
class Resumable:
    owner: str
    session: dict[str, Any]
    transcripts_since: str
    responses_since: str


class ResumeStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s

    async def create(self, conversation_id: str, owner: str, session: dict[str, Any]) -> None:
        """Record a new conversation (its id is fresh and random: nothing to overwrite)."""
        key = self.keys.gateway_conversation(conversation_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping={"owner": owner, "session": json.dumps(session), "transcripts": "0-0",
                                "responses": "0-0"})
        pipe.expire(key, self.ttl_s)
        await pipe.execute()

    async def load(self, conversation_id: str) -> Resumable | None:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.gateway_conversation(conversation_id)))
        if not raw or b"owner" not in raw or b"session" not in raw:
            return None
        return Resumable(owner=raw[b"owner"].decode(), session=json.loads(raw[b"session"]),
                         transcripts_since=raw.get(b"transcripts", b"0-0").decode(),
                         responses_since=raw.get(b"responses", b"0-0").decode())

    async def save_session(self, conversation_id: str, session: dict[str, Any]) -> None:
        key = self.keys.gateway_conversation(conversation_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, "session", json.dumps(session))
        pipe.expire(key, self.ttl_s)
        await pipe.execute()

    async def delivered(self, conversation_id: str, stream_kind: str, entry_id: str) -> None:
        """The client has been sent everything of ``stream_kind`` up to ``entry_id``."""
        key = self.keys.gateway_conversation(conversation_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, stream_kind, entry_id)
        pipe.expire(key, self.ttl_s)
        await pipe.execute()

    async def forget(self, conversation_id: str) -> None:
        await self.redis.delete(self.keys.gateway_conversation(conversation_id))
