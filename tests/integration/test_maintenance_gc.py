"""gc against real PostgreSQL and the local block store: retention, expiry, and never
deleting a block that a version or a live upload still needs — including when a commit
races the sweep (threads, real connections)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tessera.blocks import block_id
from tessera.domain import object_keys, uploads
from tessera.domain.errors import Unprocessable
from tessera.domain.models import UploadStartRequest
from tessera.maintenance import GcResult, MaintenanceSettings, run_step, run_workflow
from tessera.metadata.maintenance import MaintenanceTx
from tessera.ports import (
    BlockStore,
    EarlierVersion,
    PresignedRequest,
    StorageTier,
    StoredObject,
)
from tests.concurrency import wait_for_a_lock_waiter

from .conftest import usage_drift
from .test_maintenance_world import (
    ALICE,
    BLOCK,
    BOB,
    World,
    chunks,
)


def _gc(w: World, days: float, hours: float = 0) -> GcResult:
    return w.run_as(GcResult, "gc", days=days, hours=hours)


def assert_nothing_dangles(w: World) -> None:
    """Every block a version names is stored (the canonical copy, or the version's own
    staged copy) and decodes; every copy an open upload session holds is still there."""
    from tessera.maintenance.verify import check_stored

    rows = w.sql(
        "SELECT DISTINCT v.block_id, v.staged_key, b.state FROM version_blocks v"
        " LEFT JOIN blocks b USING (block_id)"
    )
    for bid, staged_key, state in rows:
        assert state is not None, f"{bid} is named by a version but has no blocks row"
        key = str(staged_key or "blocks/" + str(bid)[3:])
        if state in ("cold", "restoring") and not staged_key:
            assert w.store.head(key) is not None, f"{key} is gone"
            continue
        check = check_stored(w.store, w.ctx.keys, str(key), str(bid))
        assert check.ok, f"{key}: {check.reason}"
    for (held,) in w.sql(
        "SELECT u.staged_key FROM upload_blocks u JOIN upload_sessions s USING (upload_id)"
        " WHERE s.state = 'open' AND u.stored_size IS NOT NULL AND u.state = 'expected'"
    ):
        assert w.store.head(str(held)) is not None, f"open session lost {held}"


def test_trash_is_purged_after_retention_and_blocks_after_grace(world: World) -> None:
    data = secrets.token_bytes(3 * BLOCK)
    world.put(ALICE, "/old.bin", data)
    world.run("dedup")
    world.delete(ALICE, "/old.bin")

    assert _gc(world, days=29).trash_files_purged == 0
    result = _gc(world, days=31)
    assert (result.trash_files_purged, result.versions_purged, result.blocks_deleted) == (1, 1, 0)
    assert world.sql("SELECT DISTINCT refcount FROM blocks") == [(0,)]
    assert len(world.keys_under("blocks/")) == 3  # still inside the grace period

    result = _gc(world, days=31, hours=23)
    assert result.blocks_deleted == 0
    result = _gc(world, days=32, hours=1)
    assert result.blocks_deleted == 3
    assert result.bytes_freed >= len(data)
    assert world.keys_under("blocks/") == []
    assert world.sql("SELECT count(*) FROM blocks") == [(0,)]
    again = _gc(world, days=40)  # idempotent
    assert (again.trash_files_purged, again.blocks_deleted) == (0, 0)


def test_a_run_that_dies_after_deleting_rows_leaves_the_next_run_their_objects(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows go in one transaction, the objects after it commits: a run killed in
    between used to leave objects nothing named, for ever. Their tombstones now lead the
    next run to them, and a block uploaded again meanwhile keeps its object."""
    gone, back = secrets.token_bytes(BLOCK), secrets.token_bytes(BLOCK)
    world.put(ALICE, "/gone.bin", gone)
    world.put(ALICE, "/back.bin", back)
    world.run("dedup")
    world.delete(ALICE, "/gone.bin")
    world.delete(ALICE, "/back.bin")
    _gc(world, days=31)  # purges the trash: both blocks at refcount 0

    def killed(*_: object) -> None:
        raise SystemExit("killed between the row deletion and the object deletion")

    with monkeypatch.context() as m:
        m.setattr(world.ctx.store, "delete", killed)
        with pytest.raises(SystemExit):
            _gc(world, days=33)
    assert world.sql("SELECT count(*) FROM blocks") == [(0,)]
    assert len(world.keys_under("blocks/")) == 2  # what the killed run left behind
    assert len(world.sql("SELECT block_id FROM block_deletions")) == 2

    world.revs.clear()
    world.put(ALICE, "/again.bin", back)  # uploaded again: its row and object are back
    world.run("dedup")
    result = _gc(world, days=34)
    assert result.interrupted_deleted == 2 and result.bytes_freed >= BLOCK
    assert world.keys_under("blocks/") == ["blocks/" + block_id(back)[3:]]
    assert world.sql("SELECT count(*) FROM block_deletions") == [(0,)]
    assert world.get(ALICE, "/again.bin") == back
    assert_nothing_dangles(world)


def test_a_row_committed_while_gc_waits_for_the_block_lock_keeps_its_object(
    world: World, database_url: str
) -> None:
    """gc checks that a block still has no row once it holds the block's lock. The check
    used to share the statement that waited for the lock, and so its snapshot: a row
    committed meanwhile (a block uploaded again and promoted under the lock) went unseen,
    and gc deleted an object that row named."""
    from tessera.metadata.locks import LockClass

    bid = "b3:" + "ab" * 32
    found: list[set[str]] = []

    def gc_check() -> None:
        with world.ctx.repo.transaction() as tx:
            found.append(tx.lock_absent_blocks([bid]))

    with psycopg.connect(database_url) as promoter:
        promoter.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LockClass.BLOCK, bid))
        waiting = threading.Thread(target=gc_check)
        waiting.start()
        wait_for_a_lock_waiter(database_url)  # gc's statement waits for the lock (2 s at most)
        promoter.execute(
            "INSERT INTO blocks (block_id, size, stored_size, key_version, state)"
            " VALUES (%s, 1, 1, 1, 'live')",
            (bid,),
        )
        promoter.commit()  # the row lands as the lock goes
        waiting.join(10)
    assert found == [set()]


def test_idempotency_keys_are_deleted_after_the_retention(world: World) -> None:
    world.put(ALICE, "/old.bin", secrets.token_bytes(BLOCK), idempotency_key="dev-old")
    world.put(ALICE, "/new.bin", secrets.token_bytes(BLOCK), idempotency_key="dev-new")
    world.put(BOB, "/bob.bin", secrets.token_bytes(BLOCK), idempotency_key="dev-old")
    aged = world.sql(
        "UPDATE idempotency_keys SET created_at = now() - interval '8 days'"
        " WHERE key = 'dev-old' RETURNING user_id"
    )
    assert len(aged) == 2

    assert _gc(world, days=0).idempotency_keys_expired == 2  # 7 days old and more
    assert world.sql("SELECT key FROM idempotency_keys") == [("dev-new",)]
    assert _gc(world, days=6).idempotency_keys_expired == 0
    assert _gc(world, days=8).idempotency_keys_expired == 1
    assert world.sql("SELECT count(*) FROM idempotency_keys") == [(0,)]


def test_records_of_maintenance_runs_are_deleted_after_the_retention(world: World) -> None:
    """A local cloud records a dedup and a `reported` run every 10 s: kept for good, the
    table grew by 17,000 rows a day on an idle laptop."""
    world.sql(
        "INSERT INTO maintenance_runs (workflow, step, as_of, started_at, finished_at, result)"
        " SELECT 'dedup', 'verify', t, t, t, '{}' FROM unnest(ARRAY["
        " now() - interval '31 days', now() - interval '40 days', now() - interval '29 days'])"
        " AS t RETURNING 1"
    )
    assert _gc(world, days=0).run_records_expired == 2  # 30 days old and more
    old = "SELECT count(*) FROM maintenance_runs WHERE finished_at < now() - interval '28 days'"
    assert world.sql(old) == [(1,)]
    # a run as of a later time keeps them: they tell what ran until now
    assert _gc(world, days=60).run_records_expired == 0
    world.sql(
        "UPDATE maintenance_runs SET finished_at = finished_at - interval '2 days'"
        " WHERE finished_at < now() - interval '28 days' RETURNING 1"
    )
    assert _gc(world, days=0).run_records_expired == 1
    assert world.sql(old) == [(0,)]


def test_the_key_retention_must_outlast_an_upload_session() -> None:
    with pytest.raises(ValueError, match="idempotency_retention_days"):
        MaintenanceSettings(upload_ttl_s=2 * 86_400, idempotency_retention_days=1)


def test_gc_sets_right_the_quota_counters_that_drifted(world: World) -> None:
    """A counter off (code deployed before its migration, a bug) is found and set right
    under its row lock; right counters are left alone."""
    world.put(ALICE, "/a.bin", secrets.token_bytes(BLOCK))
    world.put(BOB, "/b.bin", secrets.token_bytes(2 * BLOCK))
    with world.svc.db.pool.connection() as conn:  # alice's counter drifts
        conn.execute(
            "UPDATE namespaces SET bytes_used = bytes_used + 12345 WHERE owner_id = %s",
            (ALICE.user_id,),
        )
    assert [ns for ns, *_ in usage_drift(world.svc.db)] != []
    assert _gc(world, days=0).usage_corrected == 1
    assert usage_drift(world.svc.db) == []
    assert _gc(world, days=0).usage_corrected == 0


def test_two_recounts_at_once_take_a_drift_off_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gc runs at once (an hourly run past its hour, the CLI beside the scheduler) read
    the same drift; the second took it off again once the first had committed."""
    from tessera.maintenance.gc import recount_usage

    world.put(ALICE, "/a.bin", secrets.token_bytes(BLOCK))
    with world.svc.db.pool.connection() as conn:
        conn.execute(
            "UPDATE namespaces SET bytes_used = bytes_used + 12345 WHERE owner_id = %s",
            (ALICE.user_id,),
        )
    first_read, first_done = threading.Event(), threading.Event()
    usage_drift_of, correct = MaintenanceTx.usage_drift, MaintenanceTx.correct_usage

    def reading(tx: MaintenanceTx, after: int, limit: int) -> tuple[int, list[tuple[int, int]]]:
        found = usage_drift_of(tx, after, limit)
        if threading.current_thread().name == "second" and found[1]:
            first_done.wait(5)  # holds the stale drift until the first run has committed
        return found

    def correcting(tx: MaintenanceTx, ns_id: int, drift: int) -> bool:
        if threading.current_thread().name == "first":
            first_read.set()
            time.sleep(0.5)  # the second run reads meanwhile (unless it must wait)
        return correct(tx, ns_id, drift)

    monkeypatch.setattr(MaintenanceTx, "usage_drift", reading)
    monkeypatch.setattr(MaintenanceTx, "correct_usage", correcting)

    done: list[str] = []  # the runs that returned (one that raised is missing: a thread's
    # exception is only a warning, and the drift would still be right)

    def first() -> None:
        recount_usage(world.ctx, datetime.now(UTC))
        done.append("first")
        first_done.set()

    def second() -> None:
        assert first_read.wait(5)
        recount_usage(world.ctx, datetime.now(UTC))
        done.append("second")

    runs = [threading.Thread(target=first, name="first")]
    runs.append(threading.Thread(target=second, name="second"))
    for run in runs:
        run.start()
    for run in runs:
        run.join(20)
    assert sorted(done) == ["first", "second"]  # both ran through (neither raised)
    assert usage_drift(world.svc.db) == []


@contextmanager
def _newest_namespace_drifted(database_url: str, tmp_path: Path) -> Iterator[World]:
    """A world of one-namespace chunks and no time budget, whose newest namespace's
    counter is off."""
    from .test_maintenance_world import make_world

    gen = make_world(database_url, tmp_path, batch_size=1, step_budget_s=0.0)
    w = next(gen)
    try:
        for who in (ALICE, BOB):
            w.put(who, "/x.bin", secrets.token_bytes(BLOCK))
        with w.svc.db.pool.connection() as conn:
            conn.execute(
                "UPDATE namespaces SET bytes_used = 7"
                " WHERE ns_id = (SELECT max(ns_id) FROM namespaces)"
            )
        yield w
    finally:
        gen.close()


def test_the_recount_reaches_the_last_namespace_chunk_by_chunk(
    database_url: str, tmp_path: Path
) -> None:
    with _newest_namespace_drifted(database_url, tmp_path) as w:
        result = run_workflow(w.ctx, "gc")
        assert isinstance(result, GcResult) and result.usage_corrected == 1
        assert usage_drift(w.svc.db) == []


def test_a_recount_out_of_budget_resumes_where_it_stopped(
    database_url: str, tmp_path: Path
) -> None:
    """A call whose budget is spent says `more`; the next goes on after the last namespace
    done. Started over each time, a pass over many namespaces never reached the end."""
    with _newest_namespace_drifted(database_url, tmp_path) as w:
        [(namespaces,)] = w.sql("SELECT count(*) FROM namespaces")
        assert isinstance(namespaces, int)
        calls = [run_step(w.ctx, "gc", "recount_usage") for _ in range(namespaces + 1)]
        assert [r.more for r in calls] == [True] * namespaces + [False]
        assert sum(r.usage_corrected for r in calls if isinstance(r, GcResult)) == 1
        assert usage_drift(w.svc.db) == []
        assert w.sql("SELECT count(*) FROM maintenance_cursors") == [(0,)]  # the pass ended


def test_old_versions_go_but_latest_and_shared_blocks_stay(world: World) -> None:
    common = secrets.token_bytes(BLOCK)
    v1 = common + secrets.token_bytes(BLOCK)
    v2 = common + secrets.token_bytes(BLOCK)
    v3 = common + secrets.token_bytes(BLOCK)
    for data in (v1, v2, v3):
        world.put(ALICE, "/doc.txt", data)
    world.run("dedup")

    assert _gc(world, days=29).versions_purged == 0
    result = _gc(world, days=31)
    assert result.versions_purged == 2
    assert world.sql("SELECT rev FROM file_versions") == [(3,)]
    common_id = block_id(common)
    assert world.sql("SELECT refcount FROM blocks WHERE block_id = %s", common_id) == [(1,)]
    assert _gc(world, days=33).blocks_deleted == 2  # the tails of v1 and v2
    assert world.get(ALICE, "/doc.txt") == v3
    assert_nothing_dangles(world)


def test_a_version_is_kept_while_it_was_current_within_the_retention(world: World) -> None:
    """A version written 40 days ago but replaced only 10 days ago was the file's content
    20 days ago: restoring "as of three weeks ago" needs it, so its own age alone must not
    purge it (the test above writes every version in the same instant, where the two
    conditions are one)."""
    revs = [secrets.token_bytes(BLOCK + n) for n in range(3)]
    for data in revs:
        world.put(ALICE, "/doc.txt", data)
    world.run("dedup")
    for rev, days in ((1, 40), (2, 10)):
        world.sql(
            "UPDATE file_versions SET server_time = now() - make_interval(days => %s)"
            " WHERE rev = %s RETURNING rev",
            days,
            rev,
        )
    assert _gc(world, days=0).versions_purged == 0  # rev 1 was current until 10 days ago
    assert world.sql("SELECT rev FROM file_versions ORDER BY rev") == [(1,), (2,), (3,)]
    assert _gc(world, days=21).versions_purged == 1  # now replaced 31 days before as_of
    assert world.sql("SELECT rev FROM file_versions ORDER BY rev") == [(2,), (3,)]
    assert world.get(ALICE, "/doc.txt") == revs[2]
    assert_nothing_dangles(world)


def test_a_purge_run_as_of_the_past_still_gives_freed_blocks_their_grace(world: World) -> None:
    """A block freed by a run `--as-of` ten days ago was noted as freed then: the next
    ordinary run deleted it at once, without the day's grace that lets an upload which
    was told the block exists commit it."""
    world.put(ALICE, "/a.bin", secrets.token_bytes(BLOCK))
    world.run("dedup")
    world.delete(ALICE, "/a.bin")
    world.sql("UPDATE files SET deleted_at = now() - interval '60 days' RETURNING 1")
    world.sql("UPDATE upload_sessions SET state = 'expired' RETURNING 1")  # done long ago
    assert _gc(world, days=-10).trash_files_purged == 1  # 50 days in the trash then
    assert _gc(world, days=0).blocks_deleted == 0  # freed now, whatever the run's as-of
    assert _gc(world, days=2).blocks_deleted == 1


def test_a_block_shared_with_another_user_survives_the_other_purge(world: World) -> None:
    data = secrets.token_bytes(2 * BLOCK)
    world.put(ALICE, "/a.bin", data)
    world.put(BOB, "/b.bin", data)
    world.run("dedup")
    world.delete(ALICE, "/a.bin")
    _gc(world, days=31)
    assert _gc(world, days=35).blocks_deleted == 0
    assert world.get(BOB, "/b.bin") == data
    assert_nothing_dangles(world)


def test_abandoned_upload_is_expired_and_its_copies_deleted(world: World) -> None:
    data = secrets.token_bytes(2 * BLOCK)
    # start an upload and PUT the blocks, but never commit
    entry_data = chunks(data)
    from tessera.blocks import content_hash

    ids = [block_id(c) for c in entry_data]
    started = uploads.start_upload(
        world.svc,
        ALICE,
        UploadStartRequest.model_validate(
            {
                "files": [
                    {
                        "path": "/never.bin",
                        "size": len(data),
                        "content_hash": content_hash(ids),
                        "blocks": [{"id": i, "size": BLOCK} for i in ids],
                    }
                ]
            }
        ),
    )
    for n, need in enumerate(started.needed):
        world.store.put(object_keys.staging_key(started.upload_id, need.id, n), b"x" * 100)
    assert len(world.keys_under("staging/")) == 2

    assert _gc(world, days=0).sessions_expired == 0  # still open
    result = _gc(world, days=1)
    assert (result.sessions_expired, result.staged_deleted) == (1, 2)
    assert world.keys_under("staging/") == []
    assert world.sql("SELECT count(*) FROM upload_sessions") == [(0,)]


def test_expired_session_keeps_copies_that_a_version_still_names(world: World) -> None:
    data = secrets.token_bytes(2 * BLOCK)
    world.put(ALICE, "/kept.bin", data)  # committed, not yet verified by dedup
    result = _gc(world, days=1)
    assert result.sessions_expired == 1 and result.staged_deleted == 0
    assert world.get(ALICE, "/kept.bin") == data
    dedup = world.run("dedup")  # verification still happens after the session expired
    assert dedup.to_dict()["promoted"] == 2
    assert _gc(world, days=2).staged_deleted == 2  # the settled rows are cleaned up
    assert world.keys_under("staging/") == []
    assert world.get(ALICE, "/kept.bin") == data


def test_a_copy_named_after_gc_chose_it_is_kept(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc chooses abandoned copies in one statement, from a snapshot taken before it locks
    them: a commit carrying a copy can lock it FOR SHARE and commit in between. The window
    is too short to hit on purpose, so the choice is made stale here: it returns copies of
    expired sessions (locked, as the real one does) whatever the versions say. The deletion
    must re-check them after the lock and keep what a version names."""
    data = secrets.token_bytes(2 * BLOCK)
    world.put(ALICE, "/kept.bin", data)  # committed from staged copies, not yet verified

    def chosen_before_the_commit(tx: MaintenanceTx, limit: int, _settled: datetime) -> object:
        rows = tx.conn.execute(
            "SELECT u.upload_id, u.block_id, u.staged_key, COALESCE(u.stored_size, 0)"
            " FROM upload_blocks u JOIN upload_sessions s USING (upload_id)"
            " WHERE s.state = 'expired' LIMIT %s FOR UPDATE OF u",
            (limit,),
        ).fetchall()
        return [tuple(r) for r in rows]

    monkeypatch.setattr(MaintenanceTx, "lock_abandoned_copies", chosen_before_the_commit)
    result = _gc(world, days=1)
    assert (result.sessions_expired, result.staged_deleted, result.bytes_freed) == (1, 0, 0)
    assert len(world.keys_under("staging/")) == 2
    assert world.get(ALICE, "/kept.bin") == data
    assert_nothing_dangles(world)


# ---------------------------------------------------------------------------------------
# A commit racing the sweep. The commit is paused at a precise point by a block store whose
# listing of one upload session waits for the test, while gc runs to completion on other
# connections.


class GatedStore(BlockStore):
    """A real block store whose answer about staged copies under `gate_prefix` is given,
    then held until released (a commit paused right after checking its staged blocks)."""

    def __init__(self, inner: BlockStore, gate_prefix: str) -> None:
        self.inner, self.gate_prefix = inner, gate_prefix
        self.reached, self.release = threading.Event(), threading.Event()

    def sizes(self, keys: Sequence[str]) -> dict[str, int]:
        answer = self.inner.sizes(keys)
        if self.gate_prefix and any(k.startswith(self.gate_prefix) for k in keys):
            self.reached.set()
            assert self.release.wait(30)
        return answer

    def list_sizes(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, int]]:
        return self.inner.list_sizes(prefix, start_after=start_after, limit=limit)

    def head(self, key: str) -> StoredObject | None:
        return self.inner.head(key)

    def presign_put(
        self, key: str, *, size: int, sha256: bytes, expires_in: int = 900
    ) -> PresignedRequest:
        return self.inner.presign_put(key, size=size, sha256=sha256, expires_in=expires_in)

    def presign_get(self, key: str, *, expires_in: int = 900) -> PresignedRequest:
        return self.inner.presign_get(key, expires_in=expires_in)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)

    def copy(self, src: str, dst: str, *, version: str | None = None) -> None:
        self.inner.copy(src, dst, version=version)

    def earlier_versions(self, key: str) -> list[EarlierVersion]:
        return self.inner.earlier_versions(key)

    def undelete(self, key: str) -> bool:
        return self.inner.undelete(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def set_tier(self, key: str, tier: StorageTier) -> None:
        self.inner.set_tier(key, tier)

    def restore(self, key: str, *, days: int = 7) -> None:
        self.inner.restore(key, days=days)


def _paused_commit(
    world: World, data: bytes, path: str
) -> tuple[GatedStore, threading.Thread, dict[str, object]]:
    """Start committing `data` in a thread, paused right after the commit checked its
    session's staged copies (readable blocks are checked before that)."""
    outcome: dict[str, object] = {}
    gated = GatedStore(world.store, gate_prefix="")
    racing = replace(world, svc=replace(world.svc, block_store=gated))

    def arm(upload_id: str) -> None:
        gated.gate_prefix = object_keys.staging_prefix(upload_id)

    def run() -> None:
        try:
            outcome["entry"] = racing.put(ALICE, path, data, before_commit=arm)
        except Unprocessable as exc:
            outcome["refused"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert gated.reached.wait(30), "the commit never reached the gate"
    return gated, thread, outcome


def test_commit_reusing_a_block_while_gc_deletes_it_is_refused(world: World) -> None:
    old, new = secrets.token_bytes(BLOCK), secrets.token_bytes(BLOCK)
    world.put(ALICE, "/old.bin", old)
    world.run("dedup")
    world.delete(ALICE, "/old.bin")
    world.revs.clear()

    # the commit sees `old` readable (its trashed version still holds it), then pauses
    gated, thread, outcome = _paused_commit(world, old + new, "/new.bin")
    # meanwhile gc purges the trash and, a grace period later, deletes the block
    assert _gc(world, days=31).trash_files_purged == 1
    assert _gc(world, days=33).blocks_deleted == 1
    gated.release.set()
    thread.join(30)

    assert "refused" in outcome, "the commit referenced a block gc had deleted"
    assert_nothing_dangles(world)


def test_gc_does_not_expire_a_session_a_commit_is_using(world: World) -> None:
    data = secrets.token_bytes(2 * BLOCK)
    gated, thread, outcome = _paused_commit(world, data, "/racy.bin")
    result = _gc(world, days=2)  # the session is long expired as far as gc can tell
    gated.release.set()
    thread.join(30)

    assert "entry" in outcome  # the commit went through, so its copies must have stayed
    assert result.staged_deleted == 0
    assert world.get(ALICE, "/racy.bin") == data
    assert_nothing_dangles(world)


def test_gc_skips_a_block_whose_row_a_commit_holds(world: World, database_url: str) -> None:
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/x.bin", data)
    world.run("dedup")
    world.delete(ALICE, "/x.bin")
    _gc(world, days=31)
    bid = block_id(data)
    with psycopg.connect(database_url) as committer:
        # what a commit's refcount bump does: hold the row lock until it commits
        committer.execute("UPDATE blocks SET refcount = refcount + 1 WHERE block_id = %s", (bid,))
        started = datetime.now(UTC)
        result = run_workflow(world.ctx, "gc", as_of=started + timedelta(days=40))
        waited = datetime.now(UTC) - started
        assert isinstance(result, GcResult) and result.blocks_deleted == 0
        assert waited < timedelta(seconds=10)  # skipped, not waited for
        committer.commit()
    assert world.store.head("blocks/" + bid[3:]) is not None
    assert _gc(world, days=45).blocks_deleted == 0  # refcount 1 now: kept for good


def test_a_folders_entries_leave_the_trash_before_the_folder(
    database_url: str, tmp_path: Path
) -> None:
    """They share the folder's deleted_at: a batch took any of them, and a run that stopped
    between batches left /A/B/c with /A/B purged (undeleting /A restored c, folderless)."""
    from tessera.domain.commits import parent_keys

    from .test_maintenance_world import make_world

    gen = make_world(database_url, tmp_path, batch_size=8, step_budget_s=0.0)  # 1 a step
    w = next(gen)
    try:
        for path in ("/A/B/c.bin", "/A/B/C/d.bin", "/A/e.bin", "/A/Z/f.bin"):
            w.put(ALICE, path, secrets.token_bytes(1000))
        w.delete(ALICE, "/A")
        as_of = datetime.now(UTC) + timedelta(days=31)
        for _ in range(20):
            left = {str(key) for (key,) in w.sql("SELECT path_key FROM files WHERE is_deleted")}
            orphans = {key for key in left if not set(parent_keys(key)) <= left}
            assert not orphans, f"purged before their entries: the folders of {orphans}"
            if not left:
                break
            run_step(w.ctx, "gc", "purge_trash", as_of=as_of)
        assert not left
    finally:
        gen.close()


def test_a_step_stops_at_its_budget_and_says_more(database_url: str, tmp_path: Path) -> None:
    from tessera.maintenance import run_step

    from .test_maintenance_world import make_world

    gen = make_world(database_url, tmp_path, batch_size=8, step_budget_s=0.0)
    w = next(gen)
    try:
        for i in range(6):
            w.put(ALICE, f"/f{i}.bin", secrets.token_bytes(BLOCK))
            w.delete(ALICE, f"/f{i}.bin")
        as_of = datetime.now(UTC) + timedelta(days=31)
        first = run_step(w.ctx, "gc", "purge_trash", as_of=as_of)
        assert isinstance(first, GcResult)
        assert first.more and first.trash_files_purged == 1  # batch of 8 // 10 → 1 file
        total = run_workflow(w.ctx, "gc", as_of=as_of)  # the runner loops while `more`
        assert isinstance(total, GcResult) and total.trash_files_purged == 5
        assert not total.more
    finally:
        gen.close()
