"""Cold storage: a file unread past the threshold goes cold, a download answers 202
`restoring` and starts a restore, and once the restore completes the bytes are unchanged.
Against the local block store (its cold tier needs an explicit, timed restore) and against
S3 on moto (storage classes and RestoreObject)."""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tessera.blocks import block_id
from tessera.domain import files, object_keys
from tessera.domain.errors import TesseraError
from tessera.domain.models import DownloadRequest, DownloadResponse, RestoringResponse
from tessera.maintenance import ColdResult, DedupResult, GcResult, ScrubResult, run_step
from tessera.maintenance.runner import handle_event
from tessera.maintenance.verify import check_stored
from tessera.metadata.locks import LockClass
from tessera.metadata.maintenance import MaintenanceTx
from tessera.metadata.store import Store, VersionBlockRow
from tessera.ports import BlockStore, StorageTier, StoredObject

from .test_maintenance_world import (
    ALICE,
    BLOCK,
    BOB,
    Killed,
    World,
    chunks,
    die_copying,
    lose,
    make_world,
    swap_staged_after_dedup_reads,
)


def _cold(w: World, days: float) -> ColdResult:
    return w.run_as(ColdResult, "cold", days=days)


def _states(w: World) -> set[str]:
    return {str(r[0]) for r in w.sql("SELECT DISTINCT state FROM blocks")}


def test_a_download_of_a_cold_file_restores_only_what_the_device_lacks(world: World) -> None:
    """A one-byte edit of a cold file elsewhere: the device holds all of it but a block,
    and waited (hours, on Glacier) for every block's restore before it could fetch that
    one. The blocks it says it holds (`have`) are not restored, nor waited for."""
    data = secrets.token_bytes(3 * BLOCK)
    world.put(ALICE, "/archive.tar", data)
    world.run("dedup")
    _cold(world, days=91)
    held = [block_id(c) for c in chunks(data)[:2]]
    answer = files.download(world.svc, ALICE, DownloadRequest(path="/archive.tar", have=held))
    assert isinstance(answer, RestoringResponse) and len(answer.blocks) == 1  # the third
    assert answer.blocks == [block_id(chunks(data)[2])]
    world.store_clock.advance(hours=2)
    assert _cold(world, days=91).restores_completed == 1
    answer = files.download(world.svc, ALICE, DownloadRequest(path="/archive.tar", have=held))
    assert isinstance(answer, DownloadResponse)  # the held ones: read from the device's copy
    assert [b.id for b in answer.blocks] == [block_id(c) for c in chunks(data)]
    assert world.fetch_block(answer.blocks[2]) == chunks(data)[2]


def test_unread_file_goes_cold_and_comes_back_unchanged(world: World) -> None:
    data = secrets.token_bytes(3 * BLOCK)
    world.put(ALICE, "/archive.tar", data)
    world.run("dedup")
    assert world.get(ALICE, "/archive.tar") == data  # a read: last_access is now

    assert _cold(world, days=89).blocks_moved == 0
    result = _cold(world, days=91)
    assert result.blocks_moved == 3 and result.bytes_moved > 0
    assert _states(world) == {"cold"}
    for key in world.keys_under("blocks/"):
        head = world.store.head(key)
        assert head is not None and head.tier is StorageTier.COLD

    answer = world.get(ALICE, "/archive.tar")
    assert isinstance(answer, RestoringResponse) and len(answer.blocks) == 3
    assert _states(world) == {"restoring"}
    assert isinstance(world.get(ALICE, "/archive.tar"), RestoringResponse)  # still under way
    assert _cold(world, days=91).restores_completed == 0

    world.store_clock.advance(hours=2)  # the store's restore takes an hour
    result = _cold(world, days=91)
    assert result.restores_completed == 3
    assert _states(world) == {"live"}
    assert world.get(ALICE, "/archive.tar") == data
    # the restore counted as a read: it does not go straight back to the cold tier
    assert _cold(world, days=91).blocks_moved == 0


def test_a_cold_file_is_asked_about_and_restored_block_by_block_at_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first page of a download asks the cold tier about every block: one HEAD, then
    one restore, after another, a cold file of a thousand blocks outlasted the API's 29 s
    on S3 (15-30 ms a request), and no restore was ever recorded."""
    data = secrets.token_bytes(24 * BLOCK)
    world.put(ALICE, "/archive.tar", data)
    world.run("dedup")
    _cold(world, days=91)
    at_once = {"now": 0, "most": 0}
    lock = threading.Lock()

    def slowly(call: Callable[..., object]) -> Callable[..., object]:
        def timed(*args: object, **kwargs: object) -> object:
            with lock:
                at_once["now"] += 1
                at_once["most"] = max(at_once["most"], at_once["now"])
            time.sleep(0.02)  # a request's round trip
            try:
                return call(*args, **kwargs)
            finally:
                with lock:
                    at_once["now"] -= 1

        return timed

    monkeypatch.setattr(world.store, "head", slowly(world.store.head))
    monkeypatch.setattr(world.store, "restore", slowly(world.store.restore))
    answer = world.get(ALICE, "/archive.tar")
    assert isinstance(answer, RestoringResponse) and len(answer.blocks) == 24
    assert at_once["most"] > 1
    assert _states(world) == {"restoring"}


def test_a_huge_cold_file_is_restored_over_several_requests(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first page asked the cold tier about every cold block of the version: for one
    of 200,000 blocks, minutes of HEADs before any restore, in one request. A request now
    asks about `max_cold_checks`, the blocks not yet restoring first, and the client's
    retries go on from there."""
    gen = make_world(database_url, tmp_path)
    w = next(gen)
    try:
        w.svc = replace(w.svc, settings=replace(w.svc.settings, max_cold_checks=5))
        data = secrets.token_bytes(12 * BLOCK)
        w.put(ALICE, "/archive.tar", data)
        w.run("dedup")
        _cold(w, days=91)
        heads: list[str] = []
        head = w.store.head

        def counted(key: str) -> StoredObject | None:
            heads.append(key)
            return head(key)

        monkeypatch.setattr(w.store, "head", counted)
        for restoring in (5, 10, 12):
            heads.clear()
            answer = w.get(ALICE, "/archive.tar")
            # it names `max_cold_checks` blocks at most (12 of 200,000 past Lambda's 6 MB)
            assert isinstance(answer, RestoringResponse) and len(answer.blocks) == 5
            assert len(heads) <= 5
            assert w.sql("SELECT count(*) FROM blocks WHERE state = 'restoring'") == [(restoring,)]
        w.store_clock.advance(hours=2)
        _cold(w, days=91)
        assert w.get(ALICE, "/archive.tar") == data
    finally:
        gen.close()


def test_restores_are_checked_across_calls_each_block_once_a_pass(
    database_url: str, tmp_path: Path
) -> None:
    """Out of budget after each block, a call says `more` and the next checks a block this
    pass has not (one waiting on its restore goes to the back); the pass ends once each was
    checked, instead of looping for the hours a restore takes."""
    gen = make_world(database_url, tmp_path, batch_size=1, step_budget_s=0.0)
    w = next(gen)
    try:
        data = secrets.token_bytes(3 * BLOCK)
        w.put(ALICE, "/archive.tar", data)
        w.run("dedup")
        w.run("cold", days=91)
        assert isinstance(w.get(ALICE, "/archive.tar"), RestoringResponse)

        def one_pass() -> list[ColdResult]:
            calls = [run_step(w.ctx, "cold", "complete_restores")]
            while calls[-1].more:
                calls.append(run_step(w.ctx, "cold", "complete_restores"))
                assert len(calls) <= 10, "the pass does not end"
            return [c for c in calls if isinstance(c, ColdResult)]

        waiting = one_pass()
        assert [c.more for c in waiting] == [True, True, True, False]
        assert sum(c.restores_completed for c in waiting) == 0
        w.store_clock.advance(hours=2)  # the restores are done
        done = one_pass()
        assert [c.restores_completed for c in done] == [1, 1, 1, 0]
        assert w.get(ALICE, "/archive.tar") == data
    finally:
        gen.close()


def test_blocks_whose_objects_are_lost_do_not_hold_back_the_others(
    database_url: str, tmp_path: Path
) -> None:
    """A live block whose object is gone was set live again and was the oldest candidate
    in every batch: a full batch of them moved nothing, and every run stopped there. They
    now go to scrub's repair (quarantined, their holders told) and the others move."""
    gen = make_world(database_url, tmp_path, batch_size=2)
    w = next(gen)
    try:
        lost = secrets.token_bytes(3 * BLOCK)
        w.put(ALICE, "/lost.bin", lost)
        w.put(ALICE, "/kept.bin", secrets.token_bytes(BLOCK))
        w.run("dedup")
        w.collect_settled()  # as 91 days on
        lost_ids = [block_id(c) for c in chunks(lost)]
        for bid in lost_ids:  # older than the kept block: the first candidates
            lose(w, object_keys.canonical_key(bid))
            _unread_since_100_days(w, bid)
        result = _cold(w, days=91)
        assert (result.blocks_moved, result.lost, result.repaired) == (1, 3, 0)
        assert _states(w) == {"quarantined", "cold"}
        assert w.sql("SELECT count(*) FROM blocks WHERE state = 'cold'") == [(1,)]
        assert w.sql("SELECT count(DISTINCT block_id) FROM damaged_versions") == [(3,)]
    finally:
        gen.close()


def test_a_block_read_through_another_file_stays_hot(world: World) -> None:
    shared = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/old.bin", shared + secrets.token_bytes(BLOCK))
    world.put(BOB, "/new.bin", shared)
    world.run("dedup")
    conninfo = world.svc.db.conninfo
    assert isinstance(conninfo, str)  # make_world's database URL, not a token-minting callable
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("UPDATE blocks SET last_access = now() - interval '100 days'")
    world.get(BOB, "/new.bin")  # reads the shared block today
    assert _cold(world, days=0).blocks_moved == 1  # only alice's unread tail
    assert world.get(BOB, "/new.bin") == shared


def test_a_lost_restore_is_started_again(world: World) -> None:
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/f.bin", data)
    world.run("dedup")
    _cold(world, days=91)
    assert isinstance(world.get(ALICE, "/f.bin"), RestoringResponse)
    key = world.keys_under("blocks/")[0]
    world.store_clock.advance(days=30)  # the restored copy expired before anyone came back
    head = world.store.head(key)
    assert head is not None and not head.restoring and not head.restored
    result = _cold(world, days=91)
    assert result.restores_started == 1 and result.restores_completed == 0
    world.store_clock.advance(hours=2)
    assert _cold(world, days=91).restores_completed == 1
    assert world.get(ALICE, "/f.bin") == data


def test_a_reported_restore_is_settled_once_the_store_shows_it(world: World) -> None:
    """A restore reported done before the store shows it (an event delivered early, or a
    forged one) settles nothing; the next report, or the scheduled pass, does."""
    data, key = _cold_file(world)
    assert isinstance(world.get(ALICE, "/f.bin"), RestoringResponse)
    event = {"Records": [{"body": json.dumps(_restore_completed(key))}]}
    assert handle_event(world.ctx, "cold", event)["restores_completed"] == 0
    assert _states(world) == {"restoring"}
    world.store_clock.advance(hours=2)  # the store's restore takes an hour
    assert handle_event(world.ctx, "cold", event)["restores_completed"] == 1
    assert _states(world) == {"live"}
    assert world.get(ALICE, "/f.bin") == data


def test_one_restore_that_cannot_be_settled_holds_back_no_other(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tier change that failed for one block (its restored copy lapsed, or its object
    deleted, since the head) ended the pass: every pass met it first, and no restore
    behind it was ever settled."""
    data, key = _cold_file(world)
    world.put(ALICE, "/g.bin", other := secrets.token_bytes(BLOCK))
    world.run("dedup")
    assert _cold(world, days=91).blocks_moved == 1
    for path in ("/f.bin", "/g.bin"):
        assert isinstance(world.get(ALICE, path), RestoringResponse)
    world.store_clock.advance(hours=2)
    set_tier = world.store.set_tier

    def failing(k: str, tier: StorageTier) -> None:
        if k == key:
            raise KeyError(k)
        set_tier(k, tier)

    monkeypatch.setattr(world.store, "set_tier", failing)
    result = _cold(world, days=91)
    assert result.restores_completed == 1 and len(result.errors) == 1
    assert world.get(ALICE, "/g.bin") == other
    monkeypatch.undo()
    assert _cold(world, days=91).restores_completed == 1  # its turn, next pass
    assert world.get(ALICE, "/f.bin") == data


def _restore_completed(key: str) -> dict[str, object]:
    return {
        "source": "aws.s3",
        "detail-type": "Object Restore Completed",
        "detail": {"object": {"key": key}},
    }


@pytest.fixture
def s3_world(database_url: str, tmp_path: Path) -> Iterator[World]:
    """A world whose block store is S3 and whose keys are KMS + SSM, on moto."""
    from tessera.adapters.aws.wiring import AwsRuntime

    from .aws.moto_env import shared_aws_settings

    runtime = AwsRuntime(aws=shared_aws_settings())
    yield from make_world(
        database_url, tmp_path, store=runtime.block_store(), keys=runtime.key_service()
    )


@pytest.mark.aws
def test_cold_storage_on_s3_glacier_and_restore(s3_world: World) -> None:
    w = s3_world
    data = secrets.token_bytes(2 * BLOCK)
    path = f"/{uuid.uuid4().hex}.bin"  # the moto bucket is shared by the session
    w.put(ALICE, path, data)
    dedup = w.run("dedup")
    assert dedup.to_dict()["promoted"] == 2

    assert _cold(w, days=91).blocks_moved == 2
    keys = [f"blocks/{str(r[0])[3:]}" for r in w.sql("SELECT block_id FROM blocks")]
    for key in keys:
        head = w.store.head(key)
        assert head is not None and head.tier is StorageTier.COLD  # GLACIER storage class

    answer = w.get(ALICE, path)
    assert isinstance(answer, RestoringResponse)  # RestoreObject issued
    result = _cold(w, days=91)
    assert result.restores_completed == 2  # moto finishes restores at once
    for key in keys:
        head = w.store.head(key)
        assert head is not None and head.tier is StorageTier.HOT  # copied back to STANDARD
    assert w.get(ALICE, path) == data


def _unread_since_100_days(w: World, block_id: str | None = None) -> None:
    """Age the blocks' last read (all of them, or `block_id`'s) past the cold threshold."""
    with w.svc.db.pool.connection() as conn:
        conn.execute(
            "UPDATE blocks SET last_access = now() - interval '100 days'"
            " WHERE block_id = COALESCE(%s, block_id)",
            (block_id,),
        )


def _killed(*_: object) -> None:
    """A `BlockStore.set_tier` that dies before moving anything."""
    raise Killed


def _cold_killed_after_moving(w: World, monkeypatch: pytest.MonkeyPatch, *, days: float) -> None:
    """A cold-storage run killed right after its first object moved, before recording it."""
    set_tier = type(w.store).set_tier

    def moved_then_killed(self: BlockStore, key: str, tier: StorageTier) -> None:
        set_tier(self, key, tier)
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(type(w.store), "set_tier", moved_then_killed)
        with pytest.raises(Killed):
            _cold(w, days=days)


def test_a_run_killed_before_moving_leaves_the_block_served_hot_then_moved(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database agrees first: a run killed between marking a block cold and moving
    its object leaves a cold row over a hot object, served as it is, and the next run moves
    it. (Moving the object first left a live row over a cold object: downloads failed and
    never restored it, and scrub quarantined intact bytes.)"""
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/f.bin", data)
    world.run("dedup")
    with monkeypatch.context() as patch:
        patch.setattr(type(world.store), "set_tier", _killed)
        with pytest.raises(Killed):
            _cold(world, days=91)
    key = world.keys_under("blocks/")[0]
    head = world.store.head(key)
    assert head is not None and head.tier is StorageTier.HOT
    assert world.get(ALICE, "/f.bin") == data  # a cold row, its object still hot: served

    result = _cold(world, days=91)  # the read is older than this run's cutoff
    assert result.blocks_moved == 1 and result.errors == []
    head = world.store.head(key)
    assert head is not None and head.tier is StorageTier.COLD
    assert world.sql("SELECT state, storage_class FROM blocks") == [("cold", "cold")]
    assert _restored_on_demand(world, data).restores_completed == 1


def test_a_run_killed_after_moving_leaves_a_cold_row_that_restores(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed once the object has moved, before recording it: the row already says cold, so
    a download starts a restore (the object moved first, the row said live: downloads got
    a URL that failed, and no restore was ever started)."""
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/f.bin", data)
    world.run("dedup")
    _cold_killed_after_moving(world, monkeypatch, days=91)
    assert _restored_on_demand(world, data).restores_completed == 1
    assert world.sql("SELECT state, storage_class FROM blocks") == [("live", "hot")]


def _marked_cold_then_read(world: World, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Alice's one-block /f.bin, marked cold by a run killed before the move, then read
    today: its bytes."""
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/f.bin", data)
    world.run("dedup")
    _unread_since_100_days(world)
    with monkeypatch.context() as patch:
        patch.setattr(type(world.store), "set_tier", _killed)
        with pytest.raises(Killed):
            _cold(world, days=0)
    assert world.get(ALICE, "/f.bin") == data
    return data


def test_a_block_marked_cold_and_read_before_its_move_is_live_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _marked_cold_then_read(world, monkeypatch)
    assert _cold(world, days=0).blocks_moved == 0
    assert world.sql("SELECT state, storage_class FROM blocks") == [("live", "hot")]
    head = world.store.head(world.keys_under("blocks/")[0])
    assert head is not None and head.tier is StorageTier.HOT


def test_a_block_read_before_its_move_whose_object_is_gone_goes_to_repair(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marked cold, read since, and its object gone (a bug deleted it): it was set live
    again without a word, its object missing until the weekly inventory. It now goes to
    scrub's repair at once, as one unread does (here: undeleted from the store's earlier
    version)."""
    data = _marked_cold_then_read(world, monkeypatch)
    [key] = world.keys_under("blocks/")
    world.store.delete(key)
    result = _cold(world, days=0)
    assert (result.blocks_moved, result.repaired, result.lost) == (0, 1, 0)
    assert world.store.head(key) is not None
    assert world.get(ALICE, "/f.bin") == data


def test_a_download_that_read_the_block_live_sees_it_moved(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download read the block's row as live, then cold storage marked and moved it
    before the download recorded its read: the answer is `restoring`, not a URL of an
    object that can no longer be read."""
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/f.bin", data)
    world.run("dedup")
    _unread_since_100_days(world)
    read = Store.version_blocks
    moved: list[int] = []

    def version_blocks(self: Store, *args: Any, **kwargs: Any) -> list[VersionBlockRow]:
        rows = read(self, *args, **kwargs)
        if not moved:
            moved.append(_cold(world, days=0).blocks_moved)
        return rows

    monkeypatch.setattr(Store, "version_blocks", version_blocks)
    answer = world.get(ALICE, "/f.bin")
    assert moved == [1]
    assert isinstance(answer, RestoringResponse)
    assert _states(world) == {"restoring"}


def test_a_commit_reusing_old_blocks_keeps_them_hot(world: World) -> None:
    """A version built from blocks unread for long is as good as a read of them: they do
    not go cold right after the commit."""
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/old.bin", data)
    world.run("dedup")
    _unread_since_100_days(world)
    staged = world.keys_under("staging/")
    world.put(ALICE, "/new.bin", data)
    assert world.keys_under("staging/") == staged  # the block was reused, not uploaded
    assert _cold(world, days=0).blocks_moved == 0
    assert _states(world) == {"live"}


def _verified_file(w: World) -> tuple[str, bytes, str]:
    """A new one-block file of alice's, its block verified (canonical): path, bytes, id."""
    data = secrets.token_bytes(BLOCK)
    path = f"/{uuid.uuid4().hex}.bin"
    w.put(ALICE, path, data)
    w.run("dedup")
    bid = str(w.sql("SELECT block_id FROM blocks ORDER BY created_at DESC LIMIT 1")[0][0])
    return path, data, bid


@pytest.mark.aws
def test_a_read_while_move_cold_runs_on_s3_keeps_the_block_hot(
    s3_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download lands between the run's candidate read and `mark_cold`: the block stays
    live and hot and the run carries on. (Moved first, the object could not be moved back
    from GLACIER unrestored: the run crashed and left a live row over a cold object.)"""
    w = s3_world
    path, data, bid = _verified_file(w)
    _unread_since_100_days(w, bid)
    mark = MaintenanceTx.mark_cold

    def read_first(self: MaintenanceTx, block_id: str, cutoff: datetime) -> bool:
        if block_id == bid:
            assert w.get(ALICE, path) == data
        return mark(self, block_id, cutoff)

    monkeypatch.setattr(MaintenanceTx, "mark_cold", read_first)
    result = _cold(w, days=0)
    assert result.errors == []
    assert w.sql("SELECT state, storage_class FROM blocks WHERE block_id = %s", bid) == [
        ("live", "hot")
    ]
    head = w.store.head(f"blocks/{bid[3:]}")
    assert head is not None and head.tier is StorageTier.HOT
    assert w.get(ALICE, path) == data


@pytest.mark.aws
def test_scrub_check_of_an_unrestored_glacier_object_is_a_verdict(s3_world: World) -> None:
    """`check_stored` answers "unreadable" for an object S3 will not serve until restored,
    rather than raising S3's own error out of scrub."""
    w = s3_world
    bid = _verified_file(w)[2]
    key = f"blocks/{bid[3:]}"
    w.store.set_tier(key, StorageTier.COLD)
    check = check_stored(w.store, w.svc.keys, key, bid)
    assert not check.ok and check.reason == "unreadable: not_restored"


def test_a_run_killed_after_moving_then_a_commit_reusing_the_block_leaves_it_cold(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed once the object has moved, then a commit reuses the block (a read): the next
    run finds the object already cold and records the move. (It took the read for "never
    moved" and made the row live over a cold object: downloads got a URL that failed, and
    no restore was ever started.)"""
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/f.bin", data)
    world.run("dedup")
    _unread_since_100_days(world)
    _cold_killed_after_moving(world, monkeypatch, days=0)
    world.put(ALICE, "/copy.bin", data)  # reuses the block: counts as a read today
    result = _cold(world, days=0)
    assert result.blocks_moved == 1 and result.errors == []
    assert world.sql("SELECT state, storage_class FROM blocks") == [("cold", "cold")]
    assert isinstance(world.get(ALICE, "/copy.bin"), RestoringResponse)
    world.store_clock.advance(hours=2)
    assert _cold(world, days=0).restores_completed == 1
    assert world.get(ALICE, "/copy.bin") == data


def _cold_file(w: World) -> tuple[bytes, str]:
    """Alice's one-block /f.bin, gone cold: (its bytes, its object's key)."""
    data = secrets.token_bytes(BLOCK)
    w.put(ALICE, "/f.bin", data)
    w.run("dedup")
    w.collect_settled()  # as 91 days on
    assert _cold(w, days=91).blocks_moved == 1
    return data, w.keys_under("blocks/")[0]


def _restored_on_demand(w: World, data: bytes) -> ColdResult:
    """Alice's cold /f.bin answers "restoring", then, once the store's restore is done and
    cold storage has seen it through, reads as `data`: the cold storage run's result."""
    assert isinstance(w.get(ALICE, "/f.bin"), RestoringResponse)
    w.store_clock.advance(hours=2)  # the store's restore takes an hour
    result = _cold(w, days=91)
    assert w.get(ALICE, "/f.bin") == data
    return result


def test_a_cold_block_whose_object_is_lost_answers_unavailable(world: World) -> None:
    """A download of a cold block with no object answers 503 `block_unavailable` (it asked
    the store to restore a missing object and answered 500 for ever), and scrub, which
    checks a cold block's presence without restoring it, records the damage and tells the
    namespace."""
    lose(world, _cold_file(world)[1])
    with pytest.raises(TesseraError) as caught:
        world.get(ALICE, "/f.bin")
    assert caught.value.code == "block_unavailable"
    assert _states(world) == {"cold"}

    result = world.run_as(ScrubResult, "scrub")  # its inventory finds the object missing
    assert (result.inventoried, result.damaged, result.unrepaired) == (1, 1, 1)
    assert _states(world) == {"quarantined"}
    assert [e.kind for e in world.feed.events if e.kind == "block_damaged"] == ["block_damaged"]


def test_a_download_asking_for_a_restore_never_unquarantines_a_block(world: World) -> None:
    """A download reads a block's state unlocked (a block read within the hour is not
    written, so not locked), and scrub may quarantine it before the download marks it
    `restoring`: that mark used to overwrite `quarantined`, and the restore then made the
    damaged block `live`, served again."""
    _cold_file(world)
    (block_id,) = [str(r[0]) for r in world.sql("SELECT block_id FROM blocks")]
    world.sql("UPDATE blocks SET state = 'quarantined' WHERE block_id = %s RETURNING 1", block_id)
    with world.svc.db.transaction() as store:  # the download's mark, after scrub's verdict
        store.mark_restoring([block_id])
    assert _states(world) == {"quarantined"}
    world.sql("UPDATE blocks SET state = 'cold' WHERE block_id = %s RETURNING 1", block_id)
    assert isinstance(world.get(ALICE, "/f.bin"), RestoringResponse)
    assert _states(world) == {"restoring"}


def test_a_restoring_block_whose_object_is_lost_is_quarantined(world: World) -> None:
    data, key = _cold_file(world)
    assert isinstance(world.get(ALICE, "/f.bin"), RestoringResponse)
    lose(world, key)

    result = _cold(world, days=91)
    assert result.lost == 1 and key in result.errors[0]
    assert _states(world) == {"quarantined"}
    assert [e.kind for e in world.feed.events if e.kind == "block_damaged"] == ["block_damaged"]
    with pytest.raises(TesseraError) as caught:
        world.get(ALICE, "/f.bin")
    assert caught.value.code == "block_unavailable"

    world.put(ALICE, "/f.bin", data)  # the owner's client uploads it again
    world.run("dedup")
    assert world.get(ALICE, "/f.bin", rev=1) == data


def test_a_restoring_block_whose_object_was_deleted_is_undeleted_and_restored(
    world: World,
) -> None:
    """Deleted by a bug while a download waited for its restore: the delete is undone (the
    store kept the object), and the restore goes on, where it was quarantined for good."""
    data, key = _cold_file(world)
    assert isinstance(world.get(ALICE, "/f.bin"), RestoringResponse)
    world.store.delete(key)
    result = _cold(world, days=91)
    assert (result.lost, result.repaired) == (0, 1)
    assert _states(world) == {"restoring"}
    world.store_clock.advance(hours=2)
    _cold(world, days=91)
    assert world.get(ALICE, "/f.bin") == data


def test_a_restoring_block_gc_deletes_meanwhile_is_not_undeleted(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc deletes the row, then the object, of a block no version names any more, between
    cold storage's listing of the restoring blocks and its look at the object: the object
    was undeleted with no row to name it, and stayed in the store for good."""
    _data, key = _cold_file(world)
    assert isinstance(world.get(ALICE, "/f.bin"), RestoringResponse)
    head = world.store.head

    def gc_first(k: str) -> object:
        if k == key and world.sql("SELECT 1 FROM blocks"):
            world.sql("DELETE FROM blocks RETURNING 1")
            world.store.delete(key)
        return head(k)

    monkeypatch.setattr(world.store, "head", gc_first)
    result = _cold(world, days=91)
    assert (result.lost, result.repaired) == (0, 0)
    assert world.keys_under("blocks/") == []


def test_scrub_repairs_a_lost_cold_block_from_a_staged_duplicate(world: World) -> None:
    data, key = _cold_file(world)
    lose(world, key)
    world.put(BOB, "/b.bin", data)  # bob's session staged the same block
    result = world.run_as(ScrubResult, "scrub")
    assert (result.damaged, result.repaired) == (1, 1)
    assert world.sql("SELECT state, storage_class FROM blocks") == [("live", "hot")]
    assert world.get(ALICE, "/f.bin") == data


def test_a_fresh_upload_of_a_cold_block_brings_it_back_hot(world: World) -> None:
    """Bob uploads bytes whose block is in the cold tier (alice's, unread for months): dedup
    promotes his verified copy over the cold object instead of dropping it, so neither his
    download nor hers waits hours on a restore."""
    data, _ = _cold_file(world)
    world.put(BOB, "/b.bin", data)
    result = world.run_as(DedupResult, "dedup")
    assert (result.promoted, result.dropped) == (1, 0)
    assert world.sql("SELECT state, storage_class FROM blocks") == [("live", "hot")]
    assert world.get(BOB, "/b.bin") == data
    assert world.get(ALICE, "/f.bin") == data
    head = world.store.head(world.keys_under("blocks/")[0])
    assert head is not None and head.tier is StorageTier.HOT


def test_a_promotion_that_cannot_lock_the_row_leaves_the_cold_object_alone(
    world: World, database_url: str
) -> None:
    """Dedup copied a fresh upload over the cold object, then waited for the row's lock
    (a download or a batch commit holds it across S3 calls) and gave up after 2 s: the
    object was hot new bytes under a row still describing the cold ones, and a later
    dedup dropped copies against it on a HEAD alone. The row is now locked first."""
    data, key = _cold_file(world)
    world.put(BOB, "/b.bin", data)
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT 1 FROM blocks FOR UPDATE")  # until this block ends
        waited = world.run_as(DedupResult, "dedup")
    assert waited.promoted == 0 and "busy" in waited.errors[0]  # left for the next run
    head = world.store.head(key)
    assert head is not None and head.tier is StorageTier.COLD  # untouched
    assert world.sql("SELECT state FROM blocks") == [("cold",)]
    assert world.run_as(DedupResult, "dedup").promoted == 1  # the lock free: promoted
    assert world.sql("SELECT state, storage_class FROM blocks") == [("live", "hot")]
    assert world.get(ALICE, "/f.bin") == data


def test_bytes_put_after_verification_never_replace_a_cold_block(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob uploads a cold block's bytes, and PUTs garbage at his staged key after dedup read
    it. The copy over the cold object did not verify and was deleted: the cold object, the
    block's only copy, was gone with it, for alice too. It now lands at a landing key first."""
    data, key = _cold_file(world)
    world.put(BOB, "/b.bin", data)
    swap_staged_after_dedup_reads(world, monkeypatch)
    assert world.run_as(DedupResult, "dedup").promoted == 0
    monkeypatch.undo()
    head = world.store.head(key)
    assert head is not None and head.tier is StorageTier.COLD  # untouched
    assert world.keys_under("landing/") == []
    assert world.sql("SELECT state FROM blocks") == [("cold",)]
    _restored_on_demand(world, data)


def test_a_cold_block_whose_restored_copy_expires_during_scrub_stays_cold(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Head says the cold object is restored, the read finds it no longer is (the restored
    copy expired in between): intact as far as anyone knows. It was quarantined, for every
    owner, though its bytes were fine."""
    data, _ = _cold_file(world)
    head = world.store.head

    def restored_head(key: str) -> object:
        found = head(key)
        return None if found is None else replace(found, restored=True)

    monkeypatch.setattr(world.store, "head", restored_head)
    result = world.run_as(ScrubResult, "scrub")
    monkeypatch.undo()
    assert (result.checked, result.damaged) == (1, 0)
    assert world.sql("SELECT state FROM blocks") == [("cold",)]
    _restored_on_demand(world, data)


def test_gc_deletes_the_landing_object_a_killed_promotion_left(
    world: World, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """A dedup run killed between landing a copy of a cold block and copying it over the
    cold object left the landing object for ever. gc deletes it, unless a step holds the
    block's maintenance lock: that one is still using its landing."""
    data, _ = _cold_file(world)
    world.put(BOB, "/b.bin", data)
    die_copying(world, monkeypatch, source="landing/")  # after landing it
    with pytest.raises(Killed):
        world.run("dedup")
    monkeypatch.undo()
    landed = world.keys_under("landing/")
    assert len(landed) == 1
    block = world.sql("SELECT block_id FROM blocks")[0][0]

    with psycopg.connect(database_url, autocommit=True) as step:  # a live step's lock
        step.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LockClass.BLOCK, block))
        assert world.run_as(GcResult, "gc").landings_deleted == 0
        assert world.keys_under("landing/") == landed
    assert world.run_as(GcResult, "gc").landings_deleted == 1
    assert world.keys_under("landing/") == []
    assert world.run_as(DedupResult, "dedup").promoted == 1  # the next run lands it afresh
    assert world.get(BOB, "/b.bin") == data
