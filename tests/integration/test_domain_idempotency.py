"""Writes retried after a lost answer: restore, undelete, move, delete and create_folder
with an idempotency key answer a retry as they answered the first request, and write
nothing again (the client retries every request on a network error or a 5xx)."""

from __future__ import annotations

import psycopg
import pytest

from tessera.domain import files
from tessera.domain.errors import Conflict, NotFound, Unprocessable
from tessera.domain.models import (
    DeleteRequest,
    FileEntry,
    MoveRequest,
    RestoreRequest,
    RevisionsRequest,
    TrashListRequest,
)
from tessera.domain.services import Services
from tessera.metadata.store import Store
from tessera.ports import Principal

from .conftest import get_file, put_file
from .test_domain_files import race_held


def _journal_length(services: Services) -> int:
    with services.db.pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM journal").fetchone()
    assert row is not None and isinstance(row[0], int)
    return row[0]


def test_a_retried_undelete_answers_as_the_first(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/f.txt", b"f")
    files.delete(services, alice, DeleteRequest(path="/f.txt"))
    req = RestoreRequest(path="/f.txt", idempotency_key="undelete-1")
    first = files.restore(services, alice, req)
    written = _journal_length(services)

    assert files.restore(services, alice, req) == first
    assert _journal_length(services) == written
    # without a key, the retry says what it finds: the file is not deleted (any more)
    with pytest.raises(Unprocessable, match="not deleted"):
        files.restore(services, alice, RestoreRequest(path="/f.txt"))


def test_a_retried_restore_of_a_rev_writes_one_version(
    services: Services, alice: Principal
) -> None:
    put_file(services, alice, "/r", b"one")
    put_file(services, alice, "/r", b"two", parent_rev=1)
    req = RestoreRequest(path="/r", rev=1, idempotency_key="restore-1")
    first = files.restore(services, alice, req)
    assert isinstance(first, FileEntry) and first.rev == 3

    assert files.restore(services, alice, req) == first
    history = files.revisions(services, alice, RevisionsRequest(path="/r"))
    assert [e.rev for e in history.entries] == [3, 2, 1]
    assert get_file(services, alice, "/r") == b"one"


def test_a_retried_move_answers_as_the_first_not_404(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/a/x.txt", b"x")
    req = MoveRequest(from_path="/a", to_path="/b", idempotency_key="move-1")
    first = files.move(services, alice, req)

    assert files.move(services, alice, req) == first
    assert get_file(services, alice, "/b/x.txt") == b"x"
    with pytest.raises(NotFound):  # what the retry answered before keys
        files.move(services, alice, MoveRequest(from_path="/a", to_path="/b"))


def test_a_retried_delete_answers_as_the_first(services: Services, alice: Principal) -> None:
    e = put_file(services, alice, "/d.txt", b"d")
    req = DeleteRequest(
        path="/d.txt", parent_rev=e.rev, parent_file_id=e.file_id, idempotency_key="del-1"
    )
    first = files.delete(services, alice, req)
    assert files.delete(services, alice, req) == first
    trash = files.trash_list(services, alice, TrashListRequest()).entries
    assert [t.path_display for t in trash] == ["/d.txt"]


def test_a_retried_create_folder_answers_as_the_first(services: Services, alice: Principal) -> None:
    first = files.create_folder(services, alice, "/New", idempotency_key="mkdir-1")
    again = files.create_folder(services, alice, "/New", idempotency_key="mkdir-1")
    assert again == first
    with pytest.raises(Conflict, match="already exists"):
        files.create_folder(services, alice, "/New", idempotency_key="mkdir-2")


def test_a_key_sent_with_another_request_is_refused(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/a.txt", b"a")
    files.move(
        services, alice, MoveRequest(from_path="/a.txt", to_path="/b.txt", idempotency_key="k")
    )
    with pytest.raises(Unprocessable, match="idempotency_key was already used"):
        files.move(
            services, alice, MoveRequest(from_path="/a.txt", to_path="/c.txt", idempotency_key="k")
        )
    with pytest.raises(Unprocessable, match="idempotency_key was already used"):
        files.delete(services, alice, DeleteRequest(path="/b.txt", idempotency_key="k"))
    with pytest.raises(Unprocessable, match="idempotency_key was already used"):
        files.create_folder(services, alice, "/k", idempotency_key="k")
    assert get_file(services, alice, "/b.txt") == b"a"


def test_keys_are_per_user_and_a_failed_request_leaves_its_key_free(
    services: Services, alice: Principal, bob: Principal
) -> None:
    put_file(services, alice, "/a.txt", b"a")
    put_file(services, bob, "/a.txt", b"b")
    with pytest.raises(NotFound):
        files.move(services, alice, MoveRequest(from_path="/no", to_path="/x", idempotency_key="k"))
    # the failed move claimed nothing: the key is free for the request alice makes next
    moved = files.move(
        services, alice, MoveRequest(from_path="/a.txt", to_path="/x.txt", idempotency_key="k")
    )
    assert moved.path_display == "/x.txt"
    # bob's key of the same name is his own
    bobs = files.move(
        services, bob, MoveRequest(from_path="/a.txt", to_path="/y.txt", idempotency_key="k")
    )
    assert bobs.path_display == "/y.txt" and get_file(services, bob, "/y.txt") == b"b"


def test_a_retry_racing_the_first_request_waits_and_gets_its_answer(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """The client timed out while the first request was still running, and retried: the
    retry waits for the first's key, then answers with its result instead of a 404."""
    put_file(services, alice, "/a.txt", b"a")
    req = MoveRequest(from_path="/a.txt", to_path="/b.txt", idempotency_key="race")
    first, second = race_held(
        monkeypatch,
        database_url,
        "claim_idempotency_keys",
        lambda: files.move(services, alice, req),
        lambda: files.move(services, alice, req),
        on=Store,
    )
    assert isinstance(first, FileEntry) and first.path_display == "/b.txt"
    assert second == first


def test_a_key_gc_deletes_while_it_is_claimed_again_keeps_the_new_answer(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """A key past its retention is claimed by a new request just as gc deletes it: the
    claim saw the old row (it conflicted), then found it gone. The new request must still
    hold the key, so its own retry gets its answer, not a 404 from doing it twice."""
    put_file(services, alice, "/a.txt", b"a")
    files.move(
        services, alice, MoveRequest(from_path="/a.txt", to_path="/b.txt", idempotency_key="k")
    )
    original = Store._all

    def gc_deletes_after_the_claim_conflicts(
        self: Store, sql: str, params: object = ()
    ) -> list[object]:
        rows = original(self, sql, params)  # type: ignore[arg-type]
        if sql.startswith("INSERT INTO idempotency_keys") and not rows:
            monkeypatch.setattr(Store, "_all", original)  # once
            with psycopg.connect(database_url, autocommit=True) as gc:
                gc.execute("DELETE FROM idempotency_keys WHERE key = 'k'")  # as gc does
        return rows

    monkeypatch.setattr(Store, "_all", gc_deletes_after_the_claim_conflicts)
    req = MoveRequest(from_path="/b.txt", to_path="/c.txt", idempotency_key="k")
    first = files.move(services, alice, req)
    assert Store._all is original, "the claim never conflicted with the old key"

    assert files.move(services, alice, req) == first
    assert get_file(services, alice, "/c.txt") == b"a"
