"""`Store.lock_for_commit` and `Store.view_for_commit`: the namespace lock and a commit's
reads in one statement, whose reads must still be current when another writer committed
while this one waited; the view's variant locks only when the root is the whole view."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from tessera.blocks import block_id
from tessera.domain import paths, sharing
from tessera.domain.services import Services
from tessera.metadata import Database
from tessera.metadata.store import NewJournal, Store
from tessera.ports import Principal
from tests.concurrency import wait_for_a_lock_waiter

from .conftest import put_file, share_with

DATA = b"a block alice can read"


def root_ns(db: Database, who: Principal) -> int:
    with db.transaction() as store:
        found = store.user_view(who.user_id)
    assert found is not None
    return found[0].root_ns_id


def lock_for_commit(store: Store, ns: int, keys: list[str], ids: list[str], who: Principal) -> Any:
    return store.lock_for_commit(
        ns, keys, ns_ids=[ns], block_ids=ids, upload_id=None, user_id=who.user_id
    )


def view_for_commit(store: Store, ns: int, keys: list[str], ids: list[str], who: Principal) -> Any:
    view, got = store.view_for_commit(who.user_id, keys, block_ids=ids, upload_id=None)
    assert view is not None and view[0].root_ns_id == ns
    return got


def namespace_is_locked(database_url: str, ns: int) -> bool:
    with psycopg.connect(database_url, autocommit=True) as other:
        try:
            other.execute("SELECT 1 FROM namespaces WHERE ns_id = %s FOR UPDATE NOWAIT", (ns,))
        except psycopg.errors.LockNotAvailable:
            return True
    return False


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
        assert got.session is None and got.expected == {}
        assert namespace_is_locked(database_url, ns)


def test_the_view_of_a_user_without_shares_comes_with_the_root_locked_and_read(
    services: Services, alice: Principal, database_url: str
) -> None:
    put_file(services, alice, "/Docs/seed.txt", DATA)
    ns = root_ns(services.db, alice)
    with services.db.transaction() as store:
        got = view_for_commit(store, ns, [paths.path_key("/Docs")], [block_id(DATA)], alice)
        assert got.kinds == {paths.path_key("/Docs"): ("folder", "/Docs")}
        assert list(got.readable) == [block_id(DATA)]
        assert namespace_is_locked(database_url, ns)


def test_a_user_with_a_shared_folder_gets_the_view_and_nothing_locked(
    services: Services, alice: Principal, bob: Principal, database_url: str
) -> None:
    put_file(services, alice, "/S/in.txt", DATA)
    sharing.account(services, bob)
    assert share_with(services, alice, "/S", bob, "editor").path_display == "/S"
    ns = root_ns(services.db, bob)
    with services.db.transaction() as store:
        view, got = store.view_for_commit(
            bob.user_id, [], block_ids=[block_id(DATA)], upload_id=None
        )
        assert view is not None and len(view[1]) == 2  # the root and the shared folder
        assert got is None
        assert not namespace_is_locked(database_url, ns)


@pytest.mark.parametrize("locking", [lock_for_commit, view_for_commit])
def test_what_a_writer_committed_while_the_lock_was_awaited_is_read(
    services: Services, alice: Principal, database_url: str, locking: Any
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
    result: list[Any] = []

    def committer() -> None:
        with services.db.transaction() as store:
            result.append(locking(store, ns, [key], [block_id(DATA)], alice))

    waiting = threading.Thread(target=committer)
    waiting.start()
    wait_for_a_lock_waiter(database_url, timeout=30)  # the commit waits for the namespace
    release.set()
    thread.join(10)
    waiting.join(10)
    (got,) = result
    assert got.kinds == {key: ("folder", "/Made While Waiting")}
    assert block_id(DATA) in got.readable
