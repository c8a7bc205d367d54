"""Telling a namespace's clients that versions in it are damaged (via the change feed)."""

from __future__ import annotations

import hashlib
from datetime import datetime

from tessera.ports import ChangeEvent

from .context import MaintenanceContext, log


def publish_damage(ctx: MaintenanceContext, at: datetime) -> int:
    """Publish a `block_damaged` event per damaged version not yet announced.

    `damaged_versions.notified_at` is the outbox: an event is marked sent only after the
    feed took it, and its event id is deterministic, so a retry never duplicates it.
    """
    if ctx.feed is None:
        return 0
    sent = 0
    while True:
        with ctx.repo.transaction() as tx:
            notices = tx.unnotified_damage(ctx.settings.batch_size)
            for n in notices:
                ident = f"{n.ns_id}:{n.file_id}:{n.rev}:{n.block_id}:{n.staged_key}"
                ctx.feed.publish(
                    ChangeEvent(
                        event_id="damaged-" + hashlib.sha256(ident.encode()).hexdigest()[:32],
                        ns_id=n.ns_id,
                        seq=n.seq,
                        kind="block_damaged",
                        payload={
                            "file_id": n.file_id,
                            "rev": n.rev,
                            "path": n.path,
                            "block_id": n.block_id,
                            "reason": n.reason,
                        },
                    )
                )
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
