"""The local token endpoint's lockout per email (`identity.LoginThrottle`)."""

from __future__ import annotations

import pytest

from tessera.adapters.local.identity import LoginThrottle
from tessera.domain.errors import TooManyRequests


def test_it_keeps_at_most_max_keys_addresses_dropping_the_least_recently_failed() -> None:
    """Anyone may fail a sign-in for any address: without a bound, every made-up address
    (up to the body limit long) stayed in memory for good."""
    throttle = LoginThrottle(max_failures=2, max_keys=3)
    for _ in range(2):
        throttle.failed("victim@example.com")
    for n in range(2):
        throttle.failed(f"made-up-{n}@example.com")
    throttle.failed("victim@example.com")  # failing again makes it the most recent
    for n in range(2, 4):
        throttle.failed(f"made-up-{n}@example.com")
    assert len(throttle._failures) == 3
    with pytest.raises(TooManyRequests):
        throttle.check("victim@example.com")
    throttle.failed("made-up-4@example.com")  # now the victim failed least recently
    throttle.check("victim@example.com")


def test_checking_an_address_keeps_nothing() -> None:
    throttle = LoginThrottle()
    for n in range(100):
        throttle.check(f"someone-{n}@example.com")
    throttle.failed("a@example.com")
    throttle.succeeded("a@example.com")
    assert not throttle._failures
