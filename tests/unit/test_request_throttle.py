"""The local gateway's per-user token buckets (tessera.local.throttle), on a fake clock."""

from __future__ import annotations

import pytest

from tessera.domain.errors import TooManyRequests
from tessera.local.throttle import RequestThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_429_with_the_wait_until_a_token_is_back() -> None:
    clock = Clock()
    throttle = RequestThrottle(rate=0.25, burst=3, clock=clock)
    for _ in range(3):
        throttle.take("alice")
    with pytest.raises(TooManyRequests) as refused:
        throttle.take("alice")
    assert refused.value.status == 429 and refused.value.retry_after == 4  # 1 token / 0.25 s⁻¹
    clock.now += 4
    throttle.take("alice")  # refilled
    with pytest.raises(TooManyRequests):
        throttle.take("alice")


def test_buckets_are_per_caller_and_never_exceed_the_burst() -> None:
    clock = Clock()
    throttle = RequestThrottle(rate=10, burst=2, clock=clock)
    throttle.take("alice")
    throttle.take("alice")
    throttle.take("bob")  # alice's empty bucket is not bob's
    clock.now += 3600  # a long idle time refills to the burst, not beyond
    throttle.take("alice")
    throttle.take("alice")
    with pytest.raises(TooManyRequests) as refused:
        throttle.take("alice")
    assert refused.value.retry_after == 1  # waits are rounded up to whole seconds


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0)])
def test_nonsense_limits_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate must be"):
        RequestThrottle(rate, burst)


def test_past_max_keys_only_the_full_buckets_are_forgotten() -> None:
    """Per-address buckets for sign-ins must not grow without end; dropping a bucket that
    is still draining would hand its caller a fresh burst, so only full ones go."""
    clock = Clock()
    throttle = RequestThrottle(rate=1, burst=2, clock=clock, max_keys=3)
    for n in range(3):
        throttle.take(f"passer-by {n}")
    clock.now += 10  # their buckets have refilled
    throttle.take("flooder")
    throttle.take("flooder")  # the fourth key: the full buckets are forgotten
    assert list(throttle._buckets) == ["flooder"]
    for n in range(3, 6):
        throttle.take(f"passer-by {n}")  # past max_keys again, but none is full
    with pytest.raises(TooManyRequests):
        throttle.take("flooder")  # its draining bucket was kept
