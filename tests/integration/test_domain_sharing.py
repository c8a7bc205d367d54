"""Shared folders: conversion keeping file_ids and history, mounts, roles, unshare, account."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from tessera.domain import files, listing, paths, sharing
from tessera.domain.errors import Conflict, Forbidden, NotFound, Unavailable, Unprocessable
from tessera.domain.models import (
    DeleteRequest,
    FileEntry,
    FolderEntry,
    InvitationRequest,
    LongpollRequest,
    MetadataRequest,
    MoveRequest,
    RestoreRequest,
    RevisionsRequest,
    ShareInfo,
    ShareRequest,
    TrashListRequest,
    UnshareRequest,
)
from tessera.domain.services import Services
from tessera.metadata.db import Database
from tessera.metadata.store import Store
from tessera.ports import Principal

from .conftest import Race, get_file, put_file, share_with, usage_drift


def _invite(svc: Services, owner: Principal, path: str, who: Principal, access: str) -> ShareInfo:
    """`sharing.share` alone: `who` is invited (a member once they accept), or, already a
    member, has `access` at once. The owner's view of the share."""
    return sharing.share(svc, owner, ShareRequest(path=path, email=who.email, access=access))  # type: ignore[arg-type]


def _share(svc: Services, owner: Principal, path: str, who: Principal, access: str) -> ShareInfo:
    """`owner` shares `path` with `who`, who accepts: a member now. Their view of it."""
    return share_with(svc, owner, path, who, access)


def _change_access(
    svc: Services, owner: Principal, path: str, who: Principal, access: str
) -> ShareInfo:
    """`sharing.share` with someone already a member: their access changes at once."""
    return _invite(svc, owner, path, who, access)


def _accept(svc: Services, who: Principal, invited: ShareInfo) -> ShareInfo:
    """`who` accepts the invitation into the share `invited` (as `_invite` answered)."""
    return sharing.accept(svc, who, InvitationRequest(ns_id=invited.ns_id))


def _meet(svc: Services, *people: Principal) -> None:
    """Users exist once they have made a request."""
    for p in people:
        sharing.account(svc, p)


def test_share_keeps_file_ids_and_history(
    services: Services, alice: Principal, bob: Principal
) -> None:
    v1 = put_file(services, alice, "/Team/Plans/q1.txt", b"v1")
    put_file(services, alice, "/Team/Plans/q1.txt", b"v2", parent_rev=1)
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    for who, path in [(alice, "/Team/Plans/q1.txt"), (bob, "/Team/Plans/q1.txt")]:
        meta = files.metadata(services, who, MetadataRequest(path=path))
        assert isinstance(meta, FileEntry) and meta.file_id == v1.file_id and meta.rev == 2
        assert meta.ns_id != v1.ns_id  # it moved into the shared namespace
        revs = files.revisions(services, who, RevisionsRequest(path=path))
        assert [e.rev for e in revs.entries] == [2, 1]
        assert get_file(services, who, path, rev=1) == b"v1"
    info = sharing.shares(services, bob).shares
    assert [(s.path_display, s.access, s.owner_email) for s in info] == [
        ("/Team", "editor", alice.email)
    ]


def test_member_mount_name_clash_gets_a_suffix(
    services: Services, alice: Principal, bob: Principal
) -> None:
    put_file(services, alice, "/Team/a", b"a")
    put_file(services, bob, "/team/mine", b"bob's own")
    _share(services, alice, "/Team", bob, "viewer")
    assert get_file(services, bob, "/Team (2)/a") == b"a"
    assert get_file(services, bob, "/team/mine") == b"bob's own"


def test_a_long_shared_name_that_clashes_still_fits_the_name_limit(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """A 255-byte folder name plus " (2)" made a mount path no request could name: the
    member could neither use the share nor leave it."""
    long = "/" + "é" * 127  # 254 bytes
    put_file(services, alice, long + "/a", b"a")
    put_file(services, bob, long + "/mine", b"bob's own")
    _share(services, alice, long, bob, "editor")
    (mount,) = sharing.shares(services, bob).shares
    assert mount.path_display == "/" + "é" * 125 + " (2)"  # 250 + 4 bytes
    assert get_file(services, bob, mount.path_display + "/a") == b"a"
    files.delete(services, bob, DeleteRequest(path=mount.path_display))  # leaves the share
    assert sharing.shares(services, bob).shares == []


def test_a_path_the_owner_may_store_is_one_every_member_may_name(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """The length limit is the stored (namespace-relative) path's. Applied to view paths,
    a file the owner could make was one a member with a longer mount point could not edit,
    and their client refused its path from the server."""
    deepest = "/" + "/".join(["d" * 200] * 10) + "/" + "e" * 37  # 2048 bytes inside /Team
    put_file(services, alice, "/Team/readme", b"r")
    put_file(services, bob, "/Team/mine", b"bob's own")
    _share(services, alice, "/Team", bob, "editor")
    put_file(services, alice, "/Team" + deepest, b"v1")  # stored as `deepest`
    seen = "/Team (2)" + deepest
    assert paths.canonical(seen) == seen  # what a member's client checks
    meta = files.metadata(services, bob, MetadataRequest(path=seen))
    assert isinstance(meta, FileEntry) and meta.path_display == seen
    assert put_file(services, bob, seen, b"v2", parent_rev=1).rev == 2
    assert get_file(services, alice, "/Team" + deepest) == b"v2"
    with pytest.raises(Unprocessable, match="longer than 2048 bytes inside '/Team \\(2\\)'"):
        put_file(services, bob, seen + "e", b"one byte too many to store")


def test_a_shared_folder_whose_paths_would_not_fit_back_is_not_deleted(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """Deleted, a shared folder's entries move back below its mount point in the owner's
    root namespace, where the longest path a member could store inside does not fit: it
    became a path no request could name, or, if it did not compress, one the database
    refused to index (a 500). Now the delete is refused, naming the path."""
    deepest = "/" + "/".join(["d" * 200] * 10) + "/" + "e" * 37  # 2048 bytes inside /Team
    put_file(services, alice, "/Team/readme", b"r")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    put_file(services, bob, "/Team" + deepest, b"bob's deep file")
    sharing.unshare(services, alice, UnshareRequest(path="/Team", email=bob.email))
    with pytest.raises(Unprocessable, match="inside would be longer than 2048 bytes"):
        files.delete(services, alice, DeleteRequest(path="/Team"))
    assert get_file(services, alice, "/Team" + deepest) == b"bob's deep file"
    files.move(services, alice, MoveRequest(from_path="/Team" + deepest, to_path="/Team/shallow"))
    files.delete(services, alice, DeleteRequest(path="/Team"))
    assert sharing.shares(services, alice).shares == []


def test_a_mount_spelled_with_another_length_resolves_by_components(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """Case folding may change a name's length ("ß" → "ss"): a path reaching a mount in
    another spelling still lands at the same place inside it."""
    put_file(services, alice, "/Straße/a", b"a")
    _meet(services, bob)
    _share(services, alice, "/Straße", bob, "editor")
    written = put_file(services, bob, "/STRASSE/x", b"x")
    assert written.path_display == "/Straße/x"
    assert get_file(services, alice, "/Straße/x") == b"x"
    assert get_file(services, bob, "/STRASSE/A") == b"a"


def test_what_the_owner_deleted_before_sharing_is_not_shared(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """Alice's trash under a folder she shares stays hers: bob neither lists nor restores
    it. She restores it once the folder is hers alone again (while it is shared, the path
    leads into the share: 409, and it stays in her trash)."""
    secret = put_file(services, alice, "/Team/salaries.xlsx", b"last year's")
    files.delete(services, alice, DeleteRequest(path="/Team/salaries.xlsx"))
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")

    assert files.trash_list(services, bob, TrashListRequest(path="/Team")).entries == []
    _kept_from_members(services, alice, bob, secret, b"last year's")


def _kept_from_members(
    services: Services, alice: Principal, bob: Principal, secret: FileEntry, content: bytes
) -> None:
    """`secret`, deleted in Alice's shared /Team, is hers alone: bob neither reads its
    history nor restores it, it lists in her own trash, and while the folder is shared it
    cannot come back (its path leads into the share: 409). It does once the folder is hers
    alone again."""
    with pytest.raises(NotFound):
        files.restore(services, bob, RestoreRequest(file_id=secret.file_id))
    with pytest.raises(NotFound):
        files.revisions(services, bob, RevisionsRequest(file_id=secret.file_id))
    with pytest.raises(NotFound):
        get_file(services, bob, file_id=secret.file_id, include_deleted=True)
    trash = files.trash_list(services, alice, TrashListRequest()).entries
    assert [t.path_display for t in trash] == [secret.path_display]
    with pytest.raises(Conflict, match="no longer shared") as refused:
        files.restore(services, alice, RestoreRequest(file_id=secret.file_id))
    assert refused.value.details == {"reason": "under_a_shared_folder"}
    sharing.unshare(services, alice, UnshareRequest(path="/Team"))
    files.delete(services, alice, DeleteRequest(path="/Team"))
    files.restore(services, alice, RestoreRequest(file_id=secret.file_id))
    assert get_file(services, alice, secret.path_display) == content


def test_what_the_owner_deleted_while_alone_in_a_share_is_not_shared_again(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """Unsharing everyone keeps the shared namespace, so what Alice deleted while alone in
    it sat in its trash: whoever she shared it with next listed it, read its history and
    restored it. It now goes to her own trash when someone joins, as on a first share;
    what was deleted while others were in it stays for them."""
    put_file(services, alice, "/Team/a", b"a")
    put_file(services, alice, "/Team/report.docx", b"the report")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    files.delete(services, bob, DeleteRequest(path="/Team/report.docx"))  # by mistake
    sharing.unshare(services, alice, UnshareRequest(path="/Team"))
    secret = put_file(services, alice, "/Team/salaries.xlsx", b"this year's")
    files.delete(services, alice, DeleteRequest(path="/Team/salaries.xlsx"))
    _share(services, alice, "/Team", bob, "editor")

    bobs = files.trash_list(services, bob, TrashListRequest(path="/Team")).entries
    assert [t.path_display for t in bobs] == ["/Team/report.docx"]
    files.restore(services, bob, RestoreRequest(path="/Team/report.docx"))
    assert get_file(services, bob, "/Team/report.docx") == b"the report"
    assert get_file(services, bob, "/Team/a") == b"a"  # the live files are still shared
    assert usage_drift(services.db) == []
    _kept_from_members(services, alice, bob, secret, b"this year's")


def test_the_trash_lists_the_newest_of_every_folder_within_one_answer(
    services: Services, alice: Principal, bob: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trash read `limit` entries from each namespace below the path (a view with a
    thousand shared folders: ten million rows in memory) and had no bound in bytes (22.7 MB
    failed on every retry as a Lambda answer). It takes the newest `limit` of them all at
    once now, as many as an answer holds (`listing.PAGE_BYTES`)."""
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    for path in ("/r1", "/Team/t1", "/r2", "/Team/t2"):  # deleted in this order
        put_file(services, alice, path, path.encode())
        files.delete(services, alice, DeleteRequest(path=path))

    def listed(limit: int) -> list[str]:
        trash = files.trash_list(services, alice, TrashListRequest(limit=limit))
        return [e.path_display for e in trash.entries]

    assert listed(3) == ["/Team/t2", "/r2", "/Team/t1"]
    assert listed(1) == ["/Team/t2"]
    # 400 bytes an entry and 4 a byte of its names: /Team/t2 472, /r2 432, /Team/t1 472
    monkeypatch.setattr(listing, "PAGE_BYTES", 472 + 432)
    assert listed(4) == ["/Team/t2", "/r2"]  # two fit the bytes (and one always does)


def test_a_delete_that_lands_once_the_owner_is_alone_stays_hers(
    services: Services, alice: Principal, bob: Principal, carol: Principal, race: Race
) -> None:
    """A delete begun while bob was still in /Team and done once he had left (it queued
    for the namespace) was stamped with its transaction's start, before alice was alone:
    carol, let in next, listed and restored alice's file. The stamp now follows the lock."""
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob, carol)
    _share(services, alice, "/Team", bob, "editor")
    secret = put_file(services, alice, "/Team/salaries.xlsx", b"this year's")
    deleted, left = race(
        "user_view",  # the delete's transaction is begun: its now() is taken
        lambda: files.delete(services, alice, DeleteRequest(path="/Team/salaries.xlsx")),
        lambda: sharing.unshare(services, bob, UnshareRequest(path="/Team")),  # bob leaves
        second_waits=False,
    )
    assert not isinstance(deleted, Exception) and not isinstance(left, Exception)
    _share(services, alice, "/Team", carol, "editor")
    assert files.trash_list(services, carol, TrashListRequest(path="/Team")).entries == []
    _kept_from_members(services, alice, carol, secret, b"this year's")


def test_a_members_delete_done_before_the_owner_was_alone_stays_shared(
    services: Services, alice: Principal, bob: Principal, race: Race
) -> None:
    """The other way round: an unshare begun before bob's delete and done after it stamped
    alice alone from its start, so bob's delete, done while he was in /Team, went to her
    own trash when she shared the folder with him again; he could no longer restore it."""
    put_file(services, alice, "/Team/a", b"a")
    put_file(services, alice, "/Team/report.docx", b"the report")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    unshared, deleted = race(
        "user_view",
        lambda: sharing.unshare(services, alice, UnshareRequest(path="/Team")),
        lambda: files.delete(services, bob, DeleteRequest(path="/Team/report.docx")),
        second_waits=False,
    )
    assert not isinstance(unshared, Exception) and not isinstance(deleted, Exception)
    _share(services, alice, "/Team", bob, "editor")
    bobs = files.trash_list(services, bob, TrashListRequest(path="/Team")).entries
    assert [t.path_display for t in bobs] == ["/Team/report.docx"]
    files.restore(services, bob, RestoreRequest(path="/Team/report.docx"))
    assert get_file(services, bob, "/Team/report.docx") == b"the report"


def test_a_share_is_not_mounted_over_what_the_member_deleted(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """Mounted at a path where Bob's own deleted folder lay, the share hid it: restoring
    it was 409 (it would lie under the mount), and the trash purged it 30 days later."""
    mine = put_file(services, bob, "/Team/notes.txt", b"bob's notes")
    files.delete(services, bob, DeleteRequest(path="/Team"))
    put_file(services, alice, "/Team/a", b"a")
    _share(services, alice, "/Team", bob, "editor")
    (mount,) = sharing.shares(services, bob).shares
    assert mount.path_display == "/Team (2)"
    files.restore(services, bob, RestoreRequest(file_id=mine.file_id))
    assert get_file(services, bob, "/Team/notes.txt") == b"bob's notes"


def test_a_commit_into_a_folder_being_shared_moves_along(
    services: Services,
    alice: Principal,
    bob: Principal,
    race: Race,
) -> None:
    """A commit into the folder still running when it is shared holds the root namespace:
    the share waits for it, and the new file moves into the shared namespace with the
    rest instead of staying in the root, hidden under the mount."""
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob)
    committed, shared = race(
        "write_version",
        lambda: put_file(services, alice, "/Team/new", b"new"),
        lambda: _invite(services, alice, "/Team", bob, "editor"),
    )
    assert isinstance(committed, FileEntry) and isinstance(shared, ShareInfo), shared
    _accept(services, bob, shared)
    for who in (alice, bob):
        assert get_file(services, who, "/Team/new") == b"new"


def test_a_commit_waiting_for_a_share_of_its_folder_is_retried_not_hidden(
    services: Services,
    alice: Principal,
    bob: Principal,
    race: Race,
) -> None:
    """A commit that read alice's view before she shared the folder, and got the root
    namespace after the share, would write into the root under what is now a mount point,
    where nobody sees it: it answers 503 instead, and its retry lands in the share."""
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob)
    shared, committed = race(
        "move_to_namespace",
        lambda: _invite(services, alice, "/Team", bob, "editor"),
        lambda: put_file(services, alice, "/Team/new", b"new"),
    )
    assert isinstance(shared, ShareInfo), shared
    assert isinstance(committed, Unavailable), committed
    put_file(services, alice, "/Team/new", b"new")  # the client's retry
    _accept(services, bob, shared)
    for who in (alice, bob):
        assert get_file(services, who, "/Team/new") == b"new"


def test_a_folder_created_while_its_parent_is_shared_moves_along(
    services: Services,
    alice: Principal,
    bob: Principal,
    race: Race,
) -> None:
    """create_folder holds the root namespace: a share of the folder above waits for it,
    and the new folder moves into the shared namespace with the rest."""
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob)
    created, shared = race(
        "insert_file",
        lambda: files.create_folder(services, alice, "/Team/sub"),
        lambda: _invite(services, alice, "/Team", bob, "editor"),
    )
    assert isinstance(created, FolderEntry) and isinstance(shared, ShareInfo), shared
    _accept(services, bob, shared)
    for who in (alice, bob):
        found = files.metadata(services, who, MetadataRequest(path="/Team/sub"))
        assert isinstance(found, FolderEntry) and found.file_id == created.file_id


def _root_entries_at(services: Services, who: Principal, key: str) -> list[str]:
    """Live entries of `who`'s root namespace at or under `key`."""
    root_ns = sharing.account(services, who).root_ns_id
    with services.db.transaction() as store:
        below = [r.path_display for r in store.subtree(root_ns, *paths.subtree_range(key))]
        return [key, *below] if store.live_path_taken(root_ns, key) else below


def test_a_move_to_where_a_share_is_being_mounted_is_409(
    services: Services,
    alice: Principal,
    bob: Principal,
    race: Race,
) -> None:
    """Bob moves a file to /Docs while he accepts alice's share of her Docs (mounted at
    /Docs): the move read his view before the mount and got his root namespace after it.
    It made a folder /Docs in his root, hidden under the mount, with the file in it: 409
    now."""
    put_file(services, alice, "/Docs/a.txt", b"a")
    put_file(services, bob, "/notes.txt", b"bob's notes")
    invited = _invite(services, alice, "/Docs", bob, "editor")
    shared, moved = race(
        "add_member",  # the accept holds bob's root namespace from before this
        lambda: _accept(services, bob, invited),
        lambda: files.move(
            services, bob, MoveRequest(from_path="/notes.txt", to_path="/Docs/notes.txt")
        ),
    )
    assert isinstance(shared, ShareInfo) and shared.path_display == "/Docs", shared
    assert isinstance(moved, Conflict) and "changed during the request" in str(moved), moved
    assert get_file(services, bob, "/notes.txt") == b"bob's notes"
    assert _root_entries_at(services, bob, "/docs") == []
    assert get_file(services, bob, "/Docs/a.txt") == b"a"


def test_an_undelete_under_where_a_share_is_being_mounted_is_409(
    services: Services,
    alice: Principal,
    bob: Principal,
    race: Race,
) -> None:
    """Bob undeletes /Docs/x.txt (his own, deleted with its folder) while he accepts
    alice's share of her Docs, mounted for him: restored into his root, it lay hidden under
    the mount."""
    put_file(services, alice, "/Docs/a.txt", b"a")
    mine = put_file(services, bob, "/Docs/x.txt", b"bob's x")
    files.delete(services, bob, DeleteRequest(path="/Docs"))
    invited = _invite(services, alice, "/Docs", bob, "editor")
    shared, restored = race(
        "add_member",  # the accept holds bob's root namespace from before this
        lambda: _accept(services, bob, invited),
        lambda: files.restore(services, bob, RestoreRequest(file_id=mine.file_id)),
    )
    assert isinstance(shared, ShareInfo), shared
    assert isinstance(restored, Conflict), restored
    assert _root_entries_at(services, bob, "/docs") == []
    # still in the trash, and restorable once the path is free again
    trash = files.trash_list(services, bob, TrashListRequest(path="/")).entries
    assert "/Docs/x.txt" in [t.path_display for t in trash]


def test_a_folder_created_under_a_folder_being_shared_is_409(
    services: Services,
    alice: Principal,
    bob: Principal,
    race: Race,
) -> None:
    """A create_folder that waited for a share of the folder above it finds the path now
    leads into the shared folder: 409 (retry), never a folder left in the root namespace,
    hidden under the mount."""
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob)
    root_ns = sharing.account(services, alice).root_ns_id
    shared, created = race(
        "add_member",  # the owner's, as the folder becomes a shared namespace
        lambda: _invite(services, alice, "/Team", bob, "editor"),
        lambda: files.create_folder(services, alice, "/Team/sub"),
    )
    assert isinstance(shared, ShareInfo), shared
    assert isinstance(created, Conflict) and "changed during the request" in str(created)
    with services.db.transaction() as store:
        assert store.subtree(root_ns, *paths.subtree_range("/team")) == []
    assert isinstance(files.create_folder(services, alice, "/Team/sub"), FolderEntry)


def test_nothing_is_restored_under_a_mount(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """What Alice deleted in a folder she shares lies in her own trash under its mount
    point (deleted before the first share, or while she was alone in it): restoring it
    would hide it (and what it held) under the mount, so it is refused. (A member's own
    trash never lies there: a share is mounted beside it.)"""
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    files.delete(services, bob, DeleteRequest(path="/Team"))  # the last member leaves
    old = put_file(services, alice, "/Team/old/old.txt", b"mine")
    folder = files.metadata(services, alice, MetadataRequest(path="/Team/old"))
    files.delete(services, alice, DeleteRequest(path="/Team/old"))
    _share(services, alice, "/Team", bob, "editor")
    assert isinstance(folder, FolderEntry)
    for restore in (
        RestoreRequest(file_id=folder.file_id),
        RestoreRequest(file_id=old.file_id, rev=1),
    ):
        with pytest.raises(Conflict, match="mounted at or above '/Team/old"):
            files.restore(services, alice, restore)
    assert files.revisions(services, alice, RevisionsRequest(file_id=old.file_id)).is_deleted


def test_roles(services: Services, alice: Principal, bob: Principal, carol: Principal) -> None:
    put_file(services, alice, "/S/doc", b"doc")
    _meet(services, bob, carol)
    _share(services, alice, "/S", bob, "editor")
    _share(services, alice, "/S", carol, "viewer")
    # the editor writes, the viewer only reads
    put_file(services, bob, "/S/by-bob", b"editor wrote")
    assert get_file(services, carol, "/S/by-bob") == b"editor wrote"
    with pytest.raises(Forbidden):
        put_file(services, carol, "/S/by-carol", b"viewer")
    with pytest.raises(Forbidden):
        files.delete(services, carol, DeleteRequest(path="/S/doc"))
    with pytest.raises(Forbidden):
        files.move(services, carol, MoveRequest(from_path="/S/doc", to_path="/S/x"))
    with pytest.raises(Forbidden):
        files.restore(services, carol, RestoreRequest(path="/S/doc", rev=1))
    with pytest.raises(Forbidden):
        files.create_folder(services, carol, "/S/new")
    # only the owner shares and unshares others
    with pytest.raises(Forbidden):
        _change_access(services, bob, "/S", carol, "editor")
    with pytest.raises(Forbidden):
        sharing.unshare(services, bob, UnshareRequest(path="/S", email=carol.email))
    # the owner deletes contents; a non-owner deleting the mount leaves the share
    files.delete(services, bob, DeleteRequest(path="/S"))
    with pytest.raises(NotFound):
        files.metadata(services, bob, MetadataRequest(path="/S/doc"))
    assert get_file(services, carol, "/S/doc") == b"doc"
    with pytest.raises(Unprocessable, match="unshare"):
        files.delete(services, alice, DeleteRequest(path="/S"))


def test_unshare_removes_access(services: Services, alice: Principal, bob: Principal) -> None:
    e = put_file(services, alice, "/S/f", b"f")
    _meet(services, bob)
    _share(services, alice, "/S", bob, "editor")
    info = sharing.unshare(services, alice, UnshareRequest(path="/S"))
    assert [m.email for m in info.members] == [alice.email]
    with pytest.raises(NotFound):
        files.metadata(services, bob, MetadataRequest(file_id=e.file_id))
    assert get_file(services, alice, "/S/f") == b"f"


def test_a_viewer_reads_the_shares_trash_until_the_share_is_left(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """A file deleted in a shared folder is part of its history, which a member reads
    (`tessera get` of the trash); once the folder is unshared, it is none of theirs."""
    put_file(services, alice, "/S/agenda.txt", b"what to say")
    _meet(services, bob)
    _share(services, alice, "/S", bob, "viewer")
    gone = put_file(services, alice, "/S/minutes.txt", b"what was said")
    files.delete(services, alice, DeleteRequest(path="/S/minutes.txt"))
    assert get_file(services, bob, "/S/minutes.txt", include_deleted=True) == b"what was said"
    with pytest.raises(Forbidden):  # reading it is not bringing it back
        files.restore(services, bob, RestoreRequest(file_id=gone.file_id))
    sharing.unshare(services, alice, UnshareRequest(path="/S"))
    with pytest.raises(NotFound):
        get_file(services, bob, file_id=gone.file_id, include_deleted=True)


def test_the_owner_alone_deletes_a_shared_folder_into_the_trash(
    services: Services, alice: Principal, bob: Principal, db: Database
) -> None:
    """Once nobody else is a member, the owner's delete of the mount point sends the folder
    and what it holds to their trash, restorable with file_ids and history; what was in
    the trash before stays there."""
    a = put_file(services, alice, "/Team/a", b"a")
    put_file(services, alice, "/Team/sub/b", b"b")
    put_file(services, alice, "/Team/old", b"old")
    files.delete(services, alice, DeleteRequest(path="/Team/old"))
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    sharing.unshare(services, alice, UnshareRequest(path="/Team"))
    cursor = listing.list_folder(services, alice, "/", True, None).cursor
    deleted = files.delete(services, alice, DeleteRequest(path="/Team"))
    assert isinstance(deleted, FolderEntry) and deleted.path_display == "/Team"
    assert sharing.shares(services, alice).shares == []
    with pytest.raises(NotFound):
        files.metadata(services, alice, MetadataRequest(path="/Team/a"))
    assert ("deleted", "/Team") in [
        (e.tag, e.path_display)
        for e in listing.list_folder_continue(services, alice, cursor, None).entries
    ]
    trash = files.trash_list(services, alice, TrashListRequest()).entries
    assert sorted(t.path_display for t in trash) == [
        "/Team",
        "/Team/a",
        "/Team/old",
        "/Team/sub",
        "/Team/sub/b",
    ]
    files.restore(services, alice, RestoreRequest(path="/Team"))
    assert get_file(services, alice, "/Team/sub/b") == b"b"
    back = files.metadata(services, alice, MetadataRequest(file_id=a.file_id))
    assert isinstance(back, FileEntry) and back.path_display == "/Team/a"
    assert back.ns_id == sharing.account(services, alice).root_ns_id
    assert files.revisions(services, alice, RevisionsRequest(path="/Team/old")).is_deleted
    assert usage_drift(db) == []


def test_share_errors(services: Services, alice: Principal, bob: Principal) -> None:
    put_file(services, alice, "/S/inner/f", b"f")
    put_file(services, alice, "/file", b"f")
    with pytest.raises(NotFound):
        _invite(services, alice, "/S", bob, "editor")  # bob never signed in
    _meet(services, bob)
    with pytest.raises(Unprocessable):
        _invite(services, alice, "/file", bob, "editor")
    with pytest.raises(Unprocessable):
        _invite(services, alice, "/", bob, "editor")
    with pytest.raises(Unprocessable):
        _invite(services, alice, "/S", alice, "editor")
    with pytest.raises(NotFound):
        _invite(services, bob, "/S", alice, "editor")  # not in bob's view
    _share(services, alice, "/S", bob, "editor")
    with pytest.raises(Unprocessable, match="cannot be shared again"):
        _invite(services, alice, "/S/inner", bob, "viewer")
    # a file in it is no folder (it was called "a folder inside a shared folder")
    with pytest.raises(Unprocessable, match="only folders can be shared"):
        _invite(services, alice, "/S/inner/f", bob, "viewer")
    # the owner is no member to remove: the advice is the unshare of everyone, never to
    # delete the folder (every member's files, to the trash)
    with pytest.raises(Unprocessable, match="unshare it without an email") as owner:
        sharing.unshare(services, alice, UnshareRequest(path="/S", email=alice.email))
    assert "delete" not in str(owner.value)
    with pytest.raises(Unprocessable, match="shared folder"):
        files.move(services, alice, MoveRequest(from_path="/S/inner/f", to_path="/out"))


def test_account_usage(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/a", b"12345")
    put_file(services, alice, "/b", b"123")
    put_file(services, alice, "/a", b"1", parent_rev=1)
    acct = sharing.account(services, alice)
    assert acct.used_bytes == 4 and acct.email == alice.email
    assert acct.quota_bytes == services.settings.default_quota_bytes


def test_a_write_is_held_to_its_writers_quota_alone(
    services: Services, alice: Principal, bob: Principal, carol: Principal
) -> None:
    """Files in a shared folder count against its owner (`account` usage), but a write
    there is checked against its writer's quota: their own files and the whole folder, never
    the owner's other files. An editor may take the owner past her quota; her growing
    writes are then refused. A share given to someone costs them nothing elsewhere: a
    shared folder counting against every member let anyone fill a stranger's quota."""
    from tessera.domain.errors import QuotaExceeded

    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob, carol)
    _share(services, alice, "/Team", bob, "editor")
    _share(services, alice, "/Team", carol, "viewer")
    with services.db.transaction() as store:
        for who, quota in ((alice, 10), (carol, 5)):
            store.conn.execute(
                "UPDATE users SET quota_bytes = %s WHERE user_id = %s", (quota, who.user_id)
            )
    put_file(services, bob, "/mine", b"x" * 100)
    put_file(services, bob, "/Team/b", b"1" * 20)  # alice: 21 of 10
    used = {p.email: sharing.account(services, p).used_bytes for p in (alice, bob, carol)}
    assert used == {alice.email: 21, bob.email: 100, carol.email: 0}
    put_file(services, carol, "/hers", b"12345")  # /Team's 21 bytes take none of her 5
    with pytest.raises(QuotaExceeded, match="your quota of 10 bytes; delete") as info:
        put_file(services, alice, "/Team/c", b"12")
    assert info.value.status == 413
    with services.db.transaction() as store:
        store.conn.execute("UPDATE users SET quota_bytes = 122 WHERE user_id = %s", (bob.user_id,))
    with pytest.raises(QuotaExceeded, match="quota of 122 bytes; a folder shared with you"):
        put_file(services, bob, "/Team/c", b"12")  # his 100, /Team's 21 and 2 of 122
    put_file(services, bob, "/Team/c", b"1")


def _owner_alone_in_team(services: Services, alice: Principal, bob: Principal) -> None:
    """Alice's /Team (holding /Team/a), shared with bob and unshared: hers alone again."""
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    sharing.unshare(services, alice, UnshareRequest(path="/Team"))


def test_a_commit_waiting_for_the_owners_delete_of_the_share_is_retried_not_lost(
    services: Services, alice: Principal, bob: Principal, race: Race
) -> None:
    """A commit that read alice's view while she deleted her shared folder, and got the
    shared namespace after the delete, would write into a namespace nobody is a member of
    any more (not even in the trash): it answers 503, and its retry lands in her root."""
    _owner_alone_in_team(services, alice, bob)
    deleted, committed = race(
        "move_to_namespace",
        lambda: files.delete(services, alice, DeleteRequest(path="/Team")),
        lambda: put_file(services, alice, "/Team/new", b"new"),
    )
    assert isinstance(deleted, FolderEntry), deleted
    assert isinstance(committed, Unavailable), committed
    put_file(services, alice, "/Team/new", b"new")  # the client's retry
    assert get_file(services, alice, "/Team/new") == b"new"


def _made_viewer_during(
    svc: Services, alice: Principal, bob: Principal, race: Race, change: Callable[[], object]
) -> tuple[object, object]:
    """Bob, an editor of alice's /Team (holding `a`), makes `change` while alice makes him
    a viewer: (the share's outcome, the change's)."""
    put_file(svc, alice, "/Team/a", b"a")
    _meet(svc, bob)
    _share(svc, alice, "/Team", bob, "editor")
    return race("add_member", lambda: _change_access(svc, alice, "/Team", bob, "viewer"), change)


def test_an_edit_waiting_for_a_change_to_viewer_is_retried_and_refused(
    services: Services, alice: Principal, bob: Principal, race: Race
) -> None:
    """Alice makes bob a viewer while his commit waits for the shared namespace: it does
    not go through as an editor's; it answers 503, and its retry is refused."""
    changed, committed = _made_viewer_during(
        services, alice, bob, race, lambda: put_file(services, bob, "/Team/b", b"b")
    )
    assert not isinstance(changed, Exception), changed
    assert isinstance(committed, Unavailable), committed
    with pytest.raises(Forbidden):
        put_file(services, bob, "/Team/b", b"b")


def test_a_shared_folder_deleted_if_empty_stays_while_it_holds_anything(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """`if_empty` guards a mount point too: neither the owner's delete nor a member's leave
    takes along (or hides) a file they had not seen."""
    _owner_alone_in_team(services, alice, bob)
    with pytest.raises(Conflict, match="not empty"):
        files.delete(services, alice, DeleteRequest(path="/Team", if_empty=True))
    _share(services, alice, "/Team", bob, "editor")
    with pytest.raises(Conflict, match="not empty"):
        files.delete(services, bob, DeleteRequest(path="/Team", if_empty=True))
    assert get_file(services, bob, "/Team/a") == b"a"
    files.delete(services, alice, DeleteRequest(path="/Team/a"))
    left = files.delete(services, bob, DeleteRequest(path="/Team", if_empty=True))
    assert isinstance(left, FolderEntry) and sharing.shares(services, bob).shares == []
    deleted = files.delete(services, alice, DeleteRequest(path="/Team", if_empty=True))
    assert isinstance(deleted, FolderEntry) and sharing.shares(services, alice).shares == []


def test_a_second_delete_of_a_deleted_share_is_409_and_leaves_no_decoy(
    services: Services, alice: Principal, bob: Principal, race: Race
) -> None:
    """Two deletes of the same shared folder (a client's retry racing the first): the
    second is 409, instead of trashing an empty folder of the same name that a restore by
    path would then bring back in place of the real one."""
    _owner_alone_in_team(services, alice, bob)
    first, second = race(
        "move_to_namespace",
        lambda: files.delete(services, alice, DeleteRequest(path="/Team")),
        lambda: files.delete(services, alice, DeleteRequest(path="/Team")),
    )
    assert isinstance(first, FolderEntry), first
    assert isinstance(second, Conflict), second
    trash = files.trash_list(services, alice, TrashListRequest()).entries
    assert sorted(t.path_display for t in trash) == ["/Team", "/Team/a"]
    files.restore(services, alice, RestoreRequest(path="/Team"))
    assert get_file(services, alice, "/Team/a") == b"a"


@pytest.mark.parametrize("limit", [1, 2])
def test_a_listing_of_shared_folders_ends_whatever_its_page_size(
    services: Services, alice: Principal, bob: Principal, limit: int
) -> None:
    """A mount point's entry opens its part's snapshot: with limit=1 every page was that
    entry again (has_more, the same cursor), and the listing never ended."""
    for name in ("x", "y"):
        put_file(services, alice, f"/S/{name}.txt", name.encode())
        put_file(services, alice, f"/T/{name}.txt", name.encode())
    _meet(services, bob)
    _share(services, alice, "/S", bob, "viewer")
    _share(services, alice, "/T", bob, "viewer")
    put_file(services, bob, "/mine.txt", b"m")
    page = listing.list_folder(services, bob, "", True, limit)
    seen = [e.path_display for e in page.entries]
    for _ in range(20):
        if not page.has_more:
            break
        page = listing.list_folder_continue(services, bob, page.cursor, limit)
        assert len(page.entries) <= limit
        seen += [e.path_display for e in page.entries]
    assert not page.has_more
    assert sorted(seen) == ["/S", "/S/x.txt", "/S/y.txt", "/T", "/T/x.txt", "/T/y.txt", "/mine.txt"]


def test_a_removed_members_old_cursor_learns_nothing_of_the_share(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """Removing bob journals the mount's removal in his root, so a cursor from before
    answers its long-poll at once whatever happens in the share (its timing tells him
    nothing), and the cursor his next listing gives him no longer watches it."""
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    old = listing.list_folder(services, bob, "", True, None).cursor
    sharing.unshare(services, alice, UnshareRequest(path="/Team", email=bob.email))

    assert listing.longpoll(services, bob, LongpollRequest(cursor=old, timeout=5)).changes
    new = listing.list_folder_continue(services, bob, old, None).cursor
    put_file(services, alice, "/Team/b", b"b")
    assert not listing.longpoll(services, bob, LongpollRequest(cursor=new, timeout=1)).changes


def test_a_folder_created_by_an_editor_made_viewer_meanwhile_is_409(
    services: Services, alice: Principal, bob: Principal, race: Race
) -> None:
    """create_folder checked the access it read before the lock: it only checked that the
    path still led to the same namespace, so a viewer's folder went in."""
    changed, created = _made_viewer_during(
        services, alice, bob, race, lambda: files.create_folder(services, bob, "/Team/x/y")
    )
    assert not isinstance(changed, Exception), changed
    assert isinstance(created, Conflict) and "changed during the request" in str(created)
    with pytest.raises(Forbidden):
        files.create_folder(services, bob, "/Team/x/y")
    assert [e.name for e in listing.list_folder(services, alice, "/Team", False, None).entries] == [
        "a"
    ]


def test_a_member_removed_while_their_access_changes_stays_removed(
    services: Services, alice: Principal, bob: Principal, race: Race
) -> None:
    """unshare took no lock on the shared namespace: it removed bob while a share read him
    as a member, and the share's upsert then put him back with an empty mount path (the
    share's entries at the top of his folder)."""
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    changed, removed = race(
        "members",  # the share has read bob as a member, and holds the namespace
        lambda: _change_access(services, alice, "/Team", bob, "viewer"),
        lambda: sharing.unshare(services, alice, UnshareRequest(path="/Team", email=bob.email)),
    )
    assert not isinstance(changed, Exception), changed
    assert not isinstance(removed, Exception), removed
    assert [m.email for m in sharing.shares(services, alice).shares[0].members] == [alice.email]
    assert listing.list_folder(services, bob, "", True, None).entries == []


def test_unsharing_a_folder_its_owner_deletes_meanwhile_is_409(
    services: Services, alice: Principal, bob: Principal, race: Race
) -> None:
    """unshare read the members before it took the locks: once the owner's delete of the
    folder went first, no owner was left to answer with (StopIteration, a 500). A shared
    folder is deleted once its owner is its only member."""
    files.create_folder(services, alice, "/Team")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    sharing.unshare(services, alice, UnshareRequest(path="/Team"))
    deleted, unshared = race(
        "mark_deleted",
        lambda: files.delete(services, alice, DeleteRequest(path="/Team")),
        lambda: sharing.unshare(services, alice, UnshareRequest(path="/Team")),
    )
    assert not isinstance(deleted, Exception), deleted
    assert isinstance(unshared, Conflict) and "changed" in str(unshared)
    assert sharing.shares(services, alice).shares == []
    assert sharing.shares(services, bob).shares == []


def test_unsharing_everyone_else_while_a_member_joins_is_409(
    services: Services, alice: Principal, bob: Principal, carol: Principal, race: Race
) -> None:
    """ "Remove everyone else" named the members it read before the locks: one added
    meanwhile (an invitee accepting) stayed."""
    files.create_folder(services, alice, "/Team")
    _meet(services, bob, carol)
    _share(services, alice, "/Team", bob, "editor")
    invited = _invite(services, alice, "/Team", carol, "viewer")
    joined, unshared = race(
        "remove_invite",  # the accept holds the shared namespace (before its new member's row)
        lambda: _accept(services, carol, invited),
        lambda: sharing.unshare(services, alice, UnshareRequest(path="/Team")),
    )
    assert isinstance(joined, ShareInfo), joined
    assert isinstance(unshared, Conflict) and "members changed" in str(unshared)
    sharing.unshare(services, alice, UnshareRequest(path="/Team"))  # the retry
    assert [m.email for m in sharing.shares(services, alice).shares[0].members] == [alice.email]


def test_the_shares_listing_leaves_out_a_share_deleted_as_it_is_read(
    services: Services, alice: Principal, bob: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The view names the mount, and by the time its members are read the owner deleted
    it: it is left out, where the listing failed (StopIteration, a 500)."""
    files.create_folder(services, alice, "/Team")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    monkeypatch.setattr(Store, "members", lambda self, ns_id: [])
    assert sharing.shares(services, bob).shares == []


def test_leaving_a_share_if_empty_waiting_for_a_commit_into_it_is_409(
    services: Services, alice: Principal, bob: Principal, race: Race
) -> None:
    """A member's client saw the shared folder empty and leaves it with `if_empty`: a file
    the owner commits meanwhile keeps them in (it was checked without the lock)."""
    files.create_folder(services, alice, "/Team")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    committed, left = race(
        "write_version",
        lambda: put_file(services, alice, "/Team/new", b"new work"),
        lambda: files.delete(services, bob, DeleteRequest(path="/Team", if_empty=True)),
    )
    assert isinstance(committed, FileEntry), committed
    assert isinstance(left, Conflict) and "not empty" in str(left)
    assert get_file(services, bob, "/Team/new") == b"new work"


def test_a_commit_waiting_for_its_members_removal_is_retried_not_landed(
    services: Services, alice: Principal, bob: Principal, race: Race
) -> None:
    """Bob's commit waits for the shared namespace while alice removes him: it must not
    land in the share once he is out (unshare took no lock there: it landed)."""
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    removed, committed = race(
        "remove_member",
        lambda: sharing.unshare(services, alice, UnshareRequest(path="/Team", email=bob.email)),
        lambda: put_file(services, bob, "/Team/b", b"b"),
    )
    assert not isinstance(removed, Exception), removed
    assert isinstance(committed, Unavailable), committed
    assert [e.name for e in listing.list_folder(services, alice, "/Team", False, None).entries] == [
        "a"
    ]


def _emoji_name(rng: random.Random) -> str:
    """A 252-byte name of random emoji: text JSON escaped to 12 bytes a character."""
    return "".join(chr(rng.randrange(0x1F300, 0x1F5FF)) for _ in range(63))


def test_sixty_shares_named_in_emoji_leave_the_members_cursor_usable(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """Anyone may share folders with bob unasked. Each is a part of his cursor with its
    mount path, escaped to 12 bytes an emoji: sixty made a cursor past the length a
    continue or long-poll accepts, and his sync stopped."""
    from tessera.domain.models import ListFolderContinueRequest

    _meet(services, alice, bob)
    rng = random.Random(60)
    for _ in range(60):
        name = _emoji_name(rng)
        files.create_folder(services, alice, f"/{name}")
        _share(services, alice, f"/{name}", bob, "viewer")
    cursor = listing.list_folder(services, bob, "", recursive=True, limit=None).cursor
    request = ListFolderContinueRequest(cursor=cursor)  # within the accepted length
    put_file(services, alice, f"/{name}/new.txt", b"new")
    page = listing.list_folder_continue(services, bob, request.cursor, None)
    assert [e.path_display for e in page.entries] == [f"/{name}/new.txt"]


def test_a_user_is_given_at_most_max_shared_folders(
    services: Services, alice: Principal, bob: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharing, "MAX_SHARED_FOLDERS", 2)
    _meet(services, alice, bob)
    for name in ("a", "b"):
        files.create_folder(services, alice, f"/{name}")
        _share(services, alice, f"/{name}", bob, "viewer")
    files.create_folder(services, alice, "/c")
    invited = _invite(services, alice, "/c", bob, "viewer")
    with pytest.raises(Unprocessable, match="already has 2 shared folders"):
        _accept(services, bob, invited)
    _change_access(services, alice, "/a", bob, "editor")  # a change of access is no new folder
    sharing.unshare(services, bob, UnshareRequest(path="/b"))
    _accept(services, bob, invited)  # the invitation waited
    assert sorted(s.path_display for s in sharing.shares(services, bob).shares) == ["/a", "/c"]


def test_a_members_devices_learn_their_new_access(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """A change of access logs the mount point again in the member's root: the entry his
    devices get carries the access he has now (it came with `access` null)."""
    put_file(services, alice, "/Team/a", b"a")
    _meet(services, bob)
    _share(services, alice, "/Team", bob, "editor")
    first = listing.list_folder(services, bob, "", True, None)
    assert _mount_access(first.entries) == ["editor"]

    _change_access(services, alice, "/Team", bob, "viewer")
    after = listing.list_folder_continue(services, bob, first.cursor, None)
    assert _mount_access(after.entries) == ["viewer"]


def _mount_access(entries: object) -> list[str | None]:
    assert isinstance(entries, list)
    return [e.access for e in entries if isinstance(e, FolderEntry) and e.shared_ns_id]


def test_two_users_sharing_with_each_other_at_once_do_not_deadlock(
    services: Services, alice: Principal, bob: Principal, race: Race
) -> None:
    """Each share took the sharer's root, then the other's: held crosswise, a deadlock
    (one answered 503 after PostgreSQL's deadlock timeout). Both roots are now taken
    first, in order: Bob's share waits for Alice's, then goes through too (hers only
    invites him: nothing is mounted in his root until he accepts), and both accept."""
    put_file(services, alice, "/A/a", b"a")
    put_file(services, bob, "/B/b", b"b")
    alices, bobs = race(
        "create_namespace",
        lambda: _invite(services, alice, "/A", bob, "editor"),
        lambda: _invite(services, bob, "/B", alice, "editor"),
    )
    assert isinstance(alices, ShareInfo), alices
    assert isinstance(bobs, ShareInfo), bobs
    _accept(services, bob, alices)
    _accept(services, alice, bobs)
    assert get_file(services, bob, "/A/a") == b"a"
    assert get_file(services, alice, "/B/b") == b"b"
