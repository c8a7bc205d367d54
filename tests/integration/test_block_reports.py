"""Blocks a client could not read (POST /v1/blocks/report): who may report which block, how
often a block is checked, and scrub's `reported` step repairing them at once."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from tessera.blocks import BlockError, block_id
from tessera.domain import reports, sharing
from tessera.domain.errors import NotFound, TooManyRequests
from tessera.domain.models import (
    BlockReportRequest,
    BlockReportResponse,
    FileEntry,
    InvitationRequest,
    ShareRequest,
)
from tessera.domain.object_keys import canonical_key
from tessera.maintenance import ScrubResult
from tessera.maintenance.runner import ReportsLeft, handle_event, run_step
from tessera.maintenance.scheduler import MaintenanceScheduler
from tessera.metadata.locks import LockClass
from tessera.metadata.outbox import relay_outbox
from tessera.ports import Principal
from tests.concurrency import run_at_once

from .test_domain_files import race_held
from .test_maintenance_world import ALICE, BLOCK, BOB, MALLORY, World, chunks, make_world


def _report(w: World, who: Principal, entry: FileEntry, bid: str) -> BlockReportResponse:
    req = BlockReportRequest(file_id=entry.file_id, rev=entry.rev, block_id=bid, reason="test")
    return reports.report_block(w.svc, who, req)


def _reported(w: World, **kw: object) -> ScrubResult:
    result = run_step(w.ctx, "scrub", "reported", **kw)  # type: ignore[arg-type]
    assert isinstance(result, ScrubResult)
    return result


def _overwritten(w: World, path: str = "/a.bin") -> tuple[bytes, FileEntry, str]:
    """Alice's verified two-block file whose second block a bug overwrote with other bytes
    (the store keeps what it held): (its bytes, its entry, that block's id)."""
    data = secrets.token_bytes(2 * BLOCK)
    entry = w.put(ALICE, path, data)
    w.run("dedup")
    w.collect_settled()  # (the promoted copy's object would repair it)
    bad = block_id(chunks(data)[1])
    w.store.put(canonical_key(bad), secrets.token_bytes(300))
    with pytest.raises(BlockError):
        w.get(ALICE, path)
    return data, entry, bad


def _report_events(w: World) -> list[str]:
    return [str(e.payload["block_id"]) for e in w.feed.events if e.kind == reports.REPORTED]


def _pending(w: World) -> list[str]:
    return [str(r[0]) for r in w.sql("SELECT block_id FROM block_reports WHERE checked_at IS NULL")]


def test_a_reported_block_is_checked_and_repaired_at_once(world: World) -> None:
    data, entry, bad = _overwritten(world)
    answer = _report(world, ALICE, entry, bad)
    assert answer.queued and "queued" in answer.detail
    # the event that wakes scrub on AWS: through the outbox, on a seq no long-poll sees
    [event] = [e for e in world.feed.events if e.kind == reports.REPORTED]
    assert event.seq < 0 and event.payload == {"block_id": bad}
    outbox = world.sql("SELECT seq, kind FROM outbox WHERE event_id = %s", event.event_id)
    assert outbox == [(event.seq, reports.REPORTED)]  # in the report's own transaction
    # the relay delivers it to the local feed like any event (its seq moves no head)
    relayed = relay_outbox(world.svc.db, world.feed.inner, min_age_s=0)
    assert relayed.dead == [] and world.sql("SELECT 1 FROM outbox") == []
    result = _reported(world)
    assert (result.checked, result.damaged, result.repaired) == (1, 1, 1)
    assert world.get(ALICE, "/a.bin") == data
    assert _pending(world) == []
    again = _report(world, ALICE, entry, bad)  # checked a moment ago: no new check
    assert not again.queued and "checked at" in again.detail
    assert _report_events(world) == [bad]


def test_a_block_is_checked_once_however_often_it_is_reported(world: World) -> None:
    _data, entry, bad = _overwritten(world)
    assert _report(world, ALICE, entry, bad).queued
    assert _report(world, ALICE, entry, bad).queued  # still queued: no second check
    assert _report_events(world) == [bad] and _pending(world) == [bad]
    _reported(world)
    world.svc.settings = replace(world.svc.settings, block_recheck_s=0)
    assert _report(world, ALICE, entry, bad).queued  # the window passed: checked again
    assert _report_events(world) == [bad, bad]
    assert (_reported(world).checked, _pending(world)) == (1, [])


def test_a_users_reports_queue_a_bounded_number_of_checks_an_hour(world: World) -> None:
    """Past `block_reports_per_hour` new checks, a report is refused (429, with the wait
    until the oldest leaves the hour) and leaves no row or event; a repeat of a report
    already queued adds no check and is still answered, and another user has a budget of
    their own."""
    world.svc.settings = replace(world.svc.settings, block_reports_per_hour=2)
    data = secrets.token_bytes(3 * BLOCK)
    entry = world.put(ALICE, "/a.bin", data)
    shared = world.put(BOB, "/a.bin", data)
    world.run("dedup")
    first, second, third = (block_id(c) for c in chunks(data))
    assert _report(world, ALICE, entry, first).queued
    assert _report(world, ALICE, entry, second).queued
    with pytest.raises(TooManyRequests) as refused:
        _report(world, ALICE, entry, third)
    assert 3500 < (refused.value.retry_after or 0) <= 3600
    assert _report(world, ALICE, entry, first).queued  # queued already: no new check
    assert _report_events(world) == [first, second]
    assert sorted(_pending(world)) == sorted([first, second])
    assert _report(world, BOB, shared, third).queued
    # an hour on, the oldest report has left the window
    world.sql(
        "UPDATE block_reports SET reported_at = reported_at - interval '61 minutes'"
        " WHERE reported_by = %s AND block_id = %s RETURNING 1",
        ALICE.user_id,
        first,
    )
    assert _report(world, ALICE, entry, third).queued


def test_reports_at_once_stay_within_the_budget(
    world: World, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget is counted before the insert: without a lock, a report counted while
    another was between its count and its commit saw the same room, and both went in."""
    world.svc.settings = replace(world.svc.settings, block_reports_per_hour=1)
    data = secrets.token_bytes(2 * BLOCK)
    entry = world.put(ALICE, "/a.bin", data)
    world.run("dedup")
    one, two = (block_id(c) for c in chunks(data))
    first, second = race_held(
        monkeypatch,
        database_url,
        "recent_reports",
        lambda: _report(world, ALICE, entry, one),
        lambda: _report(world, ALICE, entry, two),
    )
    assert isinstance(first, BlockReportResponse) and first.queued
    assert isinstance(second, TooManyRequests)
    assert _pending(world) == [one]


def test_a_report_queued_too_long_is_announced_again(world: World) -> None:
    """A queued report whose event led to no check (its queue message dead-lettered) is
    announced again by the next report, rather than wait for the weekly run; the claim a
    run may hold on it is kept, so the block is not read twice at once."""
    _data, entry, bad = _overwritten(world)
    assert _report(world, ALICE, entry, bad).queued
    world.sql("UPDATE block_reports SET claimed_until = now() + interval '5 minutes' RETURNING 1")
    assert _report(world, ALICE, entry, bad).queued
    assert _report_events(world) == [bad]  # queued a moment ago: nothing new to announce
    world.sql("UPDATE block_reports SET reported_at = now() - interval '21 minutes' RETURNING 1")
    assert _report(world, ALICE, entry, bad).queued
    assert _report_events(world) == [bad, bad] and _pending(world) == [bad]
    held = world.sql("SELECT claimed_until > now() FROM block_reports")
    assert held == [(True,)]


def test_a_report_is_answered_from_the_callers_own_reports_only(world: World) -> None:
    """Blocks are shared by content: an answer telling of another user's report (or its
    check) would tell its caller that someone else holds that content, and failed to read
    it. Each user's report is their own: checked once an hour for each of them."""
    data = secrets.token_bytes(BLOCK)
    mine = world.put(ALICE, "/a.bin", data)
    theirs = world.put(BOB, "/same.bin", data)
    world.run("dedup")
    bid = block_id(data)
    assert _report(world, ALICE, mine, bid).queued
    _reported(world)
    answer = _report(world, BOB, theirs, bid)  # as if Alice had never reported it
    assert answer.queued and "checked" not in answer.detail
    assert "checked at" in _report(world, ALICE, mine, bid).detail  # her own report
    assert (_reported(world).checked, _pending(world)) == (1, [])


def test_a_check_that_fails_holds_back_no_report_and_is_retried(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report whose check fails is put off a minute, and the reports behind it are
    checked meanwhile (as the first step of scrub, a failure that stopped it had stopped
    the weekly inventory and sample too); a queue batch holding it fails, so SQS delivers
    it again."""
    data1, first, bad1 = _overwritten(world, "/one.bin")
    data2, second, bad2 = _overwritten(world, "/two.bin")
    _report(world, ALICE, first, bad1)
    _report(world, ALICE, second, bad2)
    earlier = world.store.earlier_versions

    def broken(key: str) -> object:
        if key == canonical_key(bad1):
            raise OSError("the store is unwell")
        return earlier(key)

    monkeypatch.setattr(world.store, "earlier_versions", broken)
    result = _reported(world)
    assert result.repaired == 1 and "the store is unwell" in result.errors[0]
    assert world.get(ALICE, "/two.bin") == data2
    assert _pending(world) == [bad1] and _reported(world).checked == 0  # put off
    world.sql("UPDATE block_reports SET claimed_until = now() RETURNING 1")  # a minute on
    message = {"body": json.dumps({"detail": {"payload": {"block_id": bad1}}})}
    with pytest.raises(ReportsLeft, match="unwell"):  # as a queue batch: delivered again
        handle_event(world.ctx, "scrub", {"Records": [message]})
    monkeypatch.undo()
    world.sql("UPDATE block_reports SET claimed_until = now() RETURNING 1")
    assert _reported(world).repaired == 1
    assert world.get(ALICE, "/one.bin") == data1


def test_a_reported_block_held_too_long_is_put_off_not_marked_checked(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reported block is often a busy one: a repair that could not have its lock in time
    had been noted and the report marked checked, with no verdict, and its queue message
    deleted. It is put off and tried again, as any failed check."""
    monkeypatch.setattr(world.ctx.repo, "lock_timeout_ms", 100)
    data, entry, bad = _overwritten(world)
    _report(world, ALICE, entry, bad)
    with world.ctx.repo.transaction() as holder:
        holder.block_lock(bad)
        result = _reported(world)
    assert (result.put_off, result.repaired) == (1, 0)
    assert _pending(world) == [bad]
    world.sql("UPDATE block_reports SET claimed_until = now() RETURNING 1")  # a minute on
    assert _reported(world).repaired == 1
    assert world.get(ALICE, "/a.bin") == data


def test_a_reported_block_found_beyond_repair_ends_its_queue_batch(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quarantine is a verdict, reported among the step's errors: it failed the queue
    batch as a failed check does, so SQS delivered it again (its report already checked)
    and counted a Lambda error, five times, then dead-lettered it and alarmed."""
    _data, entry, bad = _overwritten(world)
    _report(world, ALICE, entry, bad)
    monkeypatch.setattr(world.store, "earlier_versions", lambda key: [])  # all expired
    message = {"body": json.dumps({"detail": {"payload": {"block_id": bad}}})}
    result = handle_event(world.ctx, "scrub", {"Records": [message]})
    assert (result["damaged"], result["unrepaired"], result["put_off"]) == (1, 1, 0)
    assert world.sql("SELECT state FROM blocks WHERE block_id = %s", bad) == [("quarantined",)]
    assert _pending(world) == []


def test_a_blocks_reports_are_claimed_together_by_one_run(world: World) -> None:
    """Two users' reports of one block: one run claims both and reads the block once; a
    run at the same time finds nothing to claim."""
    data = secrets.token_bytes(BLOCK)
    mine = world.put(ALICE, "/a.bin", data)
    theirs = world.put(BOB, "/b.bin", data)
    world.run("dedup")
    bid = block_id(data)
    _report(world, ALICE, mine, bid)
    _report(world, BOB, theirs, bid)
    with world.ctx.repo.transaction() as tx:
        claimed = tx.claim_reports(10, hold_s=60)
    with world.ctx.repo.transaction() as tx:
        assert tx.claim_reports(10, hold_s=60) == []
    assert [r.block.block_id for r in claimed] == [bid]
    assert claimed[0].version[1] == mine.file_id  # the oldest report's version


def _reported_twice(w: World, blocks: int) -> list[str]:
    """`blocks` blocks of Alice's, each reported by two users, the block's reports
    oldest-first next to each other: runs at once that each take the oldest report they
    can lock took two reports of one block."""
    data = secrets.token_bytes(blocks * BLOCK)
    entry = w.put(ALICE, "/many.bin", data)
    ids = [block_id(c) for c in chunks(data)]
    for n, bid in enumerate(ids):
        for k, who in enumerate(("user-a", "user-b")):
            w.sql(
                "INSERT INTO block_reports (block_id, reported_by, ns_id, file_id, rev, reason,"
                " reported_at) VALUES (%s, %s, %s, %s, %s, 'test', now() - make_interval("
                "secs => %s)) RETURNING 1",
                bid,
                who,
                entry.ns_id,
                entry.file_id,
                entry.rev,
                1000 - 2 * n - k,
            )
    return ids


def test_runs_claiming_one_blocks_reports_at_once_never_deadlock(world: World) -> None:
    """Each run locked the oldest report it could (skipping locked ones), then the rest of
    that block's: two runs took one report each of the same block and waited for each
    other's, and PostgreSQL ended one with a deadlock error."""
    ids = _reported_twice(world, 60)

    def claim() -> list[str]:
        with world.ctx.repo.transaction() as tx:
            return [r.block.block_id for r in tx.claim_reports(1, hold_s=60)]

    claimed: list[str] = []
    for _ in range(3 * len(ids)):
        results, errors = run_at_once(claim, 2)
        assert errors == []
        claimed += [bid for result in results for bid in result]
        if not any(results):
            break
    assert sorted(claimed) == sorted(ids)  # each block by one run, none left


def test_a_block_whose_reports_another_run_holds_is_skipped_not_waited_for(
    world: World, database_url: str
) -> None:
    """Looked past, too: a run whose `limit` oldest reports were all of held blocks found
    nothing to claim, and stopped with reports left."""
    first, second = _reported_twice(world, 2)
    with psycopg.connect(database_url) as other:  # another run settling `first`'s reports
        other.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LockClass.BLOCK_REPORTS, first)
        )
        with world.ctx.repo.transaction() as tx:  # one block: not the held oldest
            claimed = tx.claim_reports(1, hold_s=60)
        assert [r.block.block_id for r in claimed] == [second]
    with world.ctx.repo.transaction() as tx:  # released: taken by the next run
        assert [r.block.block_id for r in tx.claim_reports(10, hold_s=60)] == [first]


def test_a_block_many_users_reported_fills_no_claims_lookahead(
    world: World, database_url: str
) -> None:
    """The lookahead counted reports: a lost block that many users reported, held by
    another run, filled it alone, and a run found nothing else to claim."""
    first, second = _reported_twice(world, 2)
    world.sql(
        "INSERT INTO block_reports (block_id, reported_by, ns_id, file_id, rev, reason,"
        " reported_at) SELECT block_id, 'user-' || n, ns_id, file_id, rev, reason,"
        " reported_at - make_interval(secs => n) FROM block_reports,"
        " generate_series(1, 10) AS n WHERE block_id = %s AND reported_by = 'user-a'"
        " RETURNING 1",
        first,
    )
    with psycopg.connect(database_url) as other:  # another run settling `first`'s reports
        other.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LockClass.BLOCK_REPORTS, first)
        )
        with world.ctx.repo.transaction() as tx:
            claimed = tx.claim_reports(1, hold_s=60)
        assert [r.block.block_id for r in claimed] == [second]


def test_a_files_look_over_is_bounded_and_goes_on_at_the_next_report(
    database_url: str, tmp_path: Path
) -> None:
    """A file lost whole is mended `batch_size` blocks per report, not all in one check
    that outlasts the function: its client reports the next lost block, and so on."""
    gen = make_world(database_url, tmp_path, batch_size=2)
    w = next(gen)
    try:
        data = secrets.token_bytes(6 * BLOCK)
        entry = w.put(ALICE, "/six.bin", data)
        w.run("dedup")
        ids = [block_id(c) for c in chunks(data)]
        for bid in ids:
            w.store.delete(canonical_key(bid))

        def lost() -> list[str]:
            return [b for b in ids if w.store.head(canonical_key(b)) is None]

        _report(w, ALICE, entry, ids[0])
        assert _reported(w).repaired == 1 + 2  # the block reported, and two more
        assert len(lost()) == 3
        while lost():  # each try of the client reports the next lost block
            _report(w, ALICE, entry, lost()[0])
            assert _reported(w).repaired >= 1
        assert w.get(ALICE, "/six.bin") == data
    finally:
        gen.close()


def test_a_queue_batch_left_unfinished_is_delivered_again(world: World) -> None:
    """Reports a queue-triggered run had no budget left for waited for the weekly run; the
    invocation now fails, and SQS delivers the batch again."""
    _d1, first, bad1 = _overwritten(world, "/one.bin")
    _d2, second, bad2 = _overwritten(world, "/two.bin")
    _report(world, ALICE, first, bad1)
    _report(world, ALICE, second, bad2)
    settings = world.ctx.settings
    world.ctx.settings = replace(settings, step_budget_s=0.0)  # spent before the first
    bodies = [{"detail": {"payload": {"block_id": b}}} for b in (bad1, bad2)]
    records = [{"body": json.dumps(body)} for body in bodies]
    with pytest.raises(ReportsLeft):
        handle_event(world.ctx, "scrub", {"Records": records})
    assert sorted(_pending(world)) == sorted([bad1, bad2])
    world.ctx.settings = settings
    # delivered again: the blocks the run claimed and left were freed, not held
    assert handle_event(world.ctx, "scrub", {"Records": records})["repaired"] == 2
    assert _pending(world) == []


def test_a_healthy_reported_block_is_checked_and_left_alone(world: World) -> None:
    data = secrets.token_bytes(BLOCK)
    entry = world.put(ALICE, "/ok.bin", data)
    world.run("dedup")
    assert _report(world, ALICE, entry, block_id(data)).queued
    result = _reported(world)
    assert (result.checked, result.ok, result.damaged) == (1, 1, 0)
    assert result.inventoried == 0  # an intact block leaves the rest of its file alone
    assert _pending(world) == []


def test_a_lost_block_has_the_rest_of_its_file_looked_over(world: World) -> None:
    """A bug that deleted one block of a file deleted others: one report mends them all,
    so the client's next try finds the file whole, not the next lost block of it."""
    data = secrets.token_bytes(3 * BLOCK)
    entry = world.put(ALICE, "/three.bin", data)
    world.run("dedup")
    ids = [block_id(c) for c in chunks(data)]
    for bid in ids[1:]:
        world.store.delete(canonical_key(bid))
    assert _report(world, ALICE, entry, ids[1]).queued
    result = _reported(world)
    assert (result.checked, result.inventoried, result.repaired) == (1, 3, 2)
    assert world.get(ALICE, "/three.bin") == data


def test_only_a_block_of_a_version_the_caller_can_read_may_be_reported(world: World) -> None:
    data = secrets.token_bytes(BLOCK)
    entry = world.put(ALICE, "/Team/doc.bin", data)
    world.run("dedup")
    bid = block_id(data)
    with pytest.raises(NotFound):  # another user's file: as if it did not exist
        _report(world, MALLORY, entry, bid)
    with pytest.raises(NotFound, match="not in rev"):
        _report(world, ALICE, entry, block_id(b"another block"))
    with pytest.raises(NotFound, match="no rev 9"):
        _report(world, ALICE, entry.model_copy(update={"rev": 9}), bid)
    assert _pending(world) == [] and _report_events(world) == []
    sharing.account(world.svc, BOB)  # Bob signs in once
    invited = sharing.share(
        world.svc, ALICE, ShareRequest(path="/Team", email=BOB.email, access="viewer")
    )
    with pytest.raises(NotFound):  # invited only: not his to read yet
        _report(world, BOB, entry, bid)
    assert _pending(world) == [] and _report_events(world) == []
    sharing.accept(world.svc, BOB, InvitationRequest(ns_id=invited.ns_id))
    assert _report(world, BOB, entry, bid).queued  # a viewer reads, so may report


def test_a_block_of_a_file_in_the_trash_may_be_reported(world: World) -> None:
    """A deleted file is downloaded too (`tessera get` of the trash): a block it finds
    damaged is worth the same check."""
    _data, entry, bad = _overwritten(world, "/gone.bin")
    world.delete(ALICE, "/gone.bin")
    assert _report(world, ALICE, entry, bad).queued
    assert _reported(world).repaired == 1


def test_a_block_still_served_from_its_own_upload_is_not_queued(world: World) -> None:
    """Before dedup verified it, a version is served its own staged copy: dedup checks it
    without a report, and the canonical block a check would read is not what failed."""
    data = secrets.token_bytes(BLOCK)
    entry = world.put(ALICE, "/new.bin", data)
    answer = _report(world, ALICE, entry, block_id(data))
    assert not answer.queued and "being verified" in answer.detail
    assert _pending(world) == []


def test_a_queue_message_checks_the_blocks_it_names_only(world: World) -> None:
    _d1, first, bad1 = _overwritten(world, "/one.bin")
    data2, second, bad2 = _overwritten(world, "/two.bin")
    _report(world, ALICE, first, bad1)
    _report(world, ALICE, second, bad2)
    # a block_reported event as the bus puts it on the scrub queue
    [event] = [e for e in world.feed.events if e.payload.get("block_id") == bad2]
    body = {
        "source": "tessera",
        "detail-type": f"tessera.{event.kind}",
        "detail": {"event_id": event.event_id, "kind": event.kind, "payload": event.payload},
    }
    answer = handle_event(world.ctx, "scrub", {"Records": [{"body": json.dumps(body)}]})
    assert (answer["checked"], answer["repaired"]) == (1, 1)
    assert world.get(ALICE, "/two.bin") == data2
    assert _pending(world) == [bad1]  # for the next message, or the weekly sweep


def test_a_report_of_a_block_quarantined_since_is_settled_without_a_read(world: World) -> None:
    _data, entry, bad = _overwritten(world)
    _report(world, ALICE, entry, bad)
    world.sql("UPDATE blocks SET state = 'quarantined' WHERE block_id = %s RETURNING 1", bad)
    assert (_reported(world).checked, _pending(world)) == (0, [])


def test_the_local_scheduler_checks_reports_on_their_own_interval(world: World) -> None:
    assert MaintenanceScheduler.from_context(world.ctx).intervals["scrub.reported"] == 10.0
    data, entry, bad = _overwritten(world)
    _report(world, ALICE, entry, bad)
    sched = MaintenanceScheduler(world.ctx, {"scrub.reported": 0.1})
    sched.start(first_run_delay=0)
    try:
        deadline = time.monotonic() + 30
        while _pending(world) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sched.stop()
    assert sched.runs["scrub.reported"] >= 1
    assert world.get(ALICE, "/a.bin") == data
