"""`Store.lock_for_commit`: the namespace lock and a commit's reads in one statement, whose
reads must still be current when another writer committed while this one waited."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tessera.blocks import block_id
from tessera.domain import paths
from tessera.domain.services import Services
from tessera.metadata import Database
from tessera.metadata.store import NewJournal, Store
from tessera.ports import Principal

from .conftest import put_file

DATA = b"a block alice can read"


def root_ns(db: Database, who: Principal) -> int:
    with db.transaction() as store:
        found = store.user_view(who.user_id)
    assert found is not None
    return found[0].root_ns_id


def reads(store: Store, ns: int, keys: list[str], ids: list[str], who: Principal) -> object:
    return store.lock_for_commit(
        ns, keys, ns_ids=[ns], block_ids=ids, upload_id=None, user_id=who.user_id
    )


def create_folder(store: Store, ns: int, display: str) -> None:
    """A folder as a writer makes one: its row and a journal entry (which bumps the seq)."""
    key = paths.path_key(display)
    assert store.insert_file(ns, f"fid-{key}", key, "/", display, "folder")
    store.append_journal(
        ns,
        [NewJournal(f"fid-{key}", 0, "upsert", "folder", key, "/", display)],
        kind="file",
        payload={},
    )


def test_reads_parents_and_readable_blocks_and_holds_the_lock(
    services: Services, alice: Principal, database_url: str
) -> None:
    put_file(services, alice, "/Docs/seed.txt", DATA)
    ns = root_ns(services.db, alice)
    bid, unknown = block_id(DATA), block_id(b"never uploaded")
    with services.db.transaction() as store:
        got = store.lock_for_commit(
            ns,
            [paths.path_key("/Docs"), paths.path_key("/nothing")],
            ns_ids=[ns],
            block_ids=[bid, unknown],
            upload_id=None,
            user_id=alice.user_id,
        )
        assert got.kinds == {paths.path_key("/Docs"): ("folder", "/Docs")}
        assert list(got.readable) == [bid] and got.readable[bid].size == len(DATA)
        assert got.session is None and got.expected == {} and got.staged_count == 0
        with (
            psycopg.connect(database_url, autocommit=True) as other,
            pytest.raises(psycopg.errors.LockNotAvailable),
        ):
            other.execute("SELECT 1 FROM namespaces WHERE ns_id = %s FOR UPDATE NOWAIT", (ns,))


def test_what_a_writer_committed_while_the_lock_was_awaited_is_read(
    services: Services, alice: Principal, database_url: str
) -> None:
    put_file(services, alice, "/seed.txt", DATA)
    ns = root_ns(services.db, alice)
    key = paths.path_key("/Made While Waiting")
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with services.db.transaction() as store:
            store.lock_namespace(ns)
            holding.set()
            release.wait(10)
            create_folder(store, ns, "/Made While Waiting")

    thread = threading.Thread(target=writer)
    thread.start()
    assert holding.wait(10)
    result: list[object] = []

    def committer() -> None:
        with services.db.transaction() as store:
            result.append(reads(store, ns, [key], [block_id(DATA)], alice))

    waiting = threading.Thread(target=committer)
    waiting.start()
    with psycopg.connect(database_url, autocommit=True) as admin:
        for _ in range(200):  # until the commit's statement waits for the namespace lock
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE 'WITH lk AS%%'"
            ).fetchone()
            if row and row[0]:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the commit's statement never waited for the lock")
    release.set()
    thread.join(10)
    waiting.join(10)
    (got,) = result
    assert got.kinds == {key: ("folder", "/Made While Waiting")}  # type: ignore[attr-defined]
    assert block_id(DATA) in got.readable  # type: ignore[attr-defined]
