"""Fast-path publication of committed changes to the change feed (DESIGN §6)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

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


def side_event(
    ns_id: int, kind: str, ident: str, payload: dict[str, Any], *, prefix: str
) -> ChangeEvent:
    """An event about a namespace that is no change of its journal (a damage notice, a
    block report), named by `ident`: its id (`prefix` + a digest) is deterministic, so a
    retry never duplicates it, and so is its seq, which is negative.

    Such an event takes no journal seq: on the changes table, (ns_id, the namespace's
    latest seq) already holds that journal event, and the two would collide (the event
    refused, and had it gone first, the relay would have stopped at the journal event for
    good). A negative seq is a key of its own that a long-poll (`seq > cursor`, cursors
    from 0) never sees, while the table's stream still carries the event to the bus; the
    local feed's heads only move forward, so there it is a no-op."""
    digest = hashlib.sha256(f"{ns_id}:{ident}".encode()).hexdigest()
    return ChangeEvent(
        event_id=prefix + digest[:32],
        ns_id=ns_id,
        seq=-1 - int(digest[:13], 16),  # below 0, above -2**52: exact in JSON and DynamoDB
        kind=kind,
        payload=payload,
    )
