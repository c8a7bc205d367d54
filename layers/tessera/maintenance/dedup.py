"""dedup-verify (DESIGN §5): verify staged copies, then promote, drop or quarantine them.

A staged copy is a block a client uploaded to `staging/<upload_id>/<hex>` because it could
not prove it may read the server's copy. For each one, without holding any lock: read it,
take the block key of the key version in its header, decode (decrypt, decompress, re-hash).
Then, under the per-block maintenance lock and the copy's row lock:

- verified, and a live canonical copy exists in the hot tier, read and verified too (as its
  row records it) → repoint the versions to it, drop the staged copy;
- verified, and none exists (or it is lost, damaged, quarantined, or cold) → copy it to
  `blocks/<hex>`, mark the block live, repoint the versions, then drop the staged copy. A
  fresh upload of a cold block replaces the cold object: its uploader (and anyone else)
  reads it at once instead of waiting hours on a restore. Where `blocks/<hex>` may hold
  the block (cold, restoring), the copy is verified at a landing key before it replaces
  it (`verify.copy_verified`): an uploader's PUT of other bytes after the read must not
  destroy the only good copy;
- not verified → quarantine: move it to `quarantine/...`, mark the versions that use it
  damaged and tell their namespaces on the change feed. It is never promoted, and no
  version is ever pointed at the canonical block on its account.

A promoted or dropped copy's object is not deleted here: download URLs issued for it before
it was settled stay valid for up to `presign_ttl_s`. gc's `expire_uploads` deletes it once
it has been settled for `settled_copy_grace_s`. A quarantined copy is moved at once (its
bytes are bad anyway), after the transaction that settled it has committed; gc deletes
both its keys after `quarantine_retention_days`, so a run killed midway leaves nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from tessera.domain.object_keys import canonical_key, quarantine_key
from tessera.metadata.maintenance import StagedCopy
from tessera.ports import StorageTier

from .context import MaintenanceContext, log
from .damage import publish_damage
from .results import DedupResult
from .verify import (
    MISSING,
    NOT_RESTORED,
    Check,
    KeyUnavailableError,
    check_stored,
    copy_verified,
)


def verify_staged(
    ctx: MaintenanceContext, as_of: datetime, *, upload_ids: Sequence[str] | None = None
) -> DedupResult:
    """Verify up to `max_batches_per_step` batches of staged copies (all, or those of
    `upload_ids`); `more` is set when copies are left for the next invocation."""
    result = DedupResult()
    after = ("", "")
    for _ in ctx.batches():
        copies = ctx.repo.staged_copies(ctx.settings.batch_size, after=after, upload_ids=upload_ids)
        live = ctx.repo.live_blocks([c.block_id for c in copies])
        reads = ctx.parallel(partial(_read, ctx, live), copies)
        failed = [r for r in reads if isinstance(r, Exception)]
        down = [e for e in failed if not isinstance(e, KeyUnavailableError)]
        if len(down) > 1 and len(down) == len(copies):
            # every read failed: the store or the key service is down, not a copy. The run
            # fails (a queue's batch comes again, a state machine retries), rather than
            # walk every staged copy, each with its failing call. (One copy alone may be
            # the trouble: failing for it, a queue's batch went to its dead letters. A key
            # version not to be had is not the service down: a batch of copies under a
            # lost one failed every run, and held back every copy after them.)
            raise down[0]
        for copy, read in zip(copies, reads, strict=True):
            if isinstance(read, Exception):
                result.errors.append(f"{copy.staged_key}: {read}")
            else:
                _settle(ctx, copy, read, as_of, result)
        if len(copies) < ctx.settings.batch_size:
            break
        after = (copies[-1].upload_id, copies[-1].block_id)
    else:
        result.more = True
    publish_damage(ctx, as_of)
    return result


@dataclass(frozen=True)
class _Verdicts:
    """What reading one staged copy found, before any lock is taken."""

    copy: Check
    # The canonical object's verdict, read when the copy verified and the block's row was
    # live: the copy is dropped only for a canonical object that is the block. A HEAD
    # alone dropped it for one damaged at the same size, gc deleted the good bytes, and
    # scrub could then only quarantine the block for every version naming it.
    canonical: Check | None


def _read(ctx: MaintenanceContext, live: set[str], copy: StagedCopy) -> _Verdicts | Exception:
    """The verdicts on one staged copy (and on the canonical object, when the copy verified
    and its block is in `live`), or why reading failed (the store or the key service failing
    for a while): that copy waits for the next run, and the rest of the batch goes on,
    where one failure had failed the batch, and every run met it again."""
    try:
        check = check_stored(
            ctx.store,
            ctx.keys,
            copy.staged_key,
            copy.block_id,
            expect_plain_size=copy.size,
            issued_key_version=copy.key_version,
        )
        live_and_verified = check.ok and copy.block_id in live
        return _Verdicts(check, _check_canonical(ctx, copy) if live_and_verified else None)
    except Exception as e:
        log.warning("dedup: could not read %s: left for later", copy.staged_key, exc_info=True)
        return e


def _check_canonical(ctx: MaintenanceContext, copy: StagedCopy) -> Check:
    """The verdict on the canonical object of `copy`'s block."""
    bid = copy.block_id
    return check_stored(ctx.store, ctx.keys, canonical_key(bid), bid, expect_plain_size=copy.size)


def _settle(
    ctx: MaintenanceContext,
    seen: StagedCopy,
    verdicts: _Verdicts,
    as_of: datetime,
    result: DedupResult,
) -> None:
    """Apply the verdicts on one copy, if no other worker settled it meanwhile."""
    store, bid, check, canonical = ctx.store, seen.block_id, verdicts.copy, verdicts.canonical
    quarantined: str | None = None
    with ctx.repo.transaction() as tx:
        tx.block_lock(bid)
        copy = tx.lock_staged_copy(seen.upload_id, bid)
        if copy is None or copy.staged_key != seen.staged_key:
            return  # settled by a concurrent run, or expired and collected by gc
        if not check.ok:
            tx.settle_copy(copy, "quarantined")
            damaged = tx.record_damage(
                bid, staged_key=copy.staged_key, reason=check.reason, at=as_of
            )
            row = tx.block(bid, for_update=True)
            if (
                row is not None
                and row.state == "staged"
                and tx.other_pending_copies(bid, copy.staged_key) == 0
            ):
                tx.set_state(bid, "quarantined", from_states=["staged"])
            result.quarantined += 1
            result.versions_damaged += damaged
            quarantined = copy.staged_key
            log.warning("dedup: quarantined %s (%s): %s", copy.staged_key, bid, check.reason)
        else:
            result.verified += 1
            row = tx.block(bid)
            target = canonical_key(bid)
            head = store.head(target) if row is not None and row.state == "live" else None
            if canonical is None and head is not None and head.tier is StorageTier.HOT:
                # made live since the batch was listed (often by this run: two uploads of
                # one block in a batch): read now, under the lock, as the HEAD is
                try:
                    canonical = _check_canonical(ctx, copy)
                except Exception as e:  # the store failing: this copy waits, the run goes on
                    log.warning("dedup: could not read %s: left for later", target, exc_info=True)
                    result.errors.append(f"{copy.staged_key}: {e}")
                    return
            # The canonical object must be the block as its row records it (verified, at
            # the stored size and key version downloads are given) and still be that
            # object, in the hot tier. Anything else (cut short, overwritten, damaged at
            # its size, another encoding, moved cold) the verified copy replaces below.
            # Another maintenance step may replace the object after the read, but only
            # with verified bytes.
            if (
                head is not None
                and head.tier is StorageTier.HOT
                and row is not None
                and canonical is not None
                and canonical.ok
                and canonical.key_version == row.key_version
                and head.size == canonical.stored_size
                and row.stored_size in (None, head.size)
            ):
                tx.settle_copy(copy, "dropped")
                result.dropped += 1
                result.bytes_freed += check.stored_size
            else:
                if canonical is not None and not canonical.ok and canonical.reason != NOT_RESTORED:
                    result.canonical_replaced += 1
                    log.warning("dedup: %s did not verify (%s): replaced", target, canonical.reason)

                # A cold or restoring row's object (or a live row's, out of the hot tier)
                # is the block: a copy that does not verify must never replace it. The row
                # is locked before the verified copy replaces it: given up on after (a
                # download or a batch commit holds it across S3 calls), it left new bytes
                # under a row describing the old ones, and later copies were dropped
                # against them on a HEAD alone. Not across the copies and the read before:
                # a commit needing the row waits holding its namespace.
                def lock_row() -> object:
                    return tx.block(bid, for_update=True)

                promoted = copy_verified(
                    store,
                    ctx.keys,
                    copy.staged_key,
                    target,
                    bid,
                    plain_size=copy.size,
                    keep_target=row is not None and row.state in ("live", "cold", "restoring"),
                    before_replacing=lock_row,
                )
                if not promoted.ok:
                    # its uploader PUT other bytes since it was read: the next run settles
                    # the copy (reading what is there now)
                    log.warning("dedup: %s changed after it was verified", copy.staged_key)
                    return
                lock_row()  # (taken already when the copy replaced an object)
                # what the copy took and verified where it landed: the first read's
                # bytes may have been replaced since by another valid encoding (another
                # stored size, another key version) through a second URL
                tx.mark_live(
                    bid,
                    size=promoted.plain_size,
                    stored_size=promoted.stored_size,
                    key_version=promoted.key_version,
                )
                tx.clear_damage(bid)
                tx.settle_copy(copy, "promoted")
                result.promoted += 1
            tx.repoint_versions(copy.staged_key)
    if quarantined is not None:
        # only once the row says quarantined: moved before, then rolled back, the copy
        # left a quarantine/ object no row names, for ever; gc deletes both keys of a
        # quarantined row after the retention, wherever a killed run left the bytes
        if check.reason != MISSING:
            store.copy(quarantined, quarantine_key(quarantined))
        store.delete(quarantined)
