"""The control-request token bucket (RateLimiter) on an injected clock."""

import pytest

from fetchml.protocol.enums import ErrorCode
from fetchml.server.auth import RateLimiter
from fetchml.server.errors import Overloaded

T0 = 1000.0


def allowed(limiter: RateLimiter, user: str, now: float) -> bool:
    try:
        limiter.check(user, now)
    except Overloaded as exc:
        assert exc.code == ErrorCode.SERVER_OVERLOADED
        assert str(exc) == f"rate limit exceeded: {limiter.per_minute} control requests per minute"
        return False
    return True


def test_a_full_bucket_allows_a_burst_of_per_minute_then_refuses() -> None:
    limiter = RateLimiter(3)
    assert [allowed(limiter, "alice", T0) for _ in range(4)] == [True, True, True, False]


def test_tokens_come_back_evenly_one_per_sixtieth_of_a_minute() -> None:
    limiter = RateLimiter(6)  # one token every 10 s
    for _ in range(6):
        limiter.check("alice", T0)
    assert not allowed(limiter, "alice", T0 + 9.99)
    assert allowed(limiter, "alice", T0 + 10.0)
    assert not allowed(limiter, "alice", T0 + 10.0)
    assert allowed(limiter, "alice", T0 + 20.0)


def test_a_refused_request_costs_no_token() -> None:
    limiter = RateLimiter(60)  # one token a second
    for _ in range(60):
        limiter.check("alice", T0)
    for i in range(5):  # refused five times within the second
        assert not allowed(limiter, "alice", T0 + 0.1 * i)
    assert allowed(limiter, "alice", T0 + 1.0)


def test_an_idle_bucket_holds_at_most_per_minute() -> None:
    limiter = RateLimiter(2)
    limiter.check("alice", T0)
    later = T0 + 3600
    assert [allowed(limiter, "alice", later) for _ in range(3)] == [True, True, False]


def test_each_user_has_a_bucket_of_its_own() -> None:
    limiter = RateLimiter(1)
    assert allowed(limiter, "alice", T0)
    assert not allowed(limiter, "alice", T0)
    assert allowed(limiter, "bob", T0)
    assert not allowed(limiter, "bob", T0 + 59.0)
    assert allowed(limiter, "alice", T0 + 60.0)


def test_without_a_clock_it_reads_the_monotonic_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [T0]
    monkeypatch.setattr("fetchml.server.auth.time.monotonic", lambda: now[0])
    limiter = RateLimiter(1)
    limiter.check("alice")
    with pytest.raises(Overloaded):
        limiter.check("alice")
    now[0] += 60.0
    limiter.check("alice")
