"""Uploads and commits against real PostgreSQL and the real local block store."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
import threading
from typing import Any

import pytest
from pydantic import ValidationError

from tessera.blocks import block_id, content_hash, stored_size_limit
from tessera.domain import commits, files, uploads
from tessera.domain.errors import Conflict, NotFound, PayloadTooLarge, Unprocessable
from tessera.domain.models import (
    BlockSpec,
    CommitBatchRequest,
    CommitBatchResponse,
    DeleteRequest,
    UploadFileSpec,
    UploadStartRequest,
    UploadUrlBlock,
    UploadUrlsRequest,
    UploadUrlsResponse,
)
from tessera.domain.services import Services
from tessera.metadata.store import Store
from tessera.ports import Principal
from tests.concurrency import run_at_once

from .conftest import (
    commit_request,
    get_file,
    put_file,
    share_with,
    split_blocks,
    upload_blocks,
)
from .test_domain_files import race_held


def _spec(path: str, chunks: list[bytes]) -> UploadFileSpec:
    ids = [block_id(c) for c in chunks]
    return UploadFileSpec(
        path=path,
        size=sum(map(len, chunks)),
        content_hash=content_hash(ids),
        blocks=[BlockSpec(id=i, size=len(c)) for i, c in zip(ids, chunks, strict=True)],
    )


def test_commit_new_then_update_round_trips(services: Services, alice: Principal) -> None:
    data = bytes(range(256)) * 1000
    first = put_file(services, alice, "/Docs/a.bin", data)
    assert (first.rev, first.size, first.path_display) == (1, len(data), "/Docs/a.bin")
    assert first.content_hash == content_hash(block_id(c) for c in split_blocks(data))
    second = put_file(services, alice, "/Docs/a.bin", data + b"tail", parent_rev=1)
    assert (second.rev, second.file_id) == (2, first.file_id)
    assert get_file(services, alice, "/Docs/a.bin") == data + b"tail"
    assert get_file(services, alice, "/Docs/a.bin", rev=1) == data


def test_empty_file(services: Services, alice: Principal) -> None:
    entry = put_file(services, alice, "/empty", b"")
    assert entry.size == 0
    assert get_file(services, alice, "/empty") == b""


def test_stale_parent_rev_is_409_with_current_rev(services: Services, alice: Principal) -> None:
    e = put_file(services, alice, "/f", b"one")
    put_file(services, alice, "/f", b"two", parent_rev=1)
    with pytest.raises(Conflict) as info:
        put_file(services, alice, "/f", b"three", parent_rev=1)
    body = info.value.to_body()["error"]
    assert body["rev"] == 2 and body["file_id"] == e.file_id
    with pytest.raises(Conflict):  # a "new" file where one exists
        put_file(services, alice, "/F", b"new")


def test_a_file_made_again_at_the_same_rev_is_409_for_the_old_ones_editor(
    services: Services, alice: Principal
) -> None:
    """Deleted and made again elsewhere, the new file is at rev 1 like the old one was: a
    stale device's edit of the old file (parent_rev 1) landed as the new file's rev 2, no
    409, no conflicted copy. `parent_file_id` tells them apart, for commits and deletes."""
    old = put_file(services, alice, "/a.txt", b"old")
    files.delete(services, alice, DeleteRequest(path="/a.txt"))
    new = put_file(services, alice, "/a.txt", b"made again")
    assert new.rev == 1 and new.file_id != old.file_id
    chunks = split_blocks(b"the stale edit", 64 * 1024)
    upload_id = upload_blocks(services, alice, "/a.txt", chunks)
    stale = commit_request("/a.txt", chunks, upload_id, parent_rev=1)
    with pytest.raises(Conflict) as info:
        commits.commit(services, alice, stale.model_copy(update={"parent_file_id": old.file_id}))
    body = info.value.to_body()["error"]
    assert (body["rev"], body["file_id"]) == (1, new.file_id)
    with pytest.raises(Conflict):
        files.delete(
            services,
            alice,
            DeleteRequest(path="/a.txt", parent_rev=1, parent_file_id=old.file_id),
        )
    assert get_file(services, alice, "/a.txt") == b"made again"
    # the right file at the right rev goes through
    ok = commits.commit(services, alice, stale.model_copy(update={"parent_file_id": new.file_id}))
    assert (ok.file_id, ok.rev) == (new.file_id, 2)


def test_only_readable_blocks_are_skipped(
    services: Services, alice: Principal, bob: Principal
) -> None:
    chunks = split_blocks(b"x" * 200_000)
    put_file(services, alice, "/mine", b"x" * 200_000)
    own = uploads.start_upload(services, alice, UploadStartRequest(files=[_spec("/again", chunks)]))
    assert own.needed == []  # alice can read every block already
    other = uploads.start_upload(services, bob, UploadStartRequest(files=[_spec("/his", chunks)]))
    assert {n.id for n in other.needed} == {block_id(c) for c in chunks}  # no dedup leak


def test_commit_reusing_readable_blocks_needs_no_upload(
    services: Services, alice: Principal
) -> None:
    chunks = split_blocks(b"y" * 100_000)
    put_file(services, alice, "/one", b"y" * 100_000)
    entry = commits.commit(services, alice, commit_request("/two", chunks, None))
    assert get_file(services, alice, "/two") == b"y" * 100_000
    assert entry.rev == 1


def test_blocks_never_uploaded_are_rejected(
    services: Services, alice: Principal, bob: Principal
) -> None:
    chunks = [b"secret data of alice"]
    put_file(services, alice, "/secret", chunks[0])
    # bob claims alice's block id without an upload session, then with an empty one
    with pytest.raises(Unprocessable, match="never uploaded"):
        commits.commit(services, bob, commit_request("/stolen", chunks, None))
    upload_id = upload_blocks(services, bob, "/stolen", chunks, put=False)
    with pytest.raises(Unprocessable, match="never uploaded"):
        commits.commit(services, bob, commit_request("/stolen", chunks, upload_id))
    # and an id nobody ever uploaded
    with pytest.raises(Unprocessable, match="never uploaded"):
        commits.commit(services, bob, commit_request("/x", [b"nobody"], upload_id))


def test_another_users_upload_id_is_404(
    services: Services, alice: Principal, bob: Principal
) -> None:
    chunks = [b"alice's bytes"]
    upload_id = upload_blocks(services, alice, "/a", chunks)
    with pytest.raises(NotFound):
        commits.commit(services, bob, commit_request("/a", chunks, upload_id))
    with pytest.raises(NotFound):
        uploads.upload_urls(
            services,
            bob,
            UploadUrlsRequest(
                upload_id=upload_id,
                blocks=[UploadUrlBlock(id=block_id(chunks[0]), size=10, sha256="A" * 43 + "=")],
            ),
        )


def test_another_users_upload_id_in_a_batch_touches_nothing_of_theirs(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """The batch read a session's expected blocks before it looked whose it was: another
    user's upload_id had them locked, their staged copies asked about, and a `blocks` row
    made for each, committed with the entry's 404."""
    chunks = [b"alice's block, uploaded, not committed yet"]
    upload_id = upload_blocks(services, alice, "/a", chunks)
    batch = CommitBatchRequest(entries=[commit_request("/b", chunks, upload_id)])
    [answer] = commits.commit_batch(services, bob, batch).entries
    assert answer.status == 404
    with services.db.transaction() as store:
        made = store.conn.execute(
            "SELECT count(*) FROM blocks WHERE block_id = %s", (block_id(chunks[0]),)
        ).fetchone()
    assert made == (0,)
    commits.commit(services, alice, commit_request("/a", chunks, upload_id))  # still hers
    assert get_file(services, alice, "/a") == chunks[0]


def test_declared_hash_and_sizes_are_checked(services: Services, alice: Principal) -> None:
    chunks = [b"abc", b"def"]
    upload_id = upload_blocks(services, alice, "/h", chunks)
    req = commit_request("/h", chunks, upload_id)
    with pytest.raises(Unprocessable, match="content_hash"):
        commits.commit(services, alice, req.model_copy(update={"content_hash": "b3:" + "0" * 64}))
    with pytest.raises(Unprocessable, match="sum of its block sizes"):
        commits.commit(services, alice, req.model_copy(update={"size": 7}))
    wrong = [BlockSpec(id=b.id, size=b.size + 1) for b in req.blocks or ()]
    with pytest.raises(Unprocessable):
        commits.commit(services, alice, req.model_copy(update={"blocks": wrong, "size": 8}))
    assert commits.commit(services, alice, req).rev == 1


def test_limits_are_413(services: Services, alice: Principal) -> None:
    big = BlockSpec(id="b3:" + "1" * 64, size=services.settings.max_block_size + 1)
    spec = UploadFileSpec(
        path="/big", size=big.size, content_hash=content_hash([big.id]), blocks=[big]
    )
    with pytest.raises(PayloadTooLarge):
        uploads.start_upload(services, alice, UploadStartRequest(files=[spec]))
    upload_id = upload_blocks(services, alice, "/s", [b"small"])
    huge = UploadUrlBlock(
        id=block_id(b"small"),
        size=services.settings.max_stored_block_size + 1,
        sha256=base64.b64encode(hashlib.sha256(b"").digest()).decode(),
    )
    with pytest.raises(PayloadTooLarge):
        uploads.upload_urls(services, alice, UploadUrlsRequest(upload_id=upload_id, blocks=[huge]))
    # a 5-byte block's stored form is at most 5 bytes and the format's 38: not 4 MiB of staging
    bound = stored_size_limit(len(b"small"))

    def asking(size: int) -> UploadUrlsRequest:
        return UploadUrlsRequest(
            upload_id=upload_id, blocks=[huge.model_copy(update={"size": size})]
        )

    with pytest.raises(PayloadTooLarge, match=f"at most {bound} bytes stored"):
        uploads.upload_urls(services, alice, asking(bound + 1))
    assert len(uploads.upload_urls(services, alice, asking(bound)).urls) == 1


def test_urls_only_for_needed_blocks(services: Services, alice: Principal) -> None:
    upload_id = upload_blocks(services, alice, "/n", [b"needed"])
    other = UploadUrlBlock(id=block_id(b"other"), size=10, sha256="A" * 43 + "=")
    with pytest.raises(Unprocessable, match="not needed"):
        uploads.upload_urls(services, alice, UploadUrlsRequest(upload_id=upload_id, blocks=[other]))


def test_a_committed_block_gets_no_url_for_other_bytes(
    services: Services, alice: Principal
) -> None:
    """Once committed, a staged copy is what versions and dedup-verify rely on: a PUT URL
    for other bytes at its key would let its uploader change it after they looked. A URL
    for the same bytes (a client resuming) is still given."""
    chunks = [b"committed bytes"]
    upload_id = upload_blocks(services, alice, "/c", chunks)
    commits.commit(services, alice, commit_request("/c", chunks, upload_id))
    bid = block_id(chunks[0])
    with services.db.transaction() as store:
        row = store.upload_blocks(upload_id, [bid])[bid]
    assert row.state == "staged" and row.stored_size is not None and row.sha256 is not None

    assert _ask_url(services, alice, upload_id, bid, row.stored_size, row.sha256)
    with pytest.raises(Conflict, match="committed"):
        _ask_url(services, alice, upload_id, bid, row.stored_size, _GARBAGE_SHA)
    # named twice, the recorded bytes beside other ones: the first passed the check and a
    # URL was signed for each
    twice = [
        UploadUrlBlock(id=bid, size=row.stored_size, sha256=sha)
        for sha in (row.sha256, _GARBAGE_SHA)
    ]
    with pytest.raises(ValidationError, match="more than once"):
        UploadUrlsRequest(upload_id=upload_id, blocks=twice)


_GARBAGE_SHA = base64.b64encode(hashlib.sha256(b"garbage").digest()).decode()


def test_urls_answer_with_the_session_expiry_they_moved_on(
    services: Services, alice: Principal
) -> None:
    """A session in use lives on: the answer says until when, so a client resuming it
    later does not start over at the first answer's hour."""
    upload_id = upload_blocks(services, alice, "/e", [b"some bytes"])
    bid = block_id(b"some bytes")
    with services.db.transaction() as store:
        row = store.upload_blocks(upload_id, [bid])[bid]
    assert row.stored_size is not None and row.sha256 is not None
    answer = _ask_url(services, alice, upload_id, bid, row.stored_size, row.sha256)
    assert isinstance(answer, UploadUrlsResponse)
    with services.db.transaction() as store:
        session = store.get_upload(upload_id, alice.user_id)
    assert session is not None and answer.expires_at == session.expires_at


def _ask_url(
    svc: Services, who: Principal, upload_id: str, bid: str, size: int, sha256: str
) -> object:
    block = UploadUrlBlock(id=bid, size=size, sha256=sha256)
    return uploads.upload_urls(svc, who, UploadUrlsRequest(upload_id=upload_id, blocks=[block]))


def test_a_url_asked_while_a_commit_takes_the_copy_is_refused(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """The session's own commit takes the copy after `upload_urls` read it as still
    expected: the checksum it records must not replace the one the commit relied on."""
    chunks = [b"raced bytes"]
    upload_id = upload_blocks(services, alice, "/r", chunks)
    bid = block_id(chunks[0])
    with services.db.transaction() as store:
        before = store.upload_blocks(upload_id, [bid])[bid]
    assert before.stored_size is not None and before.sha256 is not None

    committed, asked = race_held(
        monkeypatch,
        database_url,
        "mark_staged",
        lambda: commits.commit(services, alice, commit_request("/r", chunks, upload_id)),
        lambda: _ask_url(services, alice, upload_id, bid, before.stored_size or 0, _GARBAGE_SHA),
    )
    assert not isinstance(committed, Exception)
    assert isinstance(asked, Conflict)
    with services.db.transaction() as store:
        after = store.upload_blocks(upload_id, [bid])[bid]
    assert (after.state, after.sha256) == ("staged", before.sha256)


def test_idempotent_retry_returns_first_result(services: Services, alice: Principal) -> None:
    chunks = [b"idem"]
    upload_id = upload_blocks(services, alice, "/i", chunks)
    req = commit_request("/i", chunks, upload_id, idempotency_key="k-1")
    first = commits.commit(services, alice, req)
    again = commits.commit(services, alice, req)
    assert again == first
    with services.db.transaction() as store:
        assert len(store.versions(first.ns_id, first.file_id, 10)) == 1
    with pytest.raises(Unprocessable, match="idempotency_key"):
        commits.commit(services, alice, req.model_copy(update={"path": "/other"}))


def test_a_retried_batch_returns_its_first_results(services: Services, alice: Principal) -> None:
    """A batch writes its idempotent responses and staged copies once, after its last
    entry: a retry still gets each entry's first result and writes nothing twice, a key
    given twice in one batch gets its first entry's result, and the key of an entry that
    failed stays free for the corrected request."""
    upload_id = upload_blocks(services, alice, "/up", [b"one", b"two"])
    one = commit_request("/one", [b"one"], upload_id, idempotency_key="b-1")
    bad = commit_request("/bad", [b"never uploaded"], upload_id, idempotency_key="b-2")
    two = commit_request("/two", [b"two"], upload_id, idempotency_key="b-3")
    batch = CommitBatchRequest(entries=[one, bad, two, one])
    first = commits.commit_batch(services, alice, batch).entries
    assert [(e.tag, e.status) for e in first] == [
        ("success", 200),
        ("failure", 422),
        ("success", 200),
        ("success", 200),
    ]
    assert first[3].entry == first[0].entry
    again = commits.commit_batch(services, alice, batch).entries
    assert [e.entry for e in again] == [e.entry for e in first]
    assert first[0].entry is not None
    with services.db.transaction() as store:
        assert len(store.versions(first[0].entry.ns_id, first[0].entry.file_id, 10)) == 1
        states = store.conn.execute(
            "SELECT state FROM upload_blocks WHERE upload_id = %s", (upload_id,)
        ).fetchall()
        unanswered = store.conn.execute(
            "SELECT count(*) FROM idempotency_keys WHERE response IS NULL"
        ).fetchall()
    assert sorted(s for (s,) in states) == ["staged", "staged"]
    assert unanswered == [(0,)]  # the failed entry's key was claimed ahead and given up
    fixed = commit_request("/bad", [b"one"], upload_id, idempotency_key="b-2")
    assert commits.commit(services, alice, fixed).path_display == "/bad"


def test_a_key_left_by_a_failed_entry_answers_the_entry_that_took_it(
    services: Services, alice: Principal
) -> None:
    """Two entries of one batch give one key: the first (claimed ahead for it) fails, the
    second takes the key and commits. A retry gets the second's result, and the first is
    refused as a reuse of the key (the review of session 11 found the first's request
    stored with the second's response)."""
    put_file(services, alice, "/a", b"v1")
    upload_id = upload_blocks(services, alice, "/up", [b"x", b"y"])
    stale = commit_request("/a", [b"x"], upload_id, parent_rev=7, idempotency_key="k")
    new = commit_request("/b", [b"y"], upload_id, idempotency_key="k")
    batch = CommitBatchRequest(entries=[stale, new])
    first = commits.commit_batch(services, alice, batch).entries
    assert [(e.tag, e.status) for e in first] == [("failure", 409), ("success", 200)]
    again = commits.commit_batch(services, alice, batch).entries
    assert [(e.tag, e.status) for e in again] == [("failure", 422), ("success", 200)]
    assert again[1].entry == first[1].entry
    assert commits.commit(services, alice, new) == first[1].entry


def test_batch_items_succeed_or_fail_alone(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/exists", b"v1")
    good = [b"good file"]
    upload_id = upload_blocks(services, alice, "/good", good)
    batch = CommitBatchRequest(
        entries=[
            commit_request("/good", good, upload_id),
            commit_request("/exists", [b"v2"], None),  # stale (null parent) and not uploaded
            commit_request("/good2", good, upload_id),
        ]
    )
    result = commits.commit_batch(services, alice, batch)
    tags = [(e.tag, e.status) for e in result.entries]
    assert tags == [("success", 200), ("failure", 422), ("success", 200)]
    assert result.entries[1].error is not None
    assert get_file(services, alice, "/good2") == b"good file"


def test_a_batch_entry_over_the_limits_reads_nothing(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry refused by its block list is refused before the batch reads its session:
    its block ids, as many as the body holds, never reach the database."""
    limited = dataclasses.replace(
        services, settings=dataclasses.replace(services.settings, max_blocks_per_request=2)
    )
    small, large = [b"one", b"two"], [b"a", b"b", b"c"]
    upload_id = upload_blocks(services, alice, "/small", small + large)
    asked: list[int] = []
    session_for_commits = Store.session_for_commits

    def counting(store: Store, upload_id: str, user_id: str, block_ids: list[str]) -> Any:
        asked.append(len(block_ids))
        return session_for_commits(store, upload_id, user_id, block_ids)

    monkeypatch.setattr(Store, "session_for_commits", counting)
    batch = CommitBatchRequest(
        entries=[
            commit_request("/large", large, upload_id),
            commit_request("/small", small, upload_id),
        ]
    )
    result = commits.commit_batch(limited, alice, batch)
    assert [(e.tag, e.status) for e in result.entries] == [("failure", 413), ("success", 200)]
    assert asked == [2]
    assert get_file(services, alice, "/small") == b"onetwo"


def test_a_late_failure_leaves_nothing_of_the_first_attempt(
    services: Services, alice: Principal
) -> None:
    """A batch runs without savepoints first; an entry failing after others wrote rolls the
    whole attempt back, and the isolated rerun's state is as if it ran alone."""
    block, other = [b"becomes a file"], [b"wants a folder there"]
    upload_id = upload_blocks(services, alice, "/fresh", block + other)
    batch = CommitBatchRequest(
        entries=[
            commit_request("/fresh/one", other, upload_id),  # its parent is a file by then
            commit_request("/fresh", block, upload_id),  # sorted first: commits, then...
        ]
    )
    result = commits.commit_batch(services, alice, batch)
    assert [(e.tag, e.status) for e in result.entries] == [("failure", 409), ("success", 200)]
    assert get_file(services, alice, "/fresh") == b"becomes a file"
    with services.db.pool.connection() as conn:
        refcounts = {
            bid: n
            for bid, n in conn.execute(
                "SELECT block_id, refcount FROM blocks WHERE block_id = ANY(%s)",
                ([block_id(block[0]), block_id(other[0])],),
            ).fetchall()
        }
        journal = conn.execute(
            "SELECT count(*) FROM journal j JOIN users u ON u.root_ns_id = j.ns_id"
            " WHERE u.user_id = %s",
            (alice.user_id,),
        ).fetchone()
    assert refcounts.get(block_id(block[0])) == 1  # once, not once per attempt
    assert refcounts.get(block_id(other[0]), 0) == 0
    assert journal is not None and journal[0] == 1  # the one file; no folder, no second try


OK, CONFLICT, UNPROCESSABLE = ("success", 200), ("failure", 409), ("failure", 422)


def _outcomes(result: CommitBatchResponse) -> list[tuple[str, int]]:
    return [(e.tag, e.status) for e in result.entries]


def _count_runs(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    runs: list[None] = []
    real = commits._commit_entries

    def counting(*args: Any, **kwargs: Any) -> Any:
        runs.append(None)
        return real(*args, **kwargs)

    monkeypatch.setattr(commits, "_commit_entries", counting)
    return runs


def _count_savepoints(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    taken: list[None] = []
    real = Store.savepoint

    def counting(self: Store) -> Any:
        taken.append(None)
        return real(self)

    monkeypatch.setattr(Store, "savepoint", counting)
    return taken


def test_one_failing_entry_reruns_in_a_savepoint_of_its_own(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_file(services, alice, "/exists", b"v1")
    upload_id = upload_blocks(services, alice, "/up", [b"a", b"b"])
    taken = _count_savepoints(monkeypatch)
    batch = CommitBatchRequest(
        entries=[
            commit_request("/a", [b"a"], upload_id),
            commit_request("/exists", [b"a"], upload_id, parent_rev=7),  # stale
            commit_request("/z", [b"b"], upload_id),
        ]
    )
    result = commits.commit_batch(services, alice, batch)
    assert _outcomes(result) == [OK, CONFLICT, OK]
    assert result.entries[1].error is not None and "rev 1" in result.entries[1].error.message
    assert len(taken) == 1  # the rerun's, around the stale entry alone
    assert get_file(services, alice, "/a") == b"a" and get_file(services, alice, "/z") == b"b"
    assert get_file(services, alice, "/exists") == b"v1"


def test_a_failure_names_what_the_batch_committed(services: Services, alice: Principal) -> None:
    """The second entry's 409 comes from the run that commits: it names the file the first
    entry created there, not one the rolled-back first run had made."""
    upload_id = upload_blocks(services, alice, "/up", [b"one", b"two"])
    batch = CommitBatchRequest(
        entries=[
            commit_request("/same", [b"one"], upload_id),
            commit_request("/same", [b"two"], upload_id),
        ]
    )
    first, second = commits.commit_batch(services, alice, batch).entries
    assert (first.tag, second.tag, second.status) == ("success", "failure", 409)
    assert first.entry is not None and second.error is not None
    assert (second.error.model_extra or {}).get("file_id") == first.entry.file_id
    assert get_file(services, alice, "/same") == b"one"


def test_an_entry_is_judged_again_when_what_failed_it_is_undone(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first entry commits in the first run, so the second fails (the path is taken);
    in the second run the first entry fails (its session expired meanwhile, say), and the
    third run, a savepoint per entry, tries the second entry again: it commits."""
    upload_id = upload_blocks(services, alice, "/up", [b"one", b"two"])
    entries = [
        commit_request("/same", [b"one"], upload_id),
        commit_request("/same", [b"two"], upload_id),
    ]
    real = commits._commit_in
    runs: list[None] = []

    def first_entry_fails_after_its_first_run(*args: Any, **kwargs: Any) -> Any:
        if args[3] is entries[0]:
            runs.append(None)
            if len(runs) > 1:
                raise NotFound("upload session expired")
        return real(*args, **kwargs)

    monkeypatch.setattr(commits, "_commit_in", first_entry_fails_after_its_first_run)
    first, second = commits.commit_batch(
        services, alice, CommitBatchRequest(entries=entries)
    ).entries
    assert [(first.tag, first.status), (second.tag, second.status)] == [
        ("failure", 404),
        ("success", 200),
    ]
    assert get_file(services, alice, "/same") == b"two"


def test_an_entry_that_failed_once_is_judged_again_in_its_savepoint(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload_id = upload_blocks(services, alice, "/up", [b"one", b"two"])
    entries = [
        commit_request("/flaky", [b"one"], upload_id),
        commit_request("/steady", [b"two"], upload_id),
    ]
    taken = _count_savepoints(monkeypatch)
    real = commits._commit_in
    calls: list[None] = []

    def fails_the_first_time(*args: Any, **kwargs: Any) -> Any:
        if args[3] is entries[0]:
            calls.append(None)
            if len(calls) == 1:
                raise Conflict("/flaky changed during the commit; retry")
        return real(*args, **kwargs)

    monkeypatch.setattr(commits, "_commit_in", fails_the_first_time)
    result = commits.commit_batch(services, alice, CommitBatchRequest(entries=entries))
    assert [(e.tag, e.status) for e in result.entries] == [("success", 200)] * 2
    assert (len(calls), len(taken)) == (2, 1)  # two runs; the second's one savepoint
    assert get_file(services, alice, "/flaky") == b"one"


def test_entries_refused_before_any_statement_cost_no_rerun(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path at the root, or a content hash that does not match the blocks: refused before
    the entry touches the database, so nothing is rolled back and nothing run again."""
    upload_id = upload_blocks(services, alice, "/up", [b"a", b"b"])
    taken = _count_savepoints(monkeypatch)
    runs = _count_runs(monkeypatch)
    wrong_hash = commit_request("/c", [b"a"], upload_id).model_copy(
        update={"content_hash": content_hash([block_id(b"b")])}
    )
    entries = [
        commit_request("/a", [b"a"], upload_id),
        commit_request("/", [b"a"], upload_id),
        wrong_hash,
        commit_request("/b", [b"b"], upload_id),
    ]
    result = commits.commit_batch(services, alice, CommitBatchRequest(entries=entries))
    assert _outcomes(result) == [OK, CONFLICT, UNPROCESSABLE, OK]
    assert (len(runs), taken) == (1, [])


def test_many_failing_entries_end_in_a_run_with_savepoints(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("/s1", "/s2", "/s3"):
        put_file(services, alice, name, b"v1")
    upload_id = upload_blocks(services, alice, "/up", [b"a"])
    taken = _count_savepoints(monkeypatch)
    entries = [commit_request(f"/s{n}", [b"a"], upload_id, parent_rev=7) for n in (1, 2, 3)]
    entries.insert(1, commit_request("/new", [b"a"], upload_id))
    result = commits.commit_batch(services, alice, CommitBatchRequest(entries=entries))
    assert _outcomes(result) == [CONFLICT, OK, CONFLICT, CONFLICT]
    # second run: one around /s1 (seen failing); it then fails on /s2; third run: all four
    assert len(taken) == 1 + 4
    assert get_file(services, alice, "/new") == b"a"


def test_case_and_unicode_twins_are_one_file(services: Services, alice: Principal) -> None:
    first = put_file(services, alice, "/Café/Notes.TXT", b"one")
    nfd = "/Cafe\u0301/notes.txt".upper()
    second = put_file(services, alice, nfd, b"two", parent_rev=1)
    assert second.file_id == first.file_id and second.rev == 2
    assert second.path_display == "/Café/Notes.TXT"  # the first spelling stays
    with pytest.raises(Conflict):
        put_file(services, alice, "/cafe\u0301/NOTES.txt", b"three")


def test_file_and_folder_clash(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/a/b", b"file")
    with pytest.raises(Conflict, match="is a file"):
        put_file(services, alice, "/a/b/c", b"under a file")
    with pytest.raises(Conflict, match="is a folder"):
        put_file(services, alice, "/a", b"over a folder")


@pytest.mark.parametrize(
    "bad", ["/../etc/passwd", "/a/./b", "rel", "/a\x00b", "/a//b", "/" + "n" * 256]
)
def test_traversal_in_commit_and_upload_paths(
    services: Services, alice: Principal, bad: str
) -> None:
    with pytest.raises(Unprocessable):
        commits.commit(services, alice, commit_request(bad, [], None))
    with pytest.raises(Unprocessable):
        uploads.start_upload(services, alice, UploadStartRequest(files=[_spec(bad, [])]))


def test_eight_concurrent_writers_one_wins_each_rev(services: Services, alice: Principal) -> None:
    base = put_file(services, alice, "/hot", b"base")
    chunks = {i: [f"writer {i}".encode()] for i in range(8)}
    uploads_ = {i: upload_blocks(services, alice, "/hot", chunks[i]) for i in range(8)}
    rounds = 3
    barrier = threading.Barrier(8)
    outcomes: list[tuple[int, int, str]] = []  # (round, rev or -1, writer)
    lock = threading.Lock()

    def writer(i: int) -> None:
        for r in range(rounds):
            barrier.wait()
            parent = 1 + r
            try:
                e = commits.commit(
                    services, alice, commit_request("/hot", chunks[i], uploads_[i], parent)
                )
                got = (r, e.rev, str(i))
            except Conflict as exc:
                assert exc.to_body()["error"]["rev"] >= parent + 1
                got = (r, -1, str(i))
            with lock:
                outcomes.append(got)
            barrier.wait()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in range(rounds):
        wins = [o for o in outcomes if o[0] == r and o[1] != -1]
        assert len(wins) == 1 and wins[0][1] == r + 2
        assert len([o for o in outcomes if o[0] == r]) == 8
    with services.db.transaction() as store:
        e = store.file_by_path(base.ns_id, "/hot")
        assert e is not None and e.latest_rev == rounds + 1
        assert [v.rev for v in store.versions(base.ns_id, e.file_id, 100)] == [4, 3, 2, 1]
    winner = next(o for o in outcomes if o[0] == rounds - 1 and o[1] != -1)[2]
    assert get_file(services, alice, "/hot") == f"writer {winner}".encode()


def test_viewer_cannot_upload_or_commit(
    services: Services, alice: Principal, bob: Principal
) -> None:
    from tessera.domain import files
    from tessera.domain.errors import Forbidden
    from tessera.domain.models import CreateFolderRequest

    files.create_folder(services, alice, CreateFolderRequest(path="/Team").path)
    put_file(services, bob, "/hello", b"bob exists")
    assert share_with(services, alice, "/Team", bob, "viewer").path_display == "/Team"
    with pytest.raises(Forbidden):
        put_file(services, bob, "/Team/x", b"viewer write")


def test_quota_is_enforced_at_upload_start(services: Services, alice: Principal) -> None:
    from tessera.domain.errors import QuotaExceeded

    small = dataclasses.replace(
        services, settings=dataclasses.replace(services.settings, default_quota_bytes=10)
    )
    put_file(small, alice, "/fits", b"12345678")
    with pytest.raises(QuotaExceeded) as info:
        put_file(small, alice, "/over", b"123")
    assert info.value.status == 413 and info.value.code == "quota_exceeded"


def test_email_of_another_account_is_409(services: Services) -> None:
    from tessera.domain.sharing import account

    account(services, Principal("user-1", "same@example.com"))
    with pytest.raises(Conflict, match="another account"):
        account(services, Principal("user-2", "SAME@example.com"))


def test_concurrent_retries_of_one_idempotency_key_write_once(
    services: Services, alice: Principal
) -> None:
    chunks = [b"same request twice at once"]
    upload_id = upload_blocks(services, alice, "/twice", chunks)
    req = commit_request("/twice", chunks, upload_id, idempotency_key="k-race")
    results, _ = run_at_once(lambda: commits.commit(services, alice, req), 4, timeout=30)
    assert len(results) == 4 and all(r == results[0] for r in results)
    with services.db.transaction() as store:
        entry = store.file_by_path(results[0].ns_id, "/twice")
        assert entry is not None and entry.latest_rev == 1


def test_expired_upload_session_is_404(services: Services, alice: Principal) -> None:
    from datetime import timedelta

    chunks = [b"late"]
    upload_id = upload_blocks(services, alice, "/late", chunks)

    class Later:
        def now(self):  # type: ignore[no-untyped-def]
            return services.clock.now() + timedelta(seconds=services.settings.upload_ttl_s + 1)

    later = dataclasses.replace(services, clock=Later())
    with pytest.raises(NotFound, match="expired"):
        commits.commit(later, alice, commit_request("/late", chunks, upload_id))


def test_crossing_batches_do_not_deadlock(services: Services, alice: Principal) -> None:
    names = [f"/x{i}" for i in range(6)]
    for n in names:
        put_file(services, alice, n, b"0")
    errors: list[BaseException] = []

    def batch(order: list[str]) -> None:
        try:
            for _ in range(3):
                revs = {}
                from tessera.domain.files import metadata
                from tessera.domain.models import MetadataRequest

                for n in order:
                    revs[n] = metadata(services, alice, MetadataRequest(path=n)).rev  # type: ignore[union-attr]
                commits.commit_batch(
                    services,
                    alice,
                    CommitBatchRequest(
                        entries=[commit_request(n, [b"0"], None, revs[n]) for n in order]
                    ),
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=batch, args=(o,)) for o in (names, names[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_a_commit_event_names_its_upload_session_not_each_block(
    services: Services, alice: Principal
) -> None:
    # The event travels to DynamoDB (400 KB an item) and EventBridge (256 KB a request):
    # a list of the version's staged copies grew with the file and stalled the relay.
    chunks = split_blocks(bytes(range(256)) * 64, block_size=16)  # 1,024 blocks
    upload_id = upload_blocks(services, alice, "/many.bin", chunks)
    commits.commit(services, alice, commit_request("/many.bin", chunks, upload_id))
    with services.db.transaction() as store:
        row = store.conn.execute(
            "SELECT payload, octet_length(payload::text) FROM outbox ORDER BY created_at DESC"
            " LIMIT 1"
        ).fetchone()
    assert row is not None
    payload, size = row
    assert payload["upload_ids"] == [upload_id]
    assert size < 1024


@pytest.mark.parametrize("new", [False, True], ids=["stored", "new"])
def test_two_batches_naming_two_blocks_in_opposite_orders_both_commit(
    services: Services,
    alice: Principal,
    bob: Principal,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    new: bool,
) -> None:
    """Alice's batch names block y in /a and x in /b, Bob's the other way round. Each entry
    bumped its own blocks' rows (or inserted them, for blocks no one had stored: an insert
    waits for another transaction's insert of the same id), so a batch took them in its
    entries' order, and each held the row the other wanted next: a deadlock, and one
    answered 503. A batch now creates its sessions' new rows, then locks all its blocks,
    in id order."""
    x, y = sorted([secrets.token_bytes(64), secrets.token_bytes(64)], key=block_id)
    sessions: dict[str, str | None] = {}
    for who in (alice, bob):
        if new:  # each uploads both in a session
            sessions[who.user_id] = upload_blocks(services, who, "/new", [x, y])
        else:  # each can read both already
            put_file(services, who, "/seed-x", x)
            put_file(services, who, "/seed-y", y)
            sessions[who.user_id] = None

    def batch(who: Principal, first: bytes, second: bytes) -> CommitBatchResponse:
        upload_id = sessions[who.user_id]
        entries = [
            commit_request("/a", [first], upload_id),
            commit_request("/b", [second], upload_id),
        ]
        return commits.commit_batch(services, who, CommitBatchRequest(entries=entries))

    alices, bobs = race_held(
        monkeypatch,
        database_url,
        "write_version",
        lambda: batch(alice, y, x),
        lambda: batch(bob, x, y),
    )
    for answer in (alices, bobs):
        assert isinstance(answer, CommitBatchResponse), answer
        assert [e.tag for e in answer.entries] == ["success", "success"]
    with services.db.transaction() as store:
        rows = store.conn.execute("SELECT refcount FROM blocks ORDER BY block_id").fetchall()
    holders = 2 if new else 4  # the two batches (and the two seeds)
    assert rows == [(holders,), (holders,)]
