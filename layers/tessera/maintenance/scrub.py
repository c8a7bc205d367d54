"""Scrub: check the blocks clients could not read and that every block has its object,
re-verify a sample of them; report damage and repair what can be repaired.

The blocks clients reported unreadable (step `reported`, POST /v1/blocks/report) are read
and decoded first, oldest report first. On AWS each report's event (`block_reported`, via
the change feed and the bus) puts it on the scrub queue, which runs this check within a
minute; locally the scheduler runs the step every `reported_interval_s`. The weekly run
sweeps up any report whose event went astray.

The inventory (step `inventory`) lists the store's canonical objects beside the live and
cold rows, in block id order, a chunk at a time (a pass resumes where the last call
stopped): every block whose object is missing, or not the size its row records, goes to the
repair below. One LIST reads 1,000 keys, so a whole pass costs little; it finds what a bug
deleted or overwrote within the week, while the object's earlier version is still kept.
Damage that keeps the size (a flipped bit) takes reading the block: the sample does that.

A sample of `scrub_sample` live blocks, starting at a random block id, is read and decoded
exactly as a client would (the key version in the metadata, decrypt, decompress, re-hash).
A block that fails is re-checked under the per-block lock (a concurrent promotion may have
just rewritten it). An object found in the cold tier, unrestored, under a live row is not
damage: the row is recorded cold, and the next download restores it. A block still damaged
is rewritten from a duplicate that verifies: a staged copy of the same id, else an earlier
version of its object the store kept (the bucket is versioned: a block a bug deleted or
overwrote is kept 30 days). With none, it is quarantined (downloads refuse it), and the
versions using it are marked damaged and their namespaces told.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial

from tessera.domain.object_keys import CANONICAL_PREFIX, canonical_key
from tessera.metadata.maintenance import BlockRow, MaintenanceTx, ReportedBlock
from tessera.ports import EarlierVersion, StorageTier

from .context import MaintenanceContext, log
from .damage import publish_damage
from .results import ScrubResult
from .verify import MISSING, NOT_RESTORED, Check, check_stored, copy_verified


def _check(ctx: MaintenanceContext, row: BlockRow) -> Check:
    if row.state == "cold":
        head = ctx.store.head(canonical_key(row.block_id))
        if head is None:
            return Check(False, MISSING)
        if head.tier is StorageTier.COLD and not head.restored:
            # reading it needs a restore (hours, and a fee on S3): check what head can tell
            if row.stored_size is not None and head.size != row.stored_size:
                return Check(False, f"stored size {head.size}, metadata says {row.stored_size}")
            return Check(True, stored_size=head.size)
    check = check_stored(
        ctx.store,
        ctx.keys,
        canonical_key(row.block_id),
        row.block_id,
        expect_plain_size=row.size,
        expect_key_version=row.key_version,
        # recorded, so it existed: its key not to be had now is the key service failing,
        # no verdict (judged "unknown", every block under it had been quarantined)
        issued_key_version=row.key_version,
    )
    if check.ok and row.stored_size is not None and check.stored_size != row.stored_size:
        why = f"stored size {check.stored_size}, metadata says {row.stored_size}"
        return replace(check, ok=False, reason=why, unrecorded=True)
    if row.state == "cold" and check.reason == NOT_RESTORED:
        # its restored copy expired between the head and the read: as intact as head said
        return Check(True, stored_size=row.stored_size or 0)
    return check


_INVENTORY = "scrub.inventory"  # its pass position (`MaintenanceTx.pass_position`)


def inventory(ctx: MaintenanceContext, as_of: datetime) -> ScrubResult:
    """Compare the store's listing of canonical objects with the live and cold rows, a
    chunk of `batch_size` rows per batch, resuming the pass under way; repair (or
    quarantine) each block whose object is missing or of another size than its row says.

    The step's budget is looked at between repairs too (a chunk can hold hundreds, a
    second each on S3, which ran the function past Lambda's 15 minutes): the pass then
    resumes at the first suspect left, having repaired at least one."""
    result = ScrubResult()
    deadline = ctx.deadline()

    def chunk() -> int:
        with ctx.repo.transaction() as tx:
            after = tx.pass_position(_INVENTORY) or ""
            rows = tx.stored_after(after, ctx.settings.batch_size)
            if not rows:  # the pass is done: the next run starts another
                tx.set_pass_position(_INVENTORY, None)
                return 0
        suspects, position = _compare_with_listing(ctx, after, rows, result)

        def before(bid: str) -> str:
            return max((r.block_id for r in rows if r.block_id < bid), default=after)

        cut_short, busy = False, ""
        for n, bid in enumerate(suspects):
            if n and (time.monotonic() >= deadline or ctx.stopping.is_set()):
                position, cut_short = before(bid), True
                break
            if not ctx.attempt(bid, partial(repair, ctx, bid, as_of, result), result):
                busy = busy or bid
        if busy:  # this run ends, and the next resumes at it, not a week later at the next pass
            position = min(position, before(busy))
        last = (
            not (cut_short or busy)
            and len(rows) < ctx.settings.batch_size
            and position == rows[-1].block_id
        )
        with ctx.repo.transaction() as tx:  # after the repairs: a killed run redoes them
            tx.set_pass_position(_INVENTORY, None if last else position)
        return 0 if last or busy else len(rows)

    ctx.run_batches(chunk, result)
    publish_damage(ctx, as_of)
    return result


def _compare_with_listing(
    ctx: MaintenanceContext, after: str, rows: list[BlockRow], result: ScrubResult
) -> tuple[list[str], str]:
    """The ids among `rows` (in id order, after block id `after`) whose object the listing
    lacks or shows at another stored size, and the block id the comparison got to.

    Keys sort as block ids do (the same lowercase hex after a fixed prefix). The listing
    also holds objects without a live row (gc's pending deletes): twice the rows' count is
    listed, and rows past the last key listed wait for the next chunk."""
    limit = 2 * len(rows)
    listed = dict(
        ctx.store.list_sizes(
            CANONICAL_PREFIX,
            start_after=canonical_key(after) if after else None,
            limit=limit,
        )
    )
    covered = rows
    if len(listed) == limit:  # more keys follow: only rows up to the last one are covered
        last = max(listed)
        covered = [r for r in rows if canonical_key(r.block_id) <= last]
        if not covered:  # that many objects without a row: go on past them
            return [], "b3:" + last.removeprefix(CANONICAL_PREFIX)
    suspects = []
    for row in covered:
        size = listed.get(canonical_key(row.block_id))
        if size is None or (row.stored_size is not None and size != row.stored_size):
            suspects.append(row.block_id)
    result.inventoried += len(covered)
    return suspects, covered[-1].block_id


# A block's reports claimed by a run are held this long: past a Lambda's 15 minutes (so no
# run still holds them) and below the scrub queue's 30-minute visibility timeout (so the
# redelivery of a batch a killed run left finds them free)
REPORT_HOLD_S = 16 * 60.0
# A check that failed is tried again this long after (by this run's queue message, which
# fails and comes back, or the next run)
REPORT_RETRY_S = 60.0
REPORTS_PER_BATCH = 50  # blocks claimed at a time


def reported(
    ctx: MaintenanceContext, as_of: datetime, *, block_ids: Sequence[str] | None = None
) -> ScrubResult:
    """Check the blocks clients reported unreadable, oldest report first (only blocks among
    `block_ids`, if given: the scrub queue's messages name them); repair or quarantine each
    one that fails, then record its reports checked.

    A block's reports are claimed together first (`claim_reports`), so runs at once (queue
    pollers, the weekly run) never read one block twice. A check that fails is recorded in
    `errors` and put off for `REPORT_RETRY_S`: it holds back no report behind it. Claimed
    blocks the step's budget leaves unchecked are freed at once.

    A reported block found damaged is seldom alone (a bug that deleted one block of a file
    deleted others): the other blocks of the version it was read for are then checked as
    the inventory checks, by their objects' presence and size (`_check_version`), so the
    client's next try finds the file mended, not its next lost block."""
    result = ScrubResult()
    looked_over: set[tuple[int, str, int]] = set()  # versions whose blocks were checked
    deadline = ctx.deadline()

    def batch() -> int:
        with ctx.repo.transaction() as tx:
            claimed = tx.claim_reports(REPORTS_PER_BATCH, block_ids, hold_s=REPORT_HOLD_S)
        for n, report in enumerate(claimed):
            bid = report.block.block_id
            if time.monotonic() >= deadline:
                with ctx.repo.transaction() as tx:
                    for left in claimed[n:]:
                        tx.put_off_reports(left.block.block_id, 0)
                return len(claimed)  # the budget is spent: `more`
            try:
                _check_reported(ctx, report, as_of, result, looked_over, deadline)
            except Exception as e:  # whatever it was: tried again later, not in a loop now
                log.exception("scrub: the check of reported block %s failed", bid)
                result.errors.append(f"{bid}: {e}")
                result.put_off += 1
                with ctx.repo.transaction() as tx:
                    tx.put_off_reports(bid, REPORT_RETRY_S)
                continue
            with ctx.repo.transaction() as tx:  # after the check: a killed run redoes it
                tx.mark_block_checked(bid)
        return len(claimed)

    ctx.run_batches(batch, result)
    publish_damage(ctx, as_of)
    return result


def _check_reported(
    ctx: MaintenanceContext,
    report: ReportedBlock,
    as_of: datetime,
    result: ScrubResult,
    looked_over: set[tuple[int, str, int]],
    deadline: float,
) -> None:
    """Check one reported block (one that moved on, quarantined or restoring, needs no
    check); when it was damaged, the rest of its version too, once per run."""
    if report.block.state not in ("live", "cold"):
        return
    damaged = result.damaged
    _verify(ctx, report.block, as_of, result)
    if result.damaged > damaged and report.version not in looked_over:
        looked_over.add(report.version)
        _check_version(ctx, report.version, as_of, result, deadline)


def _check_version(
    ctx: MaintenanceContext,
    version: tuple[int, str, int],
    as_of: datetime,
    result: ScrubResult,
    deadline: float,
) -> None:
    """Repair each block of `version` whose object is missing or of another size than its
    row records (`head()`, `io_workers` at a time: no block is read), `batch_size` blocks a
    chunk, until `batch_size` were repaired or `deadline` (monotonic) passed: a huge file
    lost whole is mended a part per report (its client reports the next lost block), or by
    the weekly inventory."""
    size, after, repairs = ctx.settings.batch_size, "", 0
    while True:
        with ctx.repo.transaction() as tx:
            chunk = tx.version_stored_blocks(version, after, size)
        heads = ctx.parallel(lambda row: ctx.store.head(canonical_key(row.block_id)), chunk)
        for row, head in zip(chunk, heads, strict=True):
            if repairs >= size or time.monotonic() >= deadline:
                return
            result.inventoried += 1
            if head is None or (row.stored_size is not None and head.size != row.stored_size):
                repairs += 1
                repair(ctx, row.block_id, as_of, result)  # (a failure puts the report off)
        if len(chunk) < size:
            return
        after = chunk[-1].block_id


def scrub(ctx: MaintenanceContext, as_of: datetime, *, start: str | None = None) -> ScrubResult:
    """Re-verify `scrub_sample` live blocks from `start` (default: a random block id)."""
    result = ScrubResult()
    start = start if start is not None else "b3:" + secrets.token_hex(32)
    with ctx.repo.transaction() as tx:
        sample = tx.sample_stored(start, ctx.settings.scrub_sample)
    for row in sample:
        ctx.attempt(row.block_id, partial(_verify, ctx, row, as_of, result), result)
    publish_damage(ctx, as_of)
    return result


def _verify(ctx: MaintenanceContext, row: BlockRow, as_of: datetime, result: ScrubResult) -> None:
    """Read and decode one block as a client would; repair it (under its lock) if it fails.

    The first read takes no lock, so a download is never kept waiting on a healthy block."""
    result.checked += 1
    try:
        healthy = _check(ctx, row).ok
    except Exception:  # e.g. moved to the cold tier meanwhile: settled by the re-check
        log.info("scrub: %s unreadable on the first pass", row.block_id, exc_info=True)
        healthy = False
    if healthy:
        result.ok += 1
    else:  # (what stops the repair is the caller's: a report is put off and tried again)
        repair(ctx, row.block_id, as_of, result)


def repair(ctx: MaintenanceContext, bid: str, as_of: datetime, result: ScrubResult) -> None:
    """Check one block again under its lock; repair it from a verified duplicate or earlier
    version, or quarantine it and record the damage. A block moved on meanwhile is left
    alone."""
    with ctx.repo.transaction() as tx:
        tx.block_lock(bid)
        row = tx.block(bid)
        if row is None or row.state not in ("live", "cold"):
            result.ok += 1  # deleted, moved or already handled since it was sampled
            return
        check = _check(ctx, row)
        # Deleted by mistake, and kept by the store: back as it was, in its tier (a copy
        # from an earlier version cannot take a cold one), if it checks out
        undeleted = check.reason == MISSING and ctx.store.undelete(canonical_key(bid))
        if undeleted:
            check = _check(ctx, row)
        if check.ok:
            if undeleted:
                result.damaged += 1
                result.repaired += 1
                log.warning("scrub: %s had been deleted: its object is back", bid)
            else:
                result.ok += 1
            return
        if check.reason == NOT_RESTORED and row.state == "live":
            # Intact as far as anyone knows, only in the wrong tier for a live row: record
            # it cold, so the next download restores it instead of failing on it.
            tx.set_state(bid, "cold", from_states=["live"])
            result.found_cold += 1
            log.warning("scrub: %s is live but its object is cold: recorded cold", bid)
            return
        result.damaged += 1
        if check.unrecorded and row.state == "live":
            # Intact bytes its row misdescribes (a copy landed, then its row update was
            # lost): downloaders were handed the wrong key version. The row is mended,
            # where quarantine had told every holder of damage over good bytes. (The
            # upsert locks the row itself.)
            tx.mark_live(
                bid, size=row.size, stored_size=check.stored_size, key_version=check.key_version
            )
            result.repaired += 1
            log.warning("scrub: %s's row was mended: %s", bid, check.reason)
            return
        log.error("scrub: %s is damaged: %s", bid, check.reason)
        versions = ctx.store.earlier_versions(canonical_key(bid))
        repaired = _copy_back(ctx, tx, row, versions)
        if repaired is not None:
            source, copied = repaired
            tx.mark_live(  # what the copy took (see dedup's promotion)
                bid,
                size=row.size,
                stored_size=copied.stored_size,
                key_version=copied.key_version,
            )
            result.repaired += 1
            log.warning("scrub: repaired %s from %s", bid, source)
            return
        if not tx.set_state(bid, "quarantined", from_states=[row.state]):
            # moved on since it was read (to cold by the cold step, to restoring by a
            # download; neither waits for the block's lock): the next scrub looks again
            # rather than tell its holders of damage on a block still served
            log.warning("scrub: %s changed state while it was checked; left for later", bid)
            return
        tx.record_damage(bid, staged_key=None, reason=check.reason, at=as_of)
        result.unrepaired += 1
        cold = [v.version_id for v in versions if v.tier is StorageTier.COLD]
        if cold:
            why = f"earlier version {cold[0]} is in the cold tier: docs/deploy.md"
        else:
            why = "no duplicate or earlier version to repair from"
        result.errors.append(f"{bid}: {check.reason} ({why})")


def _copy_back(
    ctx: MaintenanceContext, tx: MaintenanceTx, row: BlockRow, versions: list[EarlierVersion]
) -> tuple[str, Check] | None:
    """Copy the first duplicate of the block that verifies over its canonical object: a
    staged copy, else one of its hot earlier `versions`, newest first (a cold one needs a
    restore first). Where it came from and what the copy took; None when none verified.

    The canonical object is never replaced by a copy that does not verify: a repair is
    rare, and what it held may be intact after all (a cold row's restored copy expiring
    between the head and the read)."""
    bid, target = row.block_id, canonical_key(row.block_id)
    sources: list[tuple[str, str | None]] = [(key, None) for key in tx.duplicate_copies(bid)]
    sources += [(target, v.version_id) for v in versions if v.tier is StorageTier.HOT]
    for key, version in sources:
        if version is None:  # a staged copy: read first, not copied when it is bad
            dup = check_stored(ctx.store, ctx.keys, key, bid, expect_plain_size=row.size)
            if not dup.ok:
                continue
        try:
            copied = copy_verified(
                ctx.store,
                ctx.keys,
                key,
                target,
                bid,
                plain_size=row.size,
                keep_target=True,
                version=version,
                # the row locked before the copy replaces the object, as dedup's promotion
                before_replacing=lambda: tx.block(bid, for_update=True),
            )
        except KeyError:  # gone since it was listed (expired, or its session settled)
            continue
        if copied.ok:
            return (key if version is None else f"{key} version {version}"), copied
    return None
