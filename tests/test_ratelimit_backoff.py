from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.backoff import Backoff
from daemon.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_steady_rate_per_address():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=5, burst=10, clock=clock)
    assert [limiter.allow("a") for _ in range(12)] == [True] * 10 + [False] * 2
    assert limiter.allow("b")  # another address has its own bucket
    clock.now += 1.0  # five tokens come back per second
    assert sum(limiter.allow("a") for _ in range(10)) == 5
    assert limiter.refused == 2 + 5


def test_a_flood_is_held_to_the_rate():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=5, burst=10, clock=clock)
    allowed = 0
    for step in range(1000):  # 1,000 attempts in one second from one address
        clock.now = step / 1000
        allowed += limiter.allow("203.0.113.9")
    assert allowed <= 10 + 5


@given(st.lists(st.integers(0, 10_000), max_size=300))
def test_memory_is_bounded(addresses):
    limiter = RateLimiter(rate_per_s=1, burst=1, clock=FakeClock(), max_addresses=50)
    for address in addresses:
        limiter.allow(str(address))
        assert len(limiter) <= 50


def test_invalid_settings():
    with pytest.raises(ValueError):
        RateLimiter(rate_per_s=0, burst=1, clock=FakeClock())


def test_backoff_grows_is_capped_jittered_and_resets():
    backoff = Backoff(base_s=1, cap_s=60, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(12)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(60, 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next_delay() <= 1
