"""Per-key quotas of the gateway.

- ``TokenBucket``: pure, the clock injected.
- ``KeyQuotas``: event rate, event size and audio seconds per key_id, held in
  this process: each gateway instance enforces them on its own traffic only
  (N instances let a key through up to N times the rate). Rates are cheap to
  check per event and a key's connections usually stay on one instance; the
  limit that must hold across instances is the session count, below.
- ``SessionSlots``: concurrent sessions per key_id across every gateway
  instance, in Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from shared.keys import Keys

INVALID_REQUEST = "invalid_request_error"
EVENT_TOO_LARGE = "event_too_large"
RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one API key may use. The event bucket holds one second's worth of
    events (``events_per_s``, at least 1); the audio bucket one minute's worth of
    audio (``audio_s_per_min`` seconds), refilled continuously."""

    max_sessions: int
    events_per_s: float
    audio_s_per_min: float
    max_event_bytes: int

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1 (got {self.max_sessions})")
        if not self.events_per_s > 0 or not self.audio_s_per_min > 0:
            raise ValueError("events_per_s and audio_s_per_min must be positive")
        if self.max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be at least 1 (got {self.max_event_bytes})")


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate_per_s``; starts full. Pure:
    every call says what time it is, and a clock that steps back refills nothing."""

    __slots__ = ("rate_per_s", "burst", "_tokens", "_updated")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if not rate_per_s > 0 or not burst > 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._updated: float | None = None

    def _refill(self, now: float) -> None:
        if self._updated is None:
            self._updated = now
        elif now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate_per_s)
            self._updated = now

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if there are that many; False (taking none) if not."""
        self._refill(now)
        if amount <= self._tokens:
            self._tokens -= amount
            return True
        return False

    def retry_after(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` tokens are there (0 if they are now; infinite if
        ``amount`` exceeds the burst, which no wait satisfies)."""
        self._refill(now)
        if amount > self.burst:
            return float("inf")
        return max(0.0, (amount - self._tokens) / self.rate_per_s)

    def is_full(self, now: float) -> bool:
        """Full at ``now``: forgetting this bucket and starting a new one later
        changes nothing, since a new bucket starts full."""
        self._refill(now)
        return self._tokens >= self.burst


@dataclass(frozen=True, slots=True)
class QuotaVerdict:
    """``ok``, or why not: a GA error's ``type``, ``code`` and a human ``message``,
    and how long the caller should wait (0 when waiting does not help)."""

    ok: bool
    type: str = ""
    code: str = ""
    message: str = ""
    retry_after_s: float = 0.0

    def error(self, event_id: str | None = None) -> dict[str, object]:
        """The ``error`` object of a GA ``error`` server event."""
        return {"type": self.type, "code": self.code, "message": self.message, "param": None, "event_id": event_id}


ALLOWED = QuotaVerdict(ok=True)


@dataclass(slots=True)
class _KeyBuckets:
    events: TokenBucket
    audio: TokenBucket


class KeyQuotas:
    """Event and audio rates per key_id, in this process only (one gateway's view
    of the key's traffic: see the module docstring).

    Each key has its own buckets, so one key's flood never drains another's.
    Memory stays bounded by the keys active lately: at most once per
    ``sweep_every_s`` the buckets that have refilled completely are dropped
    (losslessly: a key seen again gets full buckets, which is what it had)."""

    def __init__(self, limits: Limits, sweep_every_s: float = 60.0) -> None:
        self.limits = limits
        self._sweep_every_s = sweep_every_s
        self._buckets: dict[str, _KeyBuckets] = {}
        self._last_sweep: float | None = None

    def __len__(self) -> int:
        """How many keys have buckets now."""
        return len(self._buckets)

    def allow_event(self, key_id: str, size_bytes: int, now: float) -> QuotaVerdict:
        """May this key send one more client event of ``size_bytes`` now? An
        oversized event is refused without spending the key's rate."""
        if size_bytes > self.limits.max_event_bytes:
            return QuotaVerdict(
                ok=False, type=INVALID_REQUEST, code=EVENT_TOO_LARGE,
                message=f"event of {size_bytes} bytes exceeds the limit of {self.limits.max_event_bytes} bytes",
            )
        bucket = self._for(key_id, now).events
        if bucket.take(1, now):
            return ALLOWED
        wait_s = bucket.retry_after(1, now)
        return QuotaVerdict(
            ok=False, type=INVALID_REQUEST, code=RATE_LIMIT_EXCEEDED,
            message=f"rate limit of {self.limits.events_per_s:g} events per second exceeded; "
                    f"retry in {wait_s:.2f} s",
            retry_after_s=wait_s,
        )

    def allow_audio(self, key_id: str, seconds: float, now: float) -> QuotaVerdict:
        """May this key send ``seconds`` more of audio now?"""
        bucket = self._for(key_id, now).audio
        if bucket.take(seconds, now):
            return ALLOWED
        wait_s = bucket.retry_after(seconds, now)
        limit = f"audio limit of {self.limits.audio_s_per_min:g} s per minute exceeded"
        if wait_s == float("inf"):
            return QuotaVerdict(ok=False, type=INVALID_REQUEST, code=RATE_LIMIT_EXCEEDED,
                                message=f"{limit}: {seconds:g} s in one event is more than a minute's allowance")
        return QuotaVerdict(ok=False, type=INVALID_REQUEST, code=RATE_LIMIT_EXCEEDED,
                            message=f"{limit}; retry in {wait_s:.2f} s", retry_after_s=wait_s)

    def _for(self, key_id: str, now: float) -> _KeyBuckets:
        self._maybe_sweep(now)
        buckets = self._buckets.get(key_id)
        if buckets is None:
            limits = self.limits
            buckets = _KeyBuckets(
                events=TokenBucket(limits.events_per_s, max(1.0, limits.events_per_s)),
                audio=TokenBucket(limits.audio_s_per_min / 60.0, limits.audio_s_per_min),
            )
            self._buckets[key_id] = buckets
        return buckets

    def _maybe_sweep(self, now: float) -> None:
        if self._last_sweep is None:
            self._last_sweep = now
            return
        if now - self._last_sweep < self._sweep_every_s:
            return
        self._last_sweep = now
        idle = [k for k, b in self._buckets.items() if b.events.is_full(now) and b.audio.is_full(now)]
        for key_id in idle:
            del self._buckets[key_id]


# Atomic so that two gateways admitting the same key at once cannot both take
# the last slot. Members are session ids scored by their expiry (ms); a member
# whose gateway died stops being refreshed and expires. The key's own TTL only
# guards against a leaked key: the scores are the real expiry.
#   KEYS[1] the key's session set; ARGV: now_ms, expires_ms, limit, session_id, key_ttl_ms
_ACQUIRE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[4]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# Extends a held slot; an expired or released one is not revived (0): its place
# may already be someone else's.
#   KEYS[1] the key's session set; ARGV: now_ms, expires_ms, session_id, key_ttl_ms
_REFRESH_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


class SessionSlots:
    """Concurrent sessions per key_id, shared by every gateway instance through
    Redis: one sorted set per key (``Keys.gateway_sessions``), members the
    session ids, scores their expiry.

    Call order: ``acquire`` when a session opens (False: the key is at
    ``limits.max_sessions``, refuse it), ``refresh`` well within ``ttl_s`` while it
    lives (every ``ttl_s / 3``, say), ``release`` when it ends. A gateway killed
    without releasing frees its slots ``ttl_s`` after its last refresh.

    Expiry is judged by the gateway's ``clock`` (unix seconds), so the instances'
    clocks must agree to well within ``ttl_s`` (NTP does)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        limits: Limits,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive (got {ttl_s})")
        self._redis = redis
        self._keys = keys
        self._limits = limits
        self._ttl_ms = int(ttl_s * 1000)
        self._clock = clock
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._refresh = redis.register_script(_REFRESH_LUA)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def acquire(self, key_id: str, session_id: str) -> bool:
        """Take a slot for ``session_id``; False if the key has none free.
        Idempotent: acquiring a slot already held refreshes it."""
        now_ms = self._now_ms()
        taken = await self._acquire(
            keys=[self._keys.gateway_sessions(key_id)],
            args=[now_ms, now_ms + self._ttl_ms, self._limits.max_sessions, session_id, 2 * self._ttl_ms],
        )
        return bool(taken)

    async def refresh(self, key_id: str, session_id: str) -> bool:
        """Push the slot's expiry ``ttl_s`` ahead; False if it had already expired
        or been released (the session should then acquire again or end)."""
        now_ms = self._now_ms()
        kept = await self._refresh(
            keys=[self._keys.gateway_sessions(key_id)],
            args=[now_ms, now_ms + self._ttl_ms, session_id, 2 * self._ttl_ms],
        )
        return bool(kept)

    async def release(self, key_id: str, session_id: str) -> bool:
        """Free the slot; False if it was not held (released twice, or expired)."""
        removed = await self._redis.zrem(self._keys.gateway_sessions(key_id), session_id)
        return bool(removed)

    async def in_use(self, key_id: str) -> int:
        """Slots of the key held and unexpired now (for metrics and tests)."""
        count = await self._redis.zcount(self._keys.gateway_sessions(key_id), f"({self._now_ms()}", "+inf")
        return int(count)
