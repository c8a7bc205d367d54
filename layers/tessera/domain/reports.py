"""Blocks a client could not read, reported so the server checks them now (not in DESIGN:
see the README's decisions).

A download fails on the device when a block's object is missing or does not decode, and
until now the server learnt of it only at its weekly scrub. A report queues a check of the
stored block (`maintenance.scrub.reported`): it is read and decoded as a client would, and
repaired (undeleted, or copied back from a duplicate or an earlier version) or quarantined
at once. The client downloads again on its next round.

Only a block of a version the caller can read may be reported, and a user's reports of a
block are checked at most once per `block_recheck_s`: a report costs the server one read of
a block the caller could fetch anyway, however often it is sent. A user's reports queue at
most `block_reports_per_hour` checks an hour (429 past that): a member who reported every
block of a large shared folder would have had the server read all of it. The answer tells
of the caller's own reports only: blocks are shared by content, and another user's report
would tell the caller that someone else holds that content.
"""

from __future__ import annotations

import math

from tessera.domain.changes import publish, side_event
from tessera.domain.errors import NotFound, TooManyRequests
from tessera.domain.files import serves_own_copy
from tessera.domain.models import BlockReportRequest, BlockReportResponse
from tessera.domain.services import Services
from tessera.domain.views import locate, require_file, view_transaction
from tessera.ports import ChangeEvent, Principal

REPORTED = "block_reported"  # the event's kind (on AWS, detail-type `tessera.block_reported`)
# A report still queued this long after it was made has lost what was to wake its check
# (a queue message dead-lettered after five failed tries): the next report announces it
# again. A check comes within a minute, or a minute after a failed one, so this is ample.
RESEND_AFTER_S = 20 * 60
BUDGET_WINDOW_S = 3600  # the window of `block_reports_per_hour`

# Why a block in another state is not checked on a report
_NOT_CHECKED = {
    "staged": "the block is still being verified: it is checked without a report",
    "restoring": "the block is being restored from cold storage: download again later",
    "quarantined": "the block is damaged beyond repair: this folder's members are told",
}


def report_block(
    svc: Services, principal: Principal, req: BlockReportRequest
) -> BlockReportResponse:
    """Queue a check of `req.block_id`, a block of `req.rev` of a file the caller can read,
    in the trash too (else 404, whether it exists or not), and tell scrub through the
    change feed."""
    bid = req.block_id
    event: ChangeEvent | None = None
    with view_transaction(svc, principal) as (store, view):
        loc = locate(store, view, file_id=req.file_id, include_deleted=True)
        row = require_file(loc, req.file_id)
        if store.version(row.ns_id, row.file_id, req.rev) is None:
            raise NotFound(f"no rev {req.rev} of this file")
        found = store.version_blocks(row.ns_id, row.file_id, req.rev, block_id=bid)
        if not found:
            raise NotFound(f"block {bid} is not in rev {req.rev} of this file")
        vb = found[0]
        if serves_own_copy(vb, vb.state):
            return _answer(bid, False, _NOT_CHECKED["staged"])
        if vb.state not in ("live", "cold"):
            return _answer(bid, False, _NOT_CHECKED.get(vb.state, f"the block is {vb.state}"))
        queued_lately, frees_in = store.recent_reports(principal.user_id, BUDGET_WINDOW_S)
        report = store.report_block(
            bid,
            (row.ns_id, row.file_id, req.rev),
            reason=req.reason or "unreadable",
            user_id=principal.user_id,
            recheck_s=svc.settings.block_recheck_s,
            resend_s=RESEND_AFTER_S,
        )
        if report.new and queued_lately >= svc.settings.block_reports_per_hour:
            # raised inside the transaction: the report just written is rolled back
            raise TooManyRequests(
                f"you reported {queued_lately} blocks in the last hour, the most a user may:"
                " try again later",
                max(1, math.ceil(frees_in)),
            )
        if report.new:
            ident = f"{bid}:{report.reported_at.isoformat()}"
            event = side_event(row.ns_id, REPORTED, ident, {"block_id": bid}, prefix="reported-")
            store.queue_event(event)
    if event is not None:
        publish(svc.feed, [event])
    if report.checked_at is None:
        return _answer(bid, True, "a check of the stored block is queued: download again soon")
    return _answer(
        bid,
        False,
        f"the stored block was checked at {report.checked_at.isoformat()} and is intact:"
        " download again (if it fails again, the fault lies between the store and you)",
    )


def _answer(block_id: str, queued: bool, detail: str) -> BlockReportResponse:
    return BlockReportResponse(block_id=block_id, queued=queued, detail=detail)
