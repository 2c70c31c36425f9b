from __future__ import annotations

from addon.serve._ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_one_per_period_per_key():
    clock = Clock()
    limit = RateLimiter(burst=3, per=6.0, clock=clock)
    assert [limit.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.take("a") == 6.0
    assert limit.take("b") == 0.0  # another address has its own bucket
    clock.now = 3.0
    assert limit.take("a") == 3.0
    clock.now = 6.0
    assert limit.take("a") == 0.0
    assert limit.take("a") == 6.0
    clock.now = 1000.0
    assert [limit.take("a") for _ in range(4)] == [0.0, 0.0, 0.0, 6.0]  # never above the burst


def test_remembers_a_bounded_number_of_addresses():
    clock = Clock()
    limit = RateLimiter(burst=1, per=60.0, clock=clock, max_keys=2)
    for key in ("a", "b", "c"):
        assert limit.take(key) == 0.0
    assert limit.take("c") == 60.0
    assert limit.take("a") == 0.0  # forgotten: a fresh (full) bucket
