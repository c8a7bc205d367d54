"""Cold storage: blocks unread for `cold_after_days` move to the cold tier; restores end.

- `move_cold`: for each live block whose last read (access analytics, else its creation) is
  older than the threshold: first the database agrees — state `cold` committed, under the
  row lock and only if still unread (`mark_cold`), its `storage_class` still `hot` — then,
  under the per-block lock and the row lock again, the object moves
  (`BlockStore.set_tier(COLD)`; S3: CopyObject to Glacier Flexible Retrieval; local: the
  `cold/` directory) and `storage_class` becomes `cold`. Moving the object first left, in a
  run killed in between (or, on S3, one whose `mark_cold` lost to a read and could not move
  an unrestored object back), a live row over a cold object: downloads handed out a failing
  URL, never started a restore, and scrub quarantined intact bytes. Now a row marked cold
  whose object is still hot is served hot by downloads (they head cold blocks) and is moved
  by the next run (`unmoved_cold`), or made live again when read since.
- `complete_restores`: a download that touches a cold block starts a restore and marks it
  `restoring` (it answers 202 until then). For each restoring block: once the store says
  the object is readable (`restored`, or hot), make it hot again for good and mark it live,
  counting the restore as a read; if the store has no restore under way (lost or expired),
  start one again. `settle_reported_restores` does the same for the blocks the store
  reported restored (S3's events), between the scheduled passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Literal

from tessera.domain.object_keys import canonical_key
from tessera.metadata.maintenance import BlockRow
from tessera.ports import StorageTier

from .context import MaintenanceContext, log
from .damage import publish_damage
from .results import ColdResult, ScrubResult
from .scrub import repair

Moved = Literal["moved", "kept", "lost"]  # what `_move` did with a block


def move_cold(ctx: MaintenanceContext, as_of: datetime) -> ColdResult:
    """Move blocks unread since `cold_after_days` before `as_of` to the cold tier; first
    those a run marked cold but died before moving."""
    result = ColdResult()
    cutoff = as_of - timedelta(days=ctx.settings.cold_after_days)
    with ctx.repo.transaction() as tx:
        unmoved = tx.unmoved_cold(ctx.settings.batch_size)
    lost = [row.block_id for row in unmoved if _move(ctx, row, cutoff, result) == "lost"]
    _repair_lost(ctx, lost, as_of, result)
    for _ in ctx.batches():
        with ctx.repo.transaction() as tx:
            candidates = tx.cold_candidates(cutoff, ctx.settings.batch_size)
        moved, lost = 0, []
        for row in candidates:
            with ctx.repo.transaction() as tx:
                marked = tx.mark_cold(row.block_id, cutoff)
            outcome = _move(ctx, row, cutoff, result) if marked else "kept"
            moved += outcome == "moved"
            if outcome == "lost":
                lost.append(row.block_id)
        _repair_lost(ctx, lost, as_of, result)
        if len(candidates) < ctx.settings.batch_size:
            break
        if moved == 0 and not lost:  # a full batch we could not move: next run
            break
    else:
        result.more = True
    publish_damage(ctx, as_of)
    return result


def _repair_lost(
    ctx: MaintenanceContext, lost: list[str], as_of: datetime, result: ColdResult
) -> None:
    """Hand live blocks whose objects are gone to scrub's repair at once: left live, each
    was the oldest candidate again in every batch, and a full batch of them stopped every
    run before any other block moved."""
    for bid in lost:
        repaired = ScrubResult()
        ctx.attempt(bid, partial(repair, ctx, bid, as_of, repaired), repaired)
        result.repaired += repaired.repaired
        result.lost += repaired.unrepaired
        result.errors += repaired.errors


def _move(ctx: MaintenanceContext, row: BlockRow, cutoff: datetime, result: ColdResult) -> Moved:
    """Move the object of a block marked cold to the cold tier and record it, holding the
    per-block lock and the row lock (a download recording a read waits, then sees the block
    cold). A block read since `cutoff` whose object never left the hot tier is live again;
    one whose object a killed run already moved is recorded moved (a read restores it).
    "kept" when it was not moved (one another run or step holds stays for the next run),
    "lost" when it is live again because its object is gone."""
    key = canonical_key(row.block_id)
    with ctx.repo.transaction() as tx:
        if not tx.block_lock(row.block_id, wait=False):
            return "kept"  # another step is working on this block
        unread = tx.lock_unmoved(row.block_id, cutoff)
        if unread is None:
            return "kept"
        head = ctx.store.head(key)
        # A run killed after the move, before recording it, left the object cold: whether
        # read since or not, the row must say so (a read of it starts a restore).
        already_cold = head is not None and head.tier is StorageTier.COLD
        if not already_cold and (not unread or head is None):
            tx.set_state(row.block_id, "live", from_states=["cold"])
            if head is None:  # live again, for scrub's repair to mend or quarantine (read
                # since or not: kept, a read one was left without its object, unreported)
                result.errors.append(f"{row.block_id}: live but no object at {key}")
                return "lost"
            return "kept"
        if not already_cold:
            ctx.store.set_tier(key, StorageTier.COLD)
        tx.mark_moved(row.block_id)
    result.blocks_moved += 1
    result.bytes_moved += row.stored_size or 0
    return "moved"


_RESTORES = "cold.complete_restores"  # when its pass began (`MaintenanceTx.pass_started`)


def complete_restores(ctx: MaintenanceContext, as_of: datetime) -> ColdResult:
    """Mark blocks whose restore finished live again; re-issue restores that were lost.

    A pass checks every restoring block once, the longest unchecked first, a batch at a
    time within the step's budget. A block still restoring is recorded as checked, so when
    the budget runs out (`more`) the next call goes on with the blocks this pass has not
    checked, not the same ones again: a restore takes hours, and the blocks waiting on it
    must not starve the rest, nor keep the state machine looping until they are done."""
    result = ColdResult()
    with ctx.repo.transaction() as tx:
        started = tx.pass_started(_RESTORES)
    for _ in ctx.batches():
        with ctx.repo.transaction() as tx:
            batch = tx.restoring_blocks(ctx.settings.batch_size, checked_before=started)
        if not batch:
            with ctx.repo.transaction() as tx:
                tx.set_pass_position(_RESTORES, None)
            break
        waiting = [row.block_id for row in batch if _check_restore(ctx, row, as_of, result)]
        with ctx.repo.transaction() as tx:
            tx.requeue_restoring(waiting)
    else:
        result.more = True
    publish_damage(ctx, as_of)
    return result


def settle_reported_restores(
    ctx: MaintenanceContext, block_ids: Sequence[str], as_of: datetime
) -> ColdResult:
    """Settle the restoring blocks among `block_ids`, which the store reported restored
    (on S3, its "Object Restore Completed" events), as `complete_restores` settles each.

    The scheduled pass runs daily on AWS: without the events, a file with more cold blocks
    than a download asks about (`max_cold_checks`) waited for it. A block no longer
    restoring (a pass or an earlier copy of the event settled it) is left alone; one the
    store does not show restored yet waits for the next event or pass."""
    result = ColdResult()
    with ctx.repo.transaction() as tx:
        rows = tx.restoring_among(sorted(set(block_ids)))
    for row in rows:
        _check_restore(ctx, row, as_of, result)
    publish_damage(ctx, as_of)
    return result


def _check_restore(
    ctx: MaintenanceContext, row: BlockRow, as_of: datetime, result: ColdResult
) -> bool:
    """Settle one restoring block if its restore is done or lost; True while it waits, or
    when settling it failed (the next pass or event tries again): one block's failure (its
    restored copy lapsed, or its object deleted, between the head and the tier change)
    had ended the whole pass, and every pass met it first."""
    try:
        return _settle_restore(ctx, row, as_of, result)
    except Exception as e:
        log.exception("cold: settling the restore of %s failed", row.block_id)
        result.errors.append(f"{row.block_id}: {e}")
        return True


def _settle_restore(
    ctx: MaintenanceContext, row: BlockRow, as_of: datetime, result: ColdResult
) -> bool:
    key = canonical_key(row.block_id)
    head = ctx.store.head(key)
    if head is None:
        _quarantine_lost(ctx, row.block_id, key, as_of, result)
        return False
    if head.tier is StorageTier.HOT or head.restored:
        with ctx.repo.transaction() as tx:
            tx.block_lock(row.block_id)
            ctx.store.set_tier(key, StorageTier.HOT)
            if tx.mark_restored(row.block_id, as_of):
                result.restores_completed += 1
        return False
    if not head.restoring:
        ctx.store.restore(key, days=ctx.settings.restore_days)
        result.restores_started += 1
        log.info("cold: restore of %s (re)started", row.block_id)
    return True


def _quarantine_lost(
    ctx: MaintenanceContext, block_id: str, key: str, as_of: datetime, result: ColdResult
) -> None:
    """A restoring block with no object: undelete it if the store kept it (the restore
    goes on); else it is lost and can never be restored: quarantine it and record its
    versions damaged (downloads answer `block_unavailable`, the namespaces are told, and
    the owner's next upload of it is promoted by dedup)."""
    with ctx.repo.transaction() as tx:
        tx.block_lock(block_id)
        row = tx.block(block_id)
        if row is None or row.state != "restoring":
            return  # settled meanwhile, or gone: gc deleted the row, then the object
        if ctx.store.head(key) is not None:  # put back meanwhile (dedup promoted a copy)
            return
        if ctx.store.undelete(key):  # deleted by mistake, and kept: the restore goes on
            result.repaired += 1
            log.warning("cold: %s is restoring but had been deleted: its object is back", block_id)
            return
        if not tx.set_state(block_id, "quarantined", from_states=["restoring"]):
            return
        tx.record_damage(block_id, staged_key=None, reason="missing from the cold tier", at=as_of)
    result.lost += 1
    result.errors.append(f"{block_id}: restoring but no object at {key}: quarantined")
    log.error("cold: %s is restoring but has no object at %s: quarantined", block_id, key)
