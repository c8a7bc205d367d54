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

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial

from tessera.domain.object_keys import canonical_key, quarantine_key
from tessera.metadata.maintenance import BlockRow, StagedCopy
from tessera.ports import StorageTier, StoredObject

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
        reads = ctx.parallel(partial(_read_copy, ctx), copies)
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
        live = ctx.repo.live_blocks([c.block_id for c in copies])
        canonicals = _read_canonicals(ctx, copies, reads, live)
        for copy, read in zip(copies, reads, strict=True):
            canonical = canonicals.get(copy.block_id)
            if isinstance(read, Exception):
                result.errors.append(f"{copy.staged_key}: {read}")
            elif isinstance(canonical, Exception):
                result.errors.append(f"{copy.staged_key}: {canonical}")
            else:
                settle = partial(_settle, ctx, copy, read, canonical, as_of, result)
                ctx.attempt(copy.staged_key, settle, result)
        if len(copies) < ctx.settings.batch_size:
            break
        after = (copies[-1].upload_id, copies[-1].block_id)
    else:
        result.more = True
    publish_damage(ctx, as_of)
    return result


def _read(what: str, read: Callable[[], Check]) -> Check | Exception:
    """The verdict of `read`, or why reading `what` failed (the store or the key service
    failing for a while): that copy waits for the next run, and the rest of the batch goes
    on, where one failure had failed the batch, and every run met it again."""
    try:
        return read()
    except Exception as e:
        log.warning("dedup: could not read %s: left for later", what, exc_info=True)
        return e


def _read_copy(ctx: MaintenanceContext, copy: StagedCopy) -> Check | Exception:
    """The verdict on one staged copy."""
    return _read(
        copy.staged_key,
        lambda: check_stored(
            ctx.store,
            ctx.keys,
            copy.staged_key,
            copy.block_id,
            expect_plain_size=copy.size,
            issued_key_version=copy.key_version,
        ),
    )


def _read_canonicals(
    ctx: MaintenanceContext,
    copies: Sequence[StagedCopy],
    reads: Sequence[Check | Exception],
    live: set[str],
) -> dict[str, Check | Exception]:
    """The verdict on the canonical object of each block in `live` a copy of which
    verified, by block id: read once a batch (however many copies of the block it holds),
    outside the locks. A copy is dropped only for a canonical object that is the block: a
    HEAD alone dropped it for one damaged at the same size, gc deleted the good bytes, and
    scrub could then only quarantine the block for every version naming it."""
    verified = {
        copy.block_id: copy
        for copy, read in zip(copies, reads, strict=True)
        if isinstance(read, Check) and read.ok and copy.block_id in live
    }
    found = ctx.parallel(partial(_read_canonical, ctx), list(verified.values()))
    return dict(zip(verified, found, strict=True))


def _read_canonical(ctx: MaintenanceContext, copy: StagedCopy) -> Check | Exception:
    """The verdict on the canonical object of `copy`'s block."""
    bid, key = copy.block_id, canonical_key(copy.block_id)
    return _read(
        key, lambda: check_stored(ctx.store, ctx.keys, key, bid, expect_plain_size=copy.size)
    )


def _holds_the_block(
    row: BlockRow | None, head: StoredObject | None, canonical: Check | None
) -> bool:
    """Whether the canonical object is the block as its row records it (verified, at the
    stored size and key version downloads are given) and still that object, in the hot
    tier. Anything else (cut short, overwritten, damaged at its size, another encoding,
    moved cold) a verified copy replaces. Another maintenance step may replace the object
    after the read, but only with verified bytes."""
    return (
        head is not None
        and head.tier is StorageTier.HOT
        and row is not None
        and canonical is not None
        and canonical.ok
        and canonical.key_version == row.key_version
        and head.size == canonical.stored_size
        and row.stored_size in (None, head.size)
    )


def _settle(
    ctx: MaintenanceContext,
    seen: StagedCopy,
    check: Check,
    canonical: Check | None,
    as_of: datetime,
    result: DedupResult,
) -> None:
    """Apply the verdicts on one copy (and on its block's canonical object, when read), if
    no other worker settled it meanwhile."""
    store, bid = ctx.store, seen.block_id
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
                read = _read_canonical(ctx, copy)
                if isinstance(read, Exception):  # this copy waits, the run goes on
                    result.errors.append(f"{copy.staged_key}: {read}")
                    return
                canonical = read
            if _holds_the_block(row, head, canonical):
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
