"""The quota holds at every write that adds bytes (commits with or without an upload,
batches, restores, undeletes), and each namespace's `bytes_used` counter stays equal to the
sum it stands for through every kind of write."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tessera.blocks import block_id, content_hash
from tessera.domain import commits, files, sharing, uploads
from tessera.domain.errors import NotFound, QuotaExceeded
from tessera.domain.models import (
    BlockSpec,
    CommitBatchItem,
    CommitBatchRequest,
    CommitBatchResponse,
    CommitRequest,
    DeleteRequest,
    FileEntry,
    RestoreRequest,
    TrashListRequest,
    UploadFileSpec,
    UploadStartRequest,
)
from tessera.domain.services import Services
from tessera.ports import Principal

from .conftest import (
    commit_request,
    get_file,
    put_file,
    send_needed,
    share_with,
    upload_blocks,
    usage_drift,
)
from .test_domain_files import race_held


def _quota(services: Services, who: Principal, quota: int) -> None:
    with services.db.transaction() as store:
        store.conn.execute(
            "UPDATE users SET quota_bytes = %s WHERE user_id = %s", (quota, who.user_id)
        )


def _used(services: Services, who: Principal) -> int:
    return sharing.account(services, who).used_bytes


def assert_counters_match(services: Services) -> None:
    assert usage_drift(services.db) == []


def test_copies_of_stored_blocks_count_against_the_quota(
    services: Services, alice: Principal
) -> None:
    """A commit naming blocks the caller can already read needs no upload session, so the
    check at upload start never saw it: copies of one file went past any quota."""
    data = b"y" * 1000
    put_file(services, alice, "/a", data)
    _quota(services, alice, 2500)
    commits.commit(services, alice, commit_request("/copy1", [data], None))
    with pytest.raises(QuotaExceeded, match="your quota") as refused:
        commits.commit(services, alice, commit_request("/copy2", [data], None))
    assert refused.value.status == 413
    assert _used(services, alice) == 2000
    with pytest.raises(NotFound):
        get_file(services, alice, "/copy2")
    assert_counters_match(services)


def test_a_batch_refuses_the_entries_over_quota_and_commits_the_rest(
    services: Services, alice: Principal
) -> None:
    small, big = b"s" * 100, b"b" * 900
    put_file(services, alice, "/small", small)
    put_file(services, alice, "/big", big)
    _quota(services, alice, 1500)  # 1,000 used
    entries = [
        commit_request("/big-copy", [big], None),  # 1,900: over
        commit_request("/small-copy", [small], None),  # 1,100
        commit_request("/small-copy-2", [small], None),  # 1,200
    ]
    answer = commits.commit_batch(services, alice, CommitBatchRequest(entries=entries))
    assert [e.status for e in answer.entries] == [413, 200, 200]
    assert _used(services, alice) == 1200
    assert_counters_match(services)


def test_undelete_and_restore_are_held_to_the_quota_and_shrinking_never_is(
    services: Services, alice: Principal
) -> None:
    put_file(services, alice, "/doc", b"1" * 300)
    put_file(services, alice, "/doc", b"2" * 100, parent_rev=1)
    put_file(services, alice, "/old", b"o" * 400)
    files.delete(services, alice, DeleteRequest(path="/old"))
    assert _used(services, alice) == 100  # the trash counts for nothing
    put_file(services, alice, "/fill", b"f" * 300)
    _quota(services, alice, 450)  # 400 used

    with pytest.raises(QuotaExceeded, match="restoring '/old'"):
        files.restore(services, alice, RestoreRequest(path="/old"))
    trash = files.trash_list(services, alice, TrashListRequest())
    assert [e.path_display for e in trash.entries] == ["/old"]
    with pytest.raises(QuotaExceeded):  # rev 1 is 300 bytes: 200 more than rev 2
        files.restore(services, alice, RestoreRequest(path="/doc", rev=1))
    assert get_file(services, alice, "/doc") == b"2" * 100

    _quota(services, alice, 100)  # lowered below what is used: writes that free space pass
    # /fill becomes a copy of /doc's 100 bytes (blocks already stored: no upload)
    commits.commit(services, alice, commit_request("/fill", [b"2" * 100], None, parent_rev=1))
    files.delete(services, alice, DeleteRequest(path="/doc"))
    assert _used(services, alice) == 100
    with pytest.raises(QuotaExceeded):  # 200 of 100
        files.restore(services, alice, RestoreRequest(path="/doc"))
    _quota(services, alice, 1000)
    files.restore(services, alice, RestoreRequest(path="/doc"))
    files.restore(services, alice, RestoreRequest(path="/old"))
    assert _used(services, alice) == 600
    assert_counters_match(services)


def test_the_counters_follow_folders_shares_and_editors(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """Folder deletes and undeletes, a folder turned into a shared namespace (its bytes
    move with it), an editor writing there (the owner's usage grows, not theirs)."""
    for name, size in (("a", 10), ("b", 20), ("sub/c", 40)):
        put_file(services, alice, f"/Team/{name}", b"t" * size)
    put_file(services, alice, "/mine", b"m" * 5)
    files.delete(services, alice, DeleteRequest(path="/Team"))
    assert _used(services, alice) == 5
    files.restore(services, alice, RestoreRequest(path="/Team"))
    assert _used(services, alice) == 75
    sharing.account(services, bob)  # bob exists once he made a request
    assert share_with(services, alice, "/Team", bob).path_display == "/Team"
    assert_counters_match(services)
    put_file(services, bob, "/Team/from-bob", b"b" * 100)
    assert (_used(services, alice), _used(services, bob)) == (175, 0)
    files.delete(services, bob, DeleteRequest(path="/Team/sub"))
    assert _used(services, alice) == 135
    assert_counters_match(services)


def test_an_upload_replacing_a_file_needs_only_what_it_adds(
    services: Services, alice: Principal
) -> None:
    """Upload start counts a file that replaces a live one by the bytes it adds, as its
    commit does: an edit that does not grow a file passes near the quota, one that grows it
    past the quota is refused before any block is sent."""
    put_file(services, alice, "/report", b"r" * 900)
    _quota(services, alice, 1000)  # 900 used
    edit = [b"e" * 950]
    upload_id = upload_blocks(services, alice, "/report", edit)
    commits.commit(services, alice, commit_request("/report", edit, upload_id, parent_rev=1))
    assert _used(services, alice) == 950
    with pytest.raises(QuotaExceeded, match="need 100 bytes"):  # 1,050 of 1,000
        upload_blocks(services, alice, "/report", [b"g" * 1050])
    with pytest.raises(QuotaExceeded, match="need 60 bytes"):  # a new file counts whole
        upload_blocks(services, alice, "/new", [b"n" * 60])
    assert_counters_match(services)


def _two_namespaces_of_alice(
    services: Services, alice: Principal, bob: Principal
) -> tuple[bytes, bytes]:
    """Alice's root holds 100 bytes, her /Team (bob edits it) 100 more. Returns (root's
    data, /Team's data)."""
    mine, team = b"m" * 100, b"t" * 100
    put_file(services, alice, "/mine", mine)
    put_file(services, alice, "/Team/a", team)
    sharing.account(services, bob)  # bob exists once he made a request
    assert share_with(services, alice, "/Team", bob).path_display == "/Team"
    return mine, team


def _copy(path: str, data: bytes) -> CommitRequest:
    return commit_request(path, [data], None)  # blocks already stored: no upload session


def test_an_editors_writes_tell_nothing_of_the_owners_private_files(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """An editor checked against the owner's quota learnt from each 413 or 200 whether the
    owner's usage, private files included, was above a size they chose: declared sizes at
    upload start, or copies of a block they can read, sized her account in 37 calls. A
    write is now checked against its writer's quota: their own files, and the shared folder
    written to, whole (what they can read), never the owner's other files."""
    mine, team = _two_namespaces_of_alice(services, alice, bob)
    put_file(services, alice, "/private", b"p" * 700)
    _quota(services, alice, 1000)  # 900 used: no room for bob's 300 bytes if hers counted
    big = [b"z" * 200]
    upload_id = upload_blocks(services, bob, "/Team/big", big)
    commits.commit(services, bob, commit_request("/Team/big", big, upload_id))
    commits.commit(services, bob, _copy("/Team/copy", team))
    assert (_used(services, alice), _used(services, bob)) == (1200, 0)
    _quota(services, bob, 450)  # /Team's 400 bytes and his own (none) fill it to 450
    with pytest.raises(QuotaExceeded, match="need 60 bytes: over your quota of 450 bytes; a"):
        upload_blocks(services, bob, "/Team/more", [b"m" * 60])
    with pytest.raises(QuotaExceeded, match="your quota of 450"):
        commits.commit(services, bob, _copy("/Team/copy2", team))
    upload_blocks(services, bob, "/Team/more", [b"m" * 50])
    with pytest.raises(QuotaExceeded, match="your quota of 1000"):  # alice is over hers
        commits.commit(services, alice, _copy("/copy", mine))
    assert_counters_match(services)


def test_upload_start_takes_what_a_batch_commits_in_any_order(
    services: Services, alice: Principal, bob: Principal, carol: Principal
) -> None:
    """A batch commits in namespace order, and a write into the caller's own files never
    counts a folder shared with them. Upload start counted the own files' growth into each
    shared folder's check, as if they committed first: with the folder first (shared before
    bob signed up, so its id is lower), it refused files the batch then took."""
    put_file(services, alice, "/Team/a", b"a" * 100)
    sharing.account(services, carol)
    team = share_with(services, alice, "/Team", carol)
    sharing.account(services, bob)  # his root comes after /Team's namespace
    assert share_with(services, alice, "/Team", bob).path_display == "/Team"
    assert team.ns_id < sharing.account(services, bob).root_ns_id
    put_file(services, bob, "/own", b"o" * 300)
    _quota(services, bob, 899)  # 300 + 300 own; 300 + /Team's 100 + 200; not 300 more
    chunks = {"/mine": b"m" * 300, "/Team/x": b"x" * 200}
    specs = [
        UploadFileSpec(
            path=path,
            size=len(data),
            content_hash=content_hash([block_id(data)]),
            blocks=[BlockSpec(id=block_id(data), size=len(data))],
        )
        for path, data in chunks.items()
    ]
    started = uploads.start_upload(services, bob, UploadStartRequest(files=specs))
    send_needed(services, bob, started.upload_id, started.needed, list(chunks.values()))
    entries = [commit_request(p, [d], started.upload_id) for p, d in chunks.items()]
    answer = commits.commit_batch(services, bob, CommitBatchRequest(entries=entries))
    assert [e.status for e in answer.entries] == [200, 200]
    assert_counters_match(services)


@pytest.mark.parametrize(
    "teams_write",
    [
        lambda svc, who, team: commits.commit(svc, who, _copy("/Team/copy", team)),
        lambda svc, who, team: commits.commit_batch(
            svc, who, CommitBatchRequest(entries=[_copy("/Team/copy", team)])
        ).entries[0],
        lambda svc, who, team: files.restore(svc, who, RestoreRequest(path="/Team/gone")),
        lambda svc, who, team: files.restore(svc, who, RestoreRequest(path="/Team/doc", rev=1)),
    ],
    ids=["commit", "batch", "undelete", "restore"],
)
@pytest.mark.parametrize("writer", ["owner", "editor"])
def test_one_users_writes_racing_in_two_namespaces_stay_within_the_quota(
    services: Services,
    alice: Principal,
    bob: Principal,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    teams_write: Callable[[Services, Principal, bytes], object],
    writer: str,
) -> None:
    """Each write checks its writer's quota across their namespaces (and the shared folder
    written to), but a write in another namespace did not wait for it: a commit in the
    writer's root and their write in the shared folder both saw room for one more file and
    both landed, past the quota. A user's writes that add bytes now queue on that user, so
    the second one sees the first: the owner's, and an editor's (his root and her folder)."""
    who = alice if writer == "owner" else bob
    mine, team = _two_namespaces_of_alice(services, alice, bob)
    put_file(services, who, "/Team/gone", team)
    files.delete(services, who, DeleteRequest(path="/Team/gone"))
    put_file(services, who, "/Team/doc", team)
    put_file(services, who, "/Team/doc", b".", parent_rev=1)  # rev 1 would add 99 bytes
    in_team = _used(services, alice) - len(mine)
    own = mine if who is alice else b"o" * 100  # (a staged copy counts in its namespace)
    if who is bob:
        put_file(services, bob, "/own", own)

    def counted() -> int:  # what `who`'s writes are held to: their own, and /Team's
        return _used(services, who) + (in_team if who is bob else 0)

    quota = counted() + 100  # room for one of the two writes, not both
    _quota(services, who, quota)
    first, second = race_held(
        monkeypatch,
        database_url,
        "write_version",
        lambda: commits.commit(services, who, _copy("/copy", own)),
        lambda: teams_write(services, who, team),
    )
    assert isinstance(first, FileEntry)
    if isinstance(second, CommitBatchItem):
        assert second.status == 413, second
    else:
        assert isinstance(second, QuotaExceeded), second
    assert counted() == quota
    assert_counters_match(services)


def test_a_batch_over_two_namespaces_queues_on_its_writer_first(
    services: Services,
    alice: Principal,
    bob: Principal,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lock order: the writer's usage before any namespace. A batch that took its two
    namespaces first and then waited for a usage lock, held by a commit about to take one
    of those namespaces, deadlocked with it (PostgreSQL then aborts one)."""
    mine, team = _two_namespaces_of_alice(services, alice, bob)
    single, batch = race_held(
        monkeypatch,
        database_url,
        "lock_usage",
        lambda: commits.commit(services, alice, _copy("/Team/single", team)),
        lambda: commits.commit_batch(
            services,
            alice,
            CommitBatchRequest(entries=[_copy("/copy", mine), _copy("/Team/copy", team)]),
        ),
    )
    assert isinstance(single, FileEntry), single
    assert isinstance(batch, CommitBatchResponse), batch  # not a deadlock's 503
    assert [e.status for e in batch.entries] == [200, 200]
    assert _used(services, alice) == 500
    assert_counters_match(services)
