"""Fast-path publication of committed changes to the change feed (DESIGN §6)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tessera.ports import ChangeEvent, ChangeFeed

log = logging.getLogger(__name__)


def publish(feed: ChangeFeed, events: Iterable[ChangeEvent | None]) -> None:
    """Publish, after their transaction committed, the newest event of each namespace.

    That is all a long-poll needs to wake: it asks "anything after seq S?", and the client
    then lists the changes themselves from the journal. The outbox relay delivers every
    event, these included, on its next sweep, so a batch of 500 commits costs the request
    one write per namespace instead of 500. A failure is logged, never raised: the commit
    stands, and the relay delivers the event later."""
    newest: dict[int, ChangeEvent] = {}
    for event in events:
        if event is not None and (event.ns_id not in newest or event.seq > newest[event.ns_id].seq):
            newest[event.ns_id] = event
    if not newest:
        return
    ready = list(newest.values())
    try:
        if len(ready) == 1:  # the usual case, and fresh: a create-only put is one call
            feed.publish(ready[0])
        else:
            feed.publish_many(ready)
    except Exception:  # the outbox is the guaranteed path
        log.warning(
            "change feed publish failed for %s; outbox relay will retry",
            ", ".join(event.event_id for event in ready),
            exc_info=True,
        )
