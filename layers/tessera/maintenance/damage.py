"""Telling a namespace's clients that versions in it are damaged (via the change feed)."""

from __future__ import annotations

from datetime import datetime

from tessera.domain.changes import side_event
from tessera.metadata.maintenance import DamageNotice
from tessera.ports import ChangeEvent

from .context import MaintenanceContext, log


def damage_event(notice: DamageNotice) -> ChangeEvent:
    """The `block_damaged` event of a damaged version (`side_event`: not a journal change;
    a retry never duplicates it)."""
    return side_event(
        notice.ns_id,
        "block_damaged",
        f"{notice.file_id}:{notice.rev}:{notice.block_id}:{notice.staged_key}",
        prefix="damaged-",
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
