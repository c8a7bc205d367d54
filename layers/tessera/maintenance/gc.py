"""Garbage collection: retention, abandoned uploads, and blocks nothing references.

Six steps, each a loop of short transactions (so no lock a commit could wait on is held
for long), each safe to run twice at once (rows are claimed with `FOR UPDATE SKIP LOCKED`):

1. `purge_trash`: files in the trash longer than `trash_retention_days` lose all their
   versions; the refcounts of their blocks drop in the same transaction.
2. `purge_versions`: versions superseded longer than `version_retention_days` ago go the
   same way; a file's latest version is always kept.
3. `expire_uploads`: sessions past their expiry (+ `upload_grace_hours`) are expired, and
   their staged copies that no version names are deleted; so are the objects of copies
   dedup-verify promoted or dropped more than `settled_copy_grace_s` ago (download URLs
   issued for a copy before it was settled stay valid that long), and of copies it
   quarantined more than `quarantine_retention_days` ago (kept that long for inspection;
   their rows stay, so the versions that named them still answer "damaged"). First, the
   landing objects of dedup or scrub runs killed between their two copies are deleted.
4. `expire_idempotency_keys`: the keys writes claimed (with the response a retry gets) are
   deleted `idempotency_retention_days` after their claim, long after any retry.
5. `delete_blocks`: blocks at refcount 0 for longer than `gc_grace_hours` are deleted — the
   row re-checked and deleted under its row lock, the object after that has committed
   (see `tessera.metadata.maintenance` for why that is safe). It first deletes the objects
   an interrupted run left behind (their rows' tombstones).
6. `recount_usage`: namespaces whose `bytes_used` (the quota counter every write moves)
   differs from what their live files hold are set right, in chunks by id: the drift is
   read in one snapshot and taken off the counter, so no count runs under a row lock (a
   row a writer holds is left for the next run). Drift from code deployed before its
   migration, or from a bug, does not last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from tessera.domain.object_keys import (
    LANDING_PREFIX,
    canonical_key,
    landed_block_id,
    quarantine_key,
)
from tessera.metadata.maintenance import MaintenanceTx

from .context import MaintenanceContext, log
from .results import GcResult


def _purge_batch_size(ctx: MaintenanceContext) -> int:
    # a purge row-locks every block of the files it purges: keep those transactions small
    return max(1, ctx.settings.batch_size // 10)


def purge_trash(ctx: MaintenanceContext, as_of: datetime) -> GcResult:
    """Delete files in the trash longer than the trash retention, with all their versions."""
    result = GcResult()
    cutoff = as_of - timedelta(days=ctx.settings.trash_retention_days)

    def batch() -> int:
        with ctx.repo.transaction(durable=False) as tx:  # a lost purge is simply redone
            files = tx.lock_trashed_files(cutoff, _purge_batch_size(ctx))
            if files:
                versions, freed = tx.purge_files(files)
                tx.release_refs(freed, as_of)
                result.trash_files_purged += len(files)
                result.versions_purged += versions
        return len(files)

    return ctx.run_batches(batch, result)


def purge_versions(ctx: MaintenanceContext, as_of: datetime) -> GcResult:
    """Delete versions superseded before the retention window; never a file's latest."""
    result = GcResult()
    cutoff = as_of - timedelta(days=ctx.settings.version_retention_days)
    after = (0, "", 0)

    def batch() -> int:
        nonlocal after
        with ctx.repo.transaction(durable=False) as tx:  # a lost purge is simply redone
            versions = tx.lock_expired_versions(cutoff, _purge_batch_size(ctx), after=after)
            if versions:
                tx.release_refs(tx.purge_versions(versions), as_of)
                result.versions_purged += len(versions)
                after = versions[-1]
        return len(versions)

    return ctx.run_batches(batch, result)


def expire_uploads(ctx: MaintenanceContext, as_of: datetime) -> GcResult:
    """Expire abandoned upload sessions and delete their staged copies nothing names; delete
    the objects of copies dedup settled (promoted/dropped) longer than the grace ago, and of
    copies it quarantined longer than the quarantine retention ago."""
    result = GcResult()
    cutoff = as_of - timedelta(hours=ctx.settings.upload_grace_hours)
    settled_before = as_of - timedelta(seconds=ctx.settings.settled_copy_grace_s)
    quarantined_before = as_of - timedelta(days=ctx.settings.quarantine_retention_days)
    size = ctx.settings.batch_size

    def settled_batch() -> int:
        with ctx.repo.transaction() as tx:
            copies = tx.lock_settled_copies(settled_before, size)
            # the rows stay locked until the objects are gone; a failed run is redone
            ctx.parallel(ctx.store.delete, [c[2] for c in copies])
            tx.mark_objects_gone([(c[0], c[1]) for c in copies])
        result.settled_deleted += len(copies)
        return len(copies)

    def quarantined_batch() -> int:
        with ctx.repo.transaction() as tx:
            copies = tx.lock_quarantined_copies(quarantined_before, size)
            # dedup moved each to its quarantine key after settling it: a run killed in
            # between left it at its staged key (deleting an absent object is a no-op)
            keys = [k for c in copies for k in (quarantine_key(c[2]), c[2])]
            ctx.parallel(ctx.store.delete, keys)
            tx.mark_objects_gone([(c[0], c[1]) for c in copies])
        result.quarantine_deleted += len(copies)
        return len(copies)

    def batch() -> int:
        with ctx.repo.transaction() as tx:
            expired = tx.expire_sessions(cutoff, size)
            copies = tx.delete_abandoned_copies(tx.lock_abandoned_copies(size, settled_before))
            # the rows stay locked (and their deletion uncommitted) until the objects are gone
            ctx.parallel(ctx.store.delete, [c[2] for c in copies])
            result.bytes_freed += sum(c[3] for c in copies)
            tx.delete_empty_sessions(size)
        result.sessions_expired += expired
        result.staged_deleted += len(copies)
        return expired + len(copies)

    _delete_stale_landings(ctx, result)
    for step in (settled_batch, quarantined_batch, batch):
        ctx.run_batches(step, result)
        if result.more:
            break
    return result


def expire_idempotency_keys(ctx: MaintenanceContext, as_of: datetime) -> GcResult:
    """Delete idempotency keys older than the retention: every commit claims one, and the
    response a retry would get is kept with it, so without this the table only grows."""
    result = GcResult()
    cutoff = as_of - timedelta(days=ctx.settings.idempotency_retention_days)
    keys = _expire(ctx, result, lambda tx, n: tx.expire_idempotency_keys(cutoff, n))
    result.idempotency_keys_expired = keys
    return result


def expire_run_records(ctx: MaintenanceContext, as_of: datetime) -> GcResult:
    """Delete the records of maintenance step runs older than `run_history_days`: a local
    cloud runs dedup and scrub's `reported` step every 10 s, two records each time.

    Records tell what really ran, so a run as of a later time (`as_of`) counts their age
    from now: it would delete the records of the runs that led to it."""
    result = GcResult()
    cutoff = min(as_of, ctx.clock.now()) - timedelta(days=ctx.settings.run_history_days)
    result.run_records_expired = _expire(ctx, result, lambda tx, n: tx.expire_runs(cutoff, n))
    return result


def _expire(
    ctx: MaintenanceContext, result: GcResult, expire: Callable[[MaintenanceTx, int], int]
) -> int:
    """Delete rows `batch_size` a transaction (`expire(tx, limit)`: how many it deleted)
    until a batch is not full or the step's budget is spent (then `result` says `more`);
    how many were deleted.

    A batch that is not full ends the step: rows that expire meanwhile wait for the next
    run, where "until one deletes none" chased them (each call of `expire_run_records`
    writes a run record of its own)."""

    deleted = 0

    def batch() -> int:
        nonlocal deleted
        with ctx.repo.transaction(durable=False) as tx:  # a lost delete is simply redone
            expired = expire(tx, ctx.settings.batch_size)
        deleted += expired
        return expired if expired == ctx.settings.batch_size else 0

    ctx.run_batches(batch, result)
    return deleted


def _delete_stale_landings(ctx: MaintenanceContext, result: GcResult) -> None:
    """Delete the landing objects runs killed mid-copy left behind (`verify.copy_verified`).

    A step holds its block's maintenance lock for as long as its landing object exists, so
    one whose lock is free is stale. The lock is held while the object is deleted: a step
    starting meanwhile waits, then lands its copy afresh. There are none but after a kill,
    so the listing is short and one pass does them all.
    """
    for key in list(ctx.store.list_keys(LANDING_PREFIX)):
        block = landed_block_id(key)
        if block is None:
            log.warning("gc: %s is not a landing key maintenance writes; left alone", key)
            continue
        with ctx.repo.transaction() as tx:
            if tx.block_lock(block, wait=False):
                ctx.store.delete(key)
                result.landings_deleted += 1


def delete_blocks(ctx: MaintenanceContext, as_of: datetime) -> GcResult:
    """Delete blocks unreferenced for longer than the grace period, after a re-check.

    Rows go in one short transaction (batches adapt so it stays near `lock_budget_ms`: the
    longest a commit wanting one of these rows could wait); the objects go after it has
    committed, under the per-block locks, unless a row came back meanwhile. The objects
    of rows an interrupted run deleted go first.
    """
    result = GcResult()
    cutoff = as_of - timedelta(hours=ctx.settings.gc_grace_hours)
    budget = ctx.settings.lock_budget_ms / 1000
    limit = min(64, ctx.settings.batch_size)
    after = ""

    def leftovers() -> int:
        with ctx.repo.transaction() as tx:
            claimed = tx.claim_deletions(ctx.settings.batch_size)
            _delete_objects_in(ctx, tx, claimed, result)
        result.interrupted_deleted += len(claimed)
        return len(claimed)

    def batch() -> int:
        nonlocal limit, after
        started = time.monotonic()
        with ctx.repo.transaction() as tx:
            candidates = tx.lock_unreferenced_blocks(cutoff, limit, after=after)
            if not candidates:
                return 0
            after = candidates[-1]
            deleted = tx.delete_unreferenced(candidates)
        per_block = (time.monotonic() - started) / len(candidates)
        # at most 1000 rows: each also holds an advisory lock, and the lock table is shared
        limit = max(8, min(1000, int(budget / max(per_block, 1e-6))))
        if deleted:
            with ctx.repo.transaction() as tx:
                # those a concurrent run claimed as leftovers are its to delete
                held = tx.claim_deletions(len(deleted), block_ids=[bid for bid, _ in deleted])
                _delete_objects_in(ctx, tx, held, result)
            result.blocks_deleted += len(deleted)
        skipped = len(candidates) - len(deleted)
        if skipped:
            result.blocks_skipped += skipped
            log.info("gc: %d unreferenced-looking blocks kept at the re-check", skipped)
        return len(candidates)

    ctx.run_batches(leftovers, result)
    return result if result.more else ctx.run_batches(batch, result)


_RECOUNT = "gc.recount_usage"  # its pass position (`MaintenanceTx.pass_position`)


def recount_usage(ctx: MaintenanceContext, as_of: datetime) -> GcResult:
    """Set right the quota counters that drifted (see the module docstring): every
    namespace, a chunk by id per transaction. When the step's budget is spent it reports
    `more`, and the next call resumes after the last namespace done (recorded with each
    chunk): started over, a pass over many namespaces would never get past the first."""
    result = GcResult()

    def chunk() -> int:
        with ctx.repo.transaction() as tx:
            tx.lock_pass(_RECOUNT)
            after = int(tx.pass_position(_RECOUNT) or 0)
            last, drifted = tx.usage_drift(after, ctx.settings.batch_size)
            result.usage_corrected += sum(
                tx.correct_usage(ns_id, drift) for ns_id, drift in drifted
            )
            done = last == after  # past the last namespace
            tx.set_pass_position(_RECOUNT, None if done else str(last))
        if drifted:
            log.warning("gc: quota counters of %d namespace(s) had drifted", len(drifted))
        return 0 if done else 1

    return ctx.run_batches(chunk, result)


def _delete_objects_in(
    ctx: MaintenanceContext,
    tx: MaintenanceTx,
    deleted: list[tuple[str, int]],
    result: GcResult,
) -> None:
    """Delete the objects of block rows deleted (their tombstones, claimed in `tx`), unless
    a row came back meanwhile; then drop the tombstones."""
    if not deleted:
        return
    absent = tx.lock_absent_blocks([bid for bid, _ in deleted])
    gone = [(bid, stored) for bid, stored in deleted if bid in absent]
    ctx.parallel(ctx.store.delete, [canonical_key(bid) for bid, _ in gone])
    tx.forget_deletions([bid for bid, _ in deleted])
    result.bytes_freed += sum(stored for _, stored in gone)
