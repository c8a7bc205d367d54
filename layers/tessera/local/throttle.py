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


class RequestThrottle:
    """Token buckets per caller key (a user id)."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate} and {burst}")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestThrottle:
        """The gateway's throttle: `api_rate_limit` per second, bursts of `api_burst_limit`."""
        return cls(settings.api_rate_limit, settings.api_burst_limit)

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
