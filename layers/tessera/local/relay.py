"""The local cloud's outbox relay: the sweep that EventBridge Scheduler runs on AWS.

Every commit's event already reached the local change feed: its own transaction moved the
namespace head and NOTIFYed. A sweep therefore finds the heads there (one read per batch,
no write) and only empties the queue, which would otherwise grow by a row per commit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tessera.domain.services import Services
from tessera.metadata.outbox import relay_outbox

log = logging.getLogger(__name__)

#: Seconds between sweeps; a row is swept once it is this old (the fast path had its turn).
RELAY_INTERVAL_S = 30.0


def start_relay(services: Services, interval_s: float = RELAY_INTERVAL_S) -> Callable[[], None]:
    """Sweep the outbox into `services.feed` every `interval_s` seconds on a daemon thread;
    returns the function that stops it (after the sweep in progress, if any)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                relay_outbox(services.db, services.feed, min_age_s=interval_s)
            except Exception:  # the database restarting, say: the next sweep retries
                log.exception("outbox relay sweep failed; the next one retries")

    thread = threading.Thread(target=loop, name="tessera-outbox-relay", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(30)

    return halt
