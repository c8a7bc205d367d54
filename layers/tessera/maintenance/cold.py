"""Cold storage: blocks unread for `cold_after_days` move to the cold tier; restores end.

- `move_cold`: for each live block whose last read (access analytics, else its creation) is
  older than the threshold, under the per-block lock: `BlockStore.set_tier(COLD)` (S3:
  CopyObject to Glacier Flexible Retrieval; local: the `cold/` directory), then state
  `cold` — unless a read landed meanwhile, in which case the object goes back to hot.
- `complete_restores`: a download that touches a cold block starts a restore and marks it
  `restoring` (it answers 202 until then). For each restoring block: once the store says
  the object is readable (`restored`, or hot), make it hot again for good and mark it live,
  counting the restore as a read; if the store has no restore under way (lost or expired),
  start one again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from tessera.domain.object_keys import canonical_key
from tessera.ports import StorageTier

from .context import MaintenanceContext, log
from .results import ColdResult


def move_cold(ctx: MaintenanceContext, as_of: datetime) -> ColdResult:
    """Move blocks unread since `cold_after_days` before `as_of` to the cold tier."""
    result = ColdResult()
    cutoff = as_of - timedelta(days=ctx.settings.cold_after_days)
    for _ in ctx.batches():
        with ctx.repo.transaction() as tx:
            candidates = tx.cold_candidates(cutoff, ctx.settings.batch_size)
        moved = 0
        for row in candidates:
            key = canonical_key(row.block_id)
            with ctx.repo.transaction() as tx:
                if not tx.block_lock(row.block_id, wait=False):
                    continue  # another step is working on this block
                if ctx.store.head(key) is None:
                    result.errors.append(f"{row.block_id}: live but no object at {key}")
                    continue
                ctx.store.set_tier(key, StorageTier.COLD)
                if tx.mark_cold(row.block_id, cutoff):
                    moved += 1
                    result.bytes_moved += row.stored_size or 0
                else:  # read (or changed) since we picked it: leave it hot
                    ctx.store.set_tier(key, StorageTier.HOT)
        result.blocks_moved += moved
        if len(candidates) < ctx.settings.batch_size:
            break
        if moved == 0:  # a full batch of blocks we could not move: try again next run
            break
    else:
        result.more = True
    return result


def complete_restores(ctx: MaintenanceContext, as_of: datetime) -> ColdResult:
    """Mark blocks whose restore finished live again; re-issue restores that were lost."""
    result = ColdResult()
    with ctx.repo.transaction() as tx:
        restoring = tx.restoring_blocks(ctx.settings.batch_size * ctx.settings.max_batches_per_step)
    for row in restoring:
        key = canonical_key(row.block_id)
        head = ctx.store.head(key)
        if head is None:
            result.errors.append(f"{row.block_id}: restoring but no object at {key}")
            continue
        if head.tier is StorageTier.HOT or head.restored:
            with ctx.repo.transaction() as tx:
                tx.block_lock(row.block_id)
                ctx.store.set_tier(key, StorageTier.HOT)
                if tx.mark_restored(row.block_id, as_of):
                    result.restores_completed += 1
        elif not head.restoring:
            ctx.store.restore(key, days=ctx.settings.restore_days)
            result.restores_started += 1
            log.info("cold: restore of %s (re)started", row.block_id)
    return result
