"""The bad-key throttle and the registry of connections without a valid key, on a test clock."""

import pytest

from fetchml.server.throttle import BACKOFF_S, FORGET_S, MAX_BACKOFF_S, Throttle, Unverified


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def fail(throttle: Throttle, peer: str, times: int) -> list[float]:
    return [throttle.failure(peer) for _ in range(times)]


def test_the_tenth_failure_within_a_minute_throttles_the_address(clock: Clock) -> None:
    throttle = Throttle(clock=clock)
    assert fail(throttle, "10.0.0.1", 9) == [0.0] * 9
    assert throttle.retry_after("10.0.0.1") == 0.0
    assert throttle.failure("10.0.0.1") == BACKOFF_S
    assert throttle.retry_after("10.0.0.1") == BACKOFF_S
    assert throttle.retry_after("10.0.0.2") == 0.0  # per address
    clock.now += 0.25
    assert throttle.retry_after("10.0.0.1") == BACKOFF_S - 0.25
    assert throttle.failure("10.0.0.1") == BACKOFF_S - 0.25  # still throttled: close that one too
    clock.now += BACKOFF_S
    assert throttle.retry_after("10.0.0.1") == 0.0


def test_failures_older_than_the_window_do_not_count(clock: Clock) -> None:
    throttle = Throttle(clock=clock)
    for _ in range(30):
        assert fail(throttle, "10.0.0.1", 9) == [0.0] * 9
        clock.now += 60.0
    assert throttle.retry_after("10.0.0.1") == 0.0


def test_the_backoff_doubles_up_to_the_cap_and_is_forgotten_after_a_quiet_spell(
    clock: Clock,
) -> None:
    throttle = Throttle(clock=clock)
    backoffs = []
    for _ in range(12):
        *_, last = fail(throttle, "10.0.0.1", 10)
        backoffs.append(last)
        clock.now += last  # wait it out, then fail again
    assert backoffs == [min(BACKOFF_S * 2**n, MAX_BACKOFF_S) for n in range(12)]
    assert backoffs[-1] == MAX_BACKOFF_S
    clock.now += FORGET_S + 1
    assert fail(throttle, "10.0.0.1", 10)[-1] == BACKOFF_S


def test_memory_is_bounded_by_the_most_recently_failing_addresses(clock: Clock) -> None:
    throttle = Throttle(max_peers=100, clock=clock)
    for n in range(10_000):
        throttle.failure(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")
    assert len(throttle) == 100
    fail(throttle, "192.0.2.1", 10)
    for n in range(99):
        throttle.failure(f"10.9.9.{n}")
    assert throttle.retry_after("192.0.2.1") == BACKOFF_S  # still among the last 100
    throttle.failure("10.9.9.200")
    assert throttle.retry_after("192.0.2.1") == 0.0  # forgotten


def test_unverified_counts_per_address_and_expires_oldest_first() -> None:
    slots: Unverified[str] = Unverified()
    slots.add("a", "10.0.0.1", 1.0)
    slots.add("b", "10.0.0.1", 2.0)
    slots.add("c", "10.0.0.2", 3.0)
    assert (slots.count("10.0.0.1"), slots.count("10.0.0.2"), slots.count("10.0.0.3")) == (2, 1, 0)
    assert slots.oldest() == "a"
    assert slots.expired(now=12.0, timeout_s=10.0) == ["a", "b"]
    slots.discard("a")
    slots.discard("a")  # twice is harmless
    assert "a" not in slots and "b" in slots
    assert (slots.count("10.0.0.1"), slots.oldest(), len(slots)) == (1, "b", 2)
    slots.discard("b")
    slots.discard("c")
    assert (slots.count("10.0.0.1"), slots.oldest(), len(slots)) == (0, None, 0)
