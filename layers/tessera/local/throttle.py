"""Request throttling for the local gateway: what API Gateway's stage throttling does on AWS.

API Gateway throttles a stage as a whole; a local cloud may serve a LAN, so here each caller
gets a token bucket of their own: `burst` requests at once, refilled at `rate` per second.
An empty bucket answers 429 `rate_limited` with Retry-After, as the API's own 429s do.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from tessera.domain.errors import TooManyRequests
from tessera.settings import Settings

# Token requests (sign-ins and refreshes) per client address: a burst, then a steady rate.
# A sign-in costs a password check (~0.3 s of a core); a device refreshes once an hour.
SIGN_IN_RATE = 2.0
SIGN_IN_BURST = 30


class RequestThrottle:
    """Token buckets per caller key (a user id, or a client address for sign-ins).

    Past `max_keys` buckets, the full ones go (a full bucket is the same as none), so
    callers that come and go cannot grow it without end. The next sweep waits until the
    buckets left have doubled: one per request would cost every request a walk of them all
    while that many callers are active at once."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate} and {burst}")
        self.rate, self.burst, self._clock, self.max_keys = rate, burst, clock, max_keys
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._sweep_above = max_keys

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestThrottle:
        """The gateway's throttle: `api_rate_limit` per second, bursts of `api_burst_limit`."""
        return cls(settings.api_rate_limit, settings.api_burst_limit)

    @classmethod
    def for_sign_ins(cls) -> RequestThrottle:
        """The token endpoint's throttle, per client address: one address flooding it with
        password guesses cannot take every password-check slot from everyone else."""
        return cls(SIGN_IN_RATE, SIGN_IN_BURST)

    def take(self, key: str) -> None:
        """Spend one request of `key`'s bucket; `TooManyRequests` when it is empty."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise TooManyRequests("too many requests; retry later", max(1, math.ceil(wait)))
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self._sweep_above:
                self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled to the burst (under the lock)."""
        full = now - self.burst / self.rate
        self._buckets = {k: (t, at) for k, (t, at) in self._buckets.items() if at > full}
        self._sweep_above = max(self.max_keys, 2 * len(self._buckets))


class CallerSlot:
    """One request's place in its caller's `CallerLimit`, given back once. In AWS mode a
    long-poll's wait runs on a thread that outlives a caller who hung up: the place is then
    `handed_over` to that thread, which gives it back when it returns (given back when the
    caller left, one account's dropped long-polls took every thread for the whole wait)."""

    def __init__(self, limit: CallerLimit, key: str) -> None:
        self.limit, self.key = limit, key
        self.given_back = False
        self.handed_over = False

    def give_back(self) -> None:
        """Free the place (only the first call counts)."""
        self.limit.give_back(self)


class CallerLimit:
    """At most `limit` requests of one kind at once per caller key (a user id).

    A token bucket bounds how often a caller may ask, not how many of their requests are
    held at once: a long-poll is held for up to eight minutes, at the cost of a socket (one
    account's thousand long-polls used up the process's file descriptors, and then no
    device could connect), and an API call waiting for a thread holds its body (one
    account's 300 calls of 5 MiB at once took the gateway to 2.3 GB)."""

    def __init__(self, limit: int, refusal: str, retry_after: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit, self.refusal, self.retry_after = limit, refusal, retry_after
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    def take(self, key: str) -> CallerSlot:
        """One of `key`'s places; `TooManyRequests` (saying `refusal`) when all are taken."""
        with self._lock:
            held = self._held.get(key, 0)
            if held >= self.limit:
                raise TooManyRequests(self.refusal.format(limit=self.limit), self.retry_after)
            self._held[key] = held + 1
        return CallerSlot(self, key)

    def give_back(self, slot: CallerSlot) -> None:
        """Free `slot`'s place, once however often it is given back (the caller and the
        thread it handed the wait to may both)."""
        with self._lock:
            if slot.given_back:
                return
            slot.given_back = True
            left = self._held[slot.key] - 1
            if left:
                self._held[slot.key] = left
            else:
                del self._held[slot.key]
