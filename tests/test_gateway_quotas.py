"""Gateway rate quotas: token buckets and per-key verdicts, with an injected clock (no I/O)."""

from __future__ import annotations

import math

import pytest

from gateway_svc.quotas import KeyQuotas, Limits, QuotaVerdict, TokenBucket

# Times in binary fractions (0.25, 0.125 ...) so refills add up exactly.
T0 = 1024.0
LIMITS = Limits(max_sessions=2, events_per_s=10, audio_s_per_min=60, max_event_bytes=1000)


# --- TokenBucket -----------------------------------------------------------------


def test_bucket_starts_full_and_refuses_past_its_burst() -> None:
    bucket = TokenBucket(rate_per_s=2, burst=5)
    assert all(bucket.take(1, T0) for _ in range(5))
    assert not bucket.take(1, T0)


def test_refused_take_spends_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=5)
    assert bucket.take(3, T0)
    assert not bucket.take(3, T0)
    assert bucket.take(2, T0)


def test_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate_per_s=2, burst=5)
    assert bucket.take(5, T0)
    assert not bucket.take(1, T0 + 0.25)  # 0.5 tokens back
    assert bucket.take(1, T0 + 0.5)  # 1.0
    assert not bucket.take(6, T0 + 1000)  # capped at the burst: 5, not 2000
    assert bucket.take(5, T0 + 1000)


def test_retry_after_says_when_the_tokens_are_back() -> None:
    bucket = TokenBucket(rate_per_s=4, burst=8)
    assert bucket.retry_after(1, T0) == 0.0
    assert bucket.take(8, T0)
    assert bucket.retry_after(2, T0) == pytest.approx(0.5)
    assert bucket.retry_after(2, T0 + 0.25) == pytest.approx(0.25)
    assert not bucket.take(2, T0 + 0.375)
    assert bucket.take(2, T0 + 0.5)


def test_more_than_the_burst_never_fits() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=3)
    assert not bucket.take(4, T0 + 10_000)
    assert bucket.retry_after(4, T0) == math.inf


def test_a_clock_stepping_back_refills_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=2)
    assert bucket.take(2, T0)
    assert not bucket.take(1, T0 - 100)
    assert not bucket.take(1, T0 + 0.5)  # measured from T0, not from T0 - 100
    assert bucket.take(1, T0 + 1)


def test_is_full() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=2)
    assert bucket.is_full(T0)
    assert bucket.take(1, T0)
    assert not bucket.is_full(T0 + 0.5)
    assert bucket.is_full(T0 + 1)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (-1, 1)])
def test_bucket_needs_a_positive_rate_and_burst(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


# --- Limits ----------------------------------------------------------------------


@pytest.mark.parametrize("changes", [
    {"max_sessions": 0}, {"events_per_s": 0}, {"audio_s_per_min": -1}, {"max_event_bytes": 0},
    {"events_per_s": math.nan},
])
def test_limits_refuse_nonsense(changes: dict[str, float]) -> None:
    fields: dict[str, float] = {"max_sessions": 1, "events_per_s": 1, "audio_s_per_min": 1, "max_event_bytes": 1}
    with pytest.raises(ValueError):
        Limits(**{**fields, **changes})  # type: ignore[arg-type]


# --- KeyQuotas: events -----------------------------------------------------------


def test_event_over_the_size_limit_is_an_invalid_request_and_spends_no_rate() -> None:
    quotas = KeyQuotas(LIMITS)
    verdict = quotas.allow_event("k1", 1001, T0)
    assert not verdict.ok
    assert (verdict.type, verdict.code) == ("invalid_request_error", "event_too_large")
    assert "1001" in verdict.message and "1000" in verdict.message
    assert all(quotas.allow_event("k1", 1000, T0).ok for _ in range(10))


def test_events_past_the_rate_are_refused_with_a_retry_time() -> None:
    quotas = KeyQuotas(LIMITS)
    assert all(quotas.allow_event("k1", 10, T0).ok for _ in range(10))
    verdict = quotas.allow_event("k1", 10, T0)
    assert not verdict.ok
    assert (verdict.type, verdict.code) == ("invalid_request_error", "rate_limit_exceeded")
    assert verdict.retry_after_s == pytest.approx(0.1)
    assert "10 events per second" in verdict.message
    assert not quotas.allow_event("k1", 10, T0 + 0.0625).ok
    assert quotas.allow_event("k1", 10, T0 + 0.125).ok


def test_verdict_as_a_ga_error_object() -> None:
    quotas = KeyQuotas(LIMITS)
    verdict = quotas.allow_event("k1", 5000, T0)
    assert verdict.error("evt_1") == {
        "type": "invalid_request_error", "code": "event_too_large", "message": verdict.message,
        "param": None, "event_id": "evt_1",
    }
    assert quotas.allow_event("k1", 1, T0) == QuotaVerdict(ok=True)


def test_one_keys_flood_leaves_another_keys_bucket_alone() -> None:
    quotas = KeyQuotas(LIMITS)
    refused = sum(not quotas.allow_event("flood", 1, T0).ok for _ in range(1000))
    assert refused == 990
    assert not quotas.allow_audio("flood", 61, T0).ok
    assert all(quotas.allow_event("quiet", 1, T0).ok for _ in range(10))
    assert quotas.allow_audio("quiet", 60, T0).ok


def test_a_fractional_rate_still_allows_one_event() -> None:
    quotas = KeyQuotas(Limits(max_sessions=1, events_per_s=0.5, audio_s_per_min=1, max_event_bytes=10))
    assert quotas.allow_event("k1", 1, T0).ok
    assert not quotas.allow_event("k1", 1, T0 + 1).ok
    assert quotas.allow_event("k1", 1, T0 + 2).ok


# --- KeyQuotas: audio ------------------------------------------------------------


def test_audio_allowance_is_a_minutes_worth_refilled_continuously() -> None:
    quotas = KeyQuotas(Limits(max_sessions=1, events_per_s=100, audio_s_per_min=30, max_event_bytes=10))
    assert quotas.allow_audio("k1", 20, T0).ok
    assert quotas.allow_audio("k1", 10, T0).ok
    verdict = quotas.allow_audio("k1", 1, T0)
    assert not verdict.ok and verdict.code == "rate_limit_exceeded"
    assert verdict.retry_after_s == pytest.approx(2.0)  # 30 s per 60 s: 0.5 s of audio per second
    assert "30 s per minute" in verdict.message
    assert quotas.allow_audio("k1", 1, T0 + 2).ok


def test_more_audio_in_one_event_than_a_minutes_allowance_is_refused_for_good() -> None:
    quotas = KeyQuotas(LIMITS)
    verdict = quotas.allow_audio("k1", 61, T0)
    assert not verdict.ok and verdict.code == "rate_limit_exceeded"
    assert verdict.retry_after_s == 0.0
    assert "more than a minute's allowance" in verdict.message


# --- KeyQuotas: memory -----------------------------------------------------------


def test_idle_keys_buckets_are_dropped_and_busy_ones_kept() -> None:
    quotas = KeyQuotas(LIMITS, sweep_every_s=60)
    for n in range(100):
        assert quotas.allow_event(f"idle{n}", 1, T0).ok
    assert len(quotas) == 100
    assert quotas.allow_audio("busy", 60, T0 + 30).ok  # needs 60 s to refill
    assert quotas.allow_event("busy", 1, T0 + 61).ok  # sweeps: the idle ones are full again
    assert len(quotas) == 1
    assert not quotas.allow_audio("busy", 60, T0 + 61).ok  # kept: 31 s of its 60 back, not a fresh 60


def test_dropping_a_full_bucket_changes_no_verdict() -> None:
    quotas = KeyQuotas(LIMITS, sweep_every_s=1)
    for _ in range(10):
        assert quotas.allow_event("k1", 1, T0).ok
    assert quotas.allow_event("other", 1, T0 + 61).ok  # sweeps k1 away (refilled)
    assert len(quotas) == 1
    assert all(quotas.allow_event("k1", 1, T0 + 61).ok for _ in range(10))
    assert not quotas.allow_event("k1", 1, T0 + 61).ok


def test_no_sweep_before_its_interval() -> None:
    quotas = KeyQuotas(LIMITS, sweep_every_s=60)
    assert quotas.allow_event("a", 1, T0).ok
    assert quotas.allow_event("b", 1, T0 + 59).ok
    assert len(quotas) == 2
