"""Telling a namespace's clients that versions in it are damaged (via the change feed)."""

from __future__ import annotations

import hashlib
from datetime import datetime

from tessera.metadata.maintenance import DamageNotice
from tessera.ports import ChangeEvent

from .context import MaintenanceContext, log


def damage_event(notice: DamageNotice) -> ChangeEvent:
    """The `block_damaged` event of a damaged version: its id is deterministic (a retry
    never duplicates it), and so is its seq, which is negative.

    A damage notice is not a journal change, so it takes no journal seq: on the changes
    table, (ns_id, the namespace's latest seq) already holds that journal event, and the
    notice collided with it (ChangeConflictError: the notice never went out, and had it
    gone first, the relay would have stopped at that journal event for good). A negative
    seq is a key of its own that a long-poll (`seq > cursor`, cursors from 0) never sees,
    while the table's stream still carries the notice to the bus; the local feed's heads
    only move forward, so there it is a no-op, as before."""
    ident = f"{notice.ns_id}:{notice.file_id}:{notice.rev}:{notice.block_id}:{notice.staged_key}"
    digest = hashlib.sha256(ident.encode()).hexdigest()
    return ChangeEvent(
        event_id="damaged-" + digest[:32],
        ns_id=notice.ns_id,
        seq=-1 - int(digest[:13], 16),  # below 0, above -2**52: exact in JSON and DynamoDB
        kind="block_damaged",
        payload={
            "file_id": notice.file_id,
            "rev": notice.rev,
            "path": notice.path,
            "block_id": notice.block_id,
            "reason": notice.reason,
        },
    )


def publish_damage(ctx: MaintenanceContext, at: datetime) -> int:
    """Publish a `block_damaged` event per damaged version not yet announced.

    `damaged_versions.notified_at` is the outbox: an event is marked sent only after the
    feed took it (`damage_event`: deterministic, so a retry never duplicates it).
    """
    if ctx.feed is None:
        return 0
    sent = 0
    while True:
        with ctx.repo.transaction() as tx:
            notices = tx.unnotified_damage(ctx.settings.batch_size)
            for n in notices:
                ctx.feed.publish(damage_event(n))
                log.warning(
                    "damaged: ns %s %s rev %s block %s (%s)",
                    n.ns_id,
                    n.path,
                    n.rev,
                    n.block_id,
                    n.reason,
                )
            tx.mark_notified(notices, at)
        sent += len(notices)
        if len(notices) < ctx.settings.batch_size:
            return sent
