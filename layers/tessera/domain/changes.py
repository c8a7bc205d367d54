"""Fast-path publication of committed changes to the change feed (DESIGN §6)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tessera.ports import ChangeEvent, ChangeFeed

log = logging.getLogger(__name__)


def publish(feed: ChangeFeed, events: Iterable[ChangeEvent | None]) -> None:
    """Publish events after their transaction committed. A failure is logged, never raised:
    the commit stands, and the outbox relay delivers the event later."""
    ready = [event for event in events if event is not None]
    if not ready:
        return
    try:
        feed.publish_many(ready)
    except Exception:  # the outbox is the guaranteed path
        log.warning(
            "change feed publish failed for %s; outbox relay will retry",
            ", ".join(event.event_id for event in ready),
            exc_info=True,
        )
