"""Metadata, download (staged copies, cold, quarantined), revisions, restore, move, delete,
trash and undelete, against real PostgreSQL and the real local block store."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import psycopg
import pytest

from tessera.blocks import block_id
from tessera.domain import commits, files, listing, paths, sharing
from tessera.domain.errors import (
    BlockUnavailable,
    Conflict,
    InvalidPath,
    NotFound,
    Unprocessable,
)
from tessera.domain.models import (
    DeletedEntry,
    DeleteRequest,
    DownloadRequest,
    DownloadResponse,
    FileEntry,
    FolderEntry,
    MetadataRequest,
    MoveRequest,
    RestoreRequest,
    RestoringResponse,
    RevisionsRequest,
    ShareRequest,
    TrashListRequest,
)
from tessera.domain.services import Services
from tessera.metadata.store import Store
from tessera.ports import Principal, StorageTier
from tests.concurrency import wait_for_a_lock_waiter

from .conftest import (
    commit_request,
    get_file,
    put_file,
    set_block_state,
    share_with,
    store_put,
    upload_blocks,
)


def test_metadata_by_path_and_id(services: Services, alice: Principal) -> None:
    e = put_file(services, alice, "/Docs/a.txt", b"a")
    by_path = files.metadata(services, alice, MetadataRequest(path="/DOCS/A.txt"))
    by_id = files.metadata(services, alice, MetadataRequest(file_id=e.file_id))
    assert by_path == by_id == e
    folder = files.metadata(services, alice, MetadataRequest(path="/Docs"))
    assert isinstance(folder, FolderEntry)


def test_other_users_file_id_and_path_are_404(
    services: Services, alice: Principal, bob: Principal
) -> None:
    e = put_file(services, alice, "/secret.txt", b"s")
    put_file(services, bob, "/bob.txt", b"b")
    for call in (
        lambda: files.metadata(services, bob, MetadataRequest(file_id=e.file_id)),
        lambda: files.download(services, bob, DownloadRequest(file_id=e.file_id)),
        lambda: files.revisions(services, bob, RevisionsRequest(file_id=e.file_id)),
        lambda: files.restore(services, bob, RestoreRequest(file_id=e.file_id, rev=1)),
        lambda: files.download(services, bob, DownloadRequest(path="/secret.txt")),
        lambda: files.metadata(services, bob, MetadataRequest(file_id="id:" + "0" * 24)),
    ):
        with pytest.raises(NotFound):
            call()


@pytest.mark.parametrize("bad", ["/a/../b", "/./x", "x", "/a\x00", "/" + "é" * 200])
def test_traversal_in_every_path_field(services: Services, alice: Principal, bad: str) -> None:
    put_file(services, alice, "/ok", b"ok")
    for call in (
        lambda: files.metadata(services, alice, MetadataRequest(path=bad)),
        lambda: files.download(services, alice, DownloadRequest(path=bad)),
        lambda: files.revisions(services, alice, RevisionsRequest(path=bad)),
        lambda: files.restore(services, alice, RestoreRequest(path=bad, rev=1)),
        lambda: files.move(services, alice, MoveRequest(from_path=bad, to_path="/x")),
        lambda: files.move(services, alice, MoveRequest(from_path="/ok", to_path=bad)),
        lambda: files.delete(services, alice, DeleteRequest(path=bad)),
        lambda: files.create_folder(services, alice, bad),
        lambda: files.trash_list(services, alice, TrashListRequest(path=bad)),
    ):
        with pytest.raises(Unprocessable):
            call()


def test_staged_blocks_are_served_from_the_callers_own_copy(
    services: Services, alice: Principal, bob: Principal
) -> None:
    data = b"genuine content " * 100
    put_file(services, alice, "/real", data)
    # bob uploads garbage under the same block id (he claims a hash he does not have)
    bid = block_id(data)
    upload_id = upload_blocks(services, bob, "/fake", [data], put=False)
    with services.db.transaction() as store:
        staged = store.upload_blocks(upload_id, [bid])[bid]
    # write bob's "encoded block" directly where his presigned PUT points
    import base64
    import hashlib

    from tessera.domain import uploads
    from tessera.domain.models import UploadUrlBlock, UploadUrlsRequest

    poison = b"\x00" * 200
    urls = uploads.upload_urls(
        services,
        bob,
        UploadUrlsRequest(
            upload_id=upload_id,
            blocks=[
                UploadUrlBlock(
                    id=bid,
                    size=len(poison),
                    sha256=base64.b64encode(hashlib.sha256(poison).digest()).decode(),
                )
            ],
        ),
    )
    store_put(services, urls.urls[0].url, poison, urls.urls[0].headers)
    commits.commit(services, bob, commit_request("/fake", [data], upload_id))
    alice_dl = files.download(services, alice, DownloadRequest(path="/real"))
    assert isinstance(alice_dl, DownloadResponse)
    assert (
        upload_id not in alice_dl.blocks[0].url and staged.staged_key not in alice_dl.blocks[0].url
    )
    assert get_file(services, alice, "/real") == data  # alice never sees bob's bytes
    bob_dl = files.download(services, bob, DownloadRequest(path="/fake"))
    assert isinstance(bob_dl, DownloadResponse) and upload_id in bob_dl.blocks[0].url


def test_cold_blocks_answer_restoring_then_serve(services: Services, alice: Principal) -> None:
    data = b"cold data"
    put_file(services, alice, "/cold", data)
    bid = block_id(data)
    bs = services.block_store
    hot_key = "blocks/" + bid.removeprefix("b3:")
    staged = next(iter(bs.list_keys("staging/")))
    bs.copy(staged, hot_key)  # what dedup-verify does on promotion
    bs.set_tier(hot_key, StorageTier.COLD)
    with services.db.transaction() as store:  # promoted (verified), then moved to cold
        store.conn.execute("UPDATE version_blocks SET staged_key = NULL")
        set_block_state(store, [bid], "cold")
    answer = files.download(services, alice, DownloadRequest(path="/cold"))
    assert isinstance(answer, RestoringResponse) and answer.blocks == [bid]
    assert answer.retry_after == services.settings.restore_retry_after_s
    # the local store restores at once (restore_delay=0): the next ask is served
    assert get_file(services, alice, "/cold") == data


def test_download_comes_in_pages_that_add_up_to_the_file(
    services: Services, alice: Principal
) -> None:
    """A big file's whole block list with a URL each broke Lambda's 6 MB response limit,
    and its last URLs expired before a slow download reached them."""
    paged = replace(services, settings=replace(services.settings, download_page_blocks=2))
    data = bytes(range(256)) * 1028  # 4 blocks of 64 KiB, and a short one
    put_file(services, alice, "/big.bin", data)
    first = files.download(paged, alice, DownloadRequest(path="/big.bin"))
    assert isinstance(first, DownloadResponse)
    assert [b.offset for b in first.blocks] == [0, 65536] and first.next_block == 2
    last = files.download(paged, alice, DownloadRequest(path="/big.bin", from_block=4))
    assert isinstance(last, DownloadResponse)
    assert [b.offset for b in last.blocks] == [4 * 65536] and last.next_block is None
    one = files.download(paged, alice, DownloadRequest(path="/big.bin", from_block=1, limit=1))
    assert isinstance(one, DownloadResponse)
    assert [b.offset for b in one.blocks] == [65536] and one.next_block == 2
    assert get_file(paged, alice, "/big.bin") == data
    with pytest.raises(Unprocessable, match="past the file's 5 blocks"):
        files.download(paged, alice, DownloadRequest(path="/big.bin", from_block=5))
    empty = put_file(services, alice, "/empty", b"")
    answer = files.download(paged, alice, DownloadRequest(file_id=empty.file_id))
    assert isinstance(answer, DownloadResponse) and answer.blocks == [] and not answer.next_block


def test_a_later_page_reads_its_own_blocks_not_the_whole_version(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each page read every block of the version: 400 pages of a 200,000-block file
    (parts make such files) read 80 million rows."""
    paged = replace(services, settings=replace(services.settings, download_page_blocks=2))
    data = bytes(range(256)) * 2560  # 10 blocks of 64 KiB
    put_file(services, alice, "/big.bin", data)
    read: list[int] = []
    version_blocks = Store.version_blocks

    def counting(store: Store, *args: Any, **kwargs: Any) -> Any:
        rows = version_blocks(store, *args, **kwargs)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(Store, "version_blocks", counting)
    assert get_file(paged, alice, "/big.bin") == data
    assert read[0] == 10  # the first page checks the whole version
    assert len(read) == 5 and max(read[1:]) <= 3  # a page, and one more: is there a next?


def test_the_first_page_finds_a_damaged_block_anywhere_in_the_file(
    services: Services, alice: Principal
) -> None:
    paged = replace(services, settings=replace(services.settings, download_page_blocks=1))
    data = b"a" * 65536 + b"b" * 65536
    put_file(services, alice, "/two", data)
    with services.db.transaction() as store:  # the second block found damaged by scrub
        store.conn.execute("UPDATE version_blocks SET staged_key = NULL")
        set_block_state(store, [block_id(b"b" * 65536)], "quarantined")
    with pytest.raises(BlockUnavailable):
        files.download(paged, alice, DownloadRequest(path="/two"))


def test_quarantined_block_is_503(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/bad", b"bad block")
    with services.db.transaction() as store:  # verified once, then found damaged by scrub
        store.conn.execute("UPDATE version_blocks SET staged_key = NULL")
        set_block_state(store, [block_id(b"bad block")], "quarantined")
    with pytest.raises(BlockUnavailable) as info:
        files.download(services, alice, DownloadRequest(path="/bad"))
    assert info.value.status == 503
    # said held (`have`), it is refused all the same: `have` only spares cold blocks
    with pytest.raises(BlockUnavailable):
        files.download(services, alice, DownloadRequest(path="/bad", have=[block_id(b"bad block")]))


def test_restoring_a_rev_whose_block_is_quarantined_is_422(
    services: Services, alice: Principal
) -> None:
    """Scrub found rev 1's only copy of a block damaged: restoring rev 1 made a new latest
    rev that no device could download (503 for ever, with no notice to upload it again)."""
    first = put_file(services, alice, "/q", b"damaged later")
    put_file(services, alice, "/q", b"fine", parent_rev=1)
    bad = block_id(b"damaged later")
    with services.db.transaction() as store:  # verified once, then found damaged by scrub
        store.conn.execute(
            "UPDATE version_blocks SET staged_key = NULL WHERE block_id = %s", (bad,)
        )
        set_block_state(store, [bad], "quarantined")
    with pytest.raises(Unprocessable) as info:
        files.restore(services, alice, RestoreRequest(file_id=first.file_id, rev=1))
    assert "failed verification" in info.value.message
    assert info.value.to_body()["error"]["blocks"] == [bad]
    assert [
        e.rev for e in files.revisions(services, alice, RevisionsRequest(path="/q")).entries
    ] == [2, 1]


def test_an_entry_undeleted_under_a_respelled_folder_takes_its_spelling(
    services: Services, alice: Principal
) -> None:
    """`/Straße` deleted, `/STRASSE` made since: `a.txt` came back displayed
    `/Straße/a.txt` under `/STRASSE`, and a move of the folder then cut its display by
    characters ("ß" is "ss" by key, one character shorter): `/Docsa.txt`."""
    a = put_file(services, alice, "/Straße/a.txt", b"a")
    files.delete(services, alice, DeleteRequest(path="/Straße"))
    put_file(services, alice, "/STRASSE/b.txt", b"b")
    back = files.restore(services, alice, RestoreRequest(file_id=a.file_id))
    assert isinstance(back, FileEntry) and back.path_display == "/STRASSE/a.txt"
    files.move(services, alice, MoveRequest(from_path="/strasse", to_path="/Docs"))
    moved = files.metadata(services, alice, MetadataRequest(path="/Docs/a.txt"))
    assert isinstance(moved, FileEntry) and moved.path_display == "/Docs/a.txt"
    assert get_file(services, alice, "/Docs/a.txt") == b"a"


def test_a_move_cuts_a_childs_display_by_components(services: Services, alice: Principal) -> None:
    """Rows written before undelete respelled them keep the old spelling under the folder."""
    put_file(services, alice, "/STRASSE/b.txt", b"b")
    with services.db.transaction() as store:
        store.conn.execute(
            "UPDATE files SET path_display = '/Straße/b.txt' WHERE path_key = '/strasse/b.txt'"
        )
    files.move(services, alice, MoveRequest(from_path="/STRASSE", to_path="/Docs"))
    moved = files.metadata(services, alice, MetadataRequest(path="/Docs/b.txt"))
    assert isinstance(moved, FileEntry) and moved.path_display == "/Docs/b.txt"


def test_revisions_and_restore(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/r", b"one")
    put_file(services, alice, "/r", b"two", parent_rev=1)
    history = files.revisions(services, alice, RevisionsRequest(path="/r"))
    assert [e.rev for e in history.entries] == [2, 1] and not history.is_deleted
    restored = files.restore(services, alice, RestoreRequest(path="/r", rev=1))
    assert isinstance(restored, FileEntry) and restored.rev == 3
    assert get_file(services, alice, "/r") == b"one"
    with pytest.raises(NotFound):
        files.restore(services, alice, RestoreRequest(path="/r", rev=99))


def test_delete_trash_undelete(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/d/x", b"x")
    put_file(services, alice, "/d/sub/y", b"y")
    put_file(services, alice, "/keep", b"k", parent_rev=None)
    deleted = files.delete(services, alice, DeleteRequest(path="/d"))
    assert isinstance(deleted, FolderEntry)
    assert isinstance(
        files.metadata(services, alice, MetadataRequest(path="/d/x", include_deleted=True)),
        DeletedEntry,
    )
    with pytest.raises(NotFound):
        files.metadata(services, alice, MetadataRequest(path="/d/x"))
    trash = files.trash_list(services, alice, TrashListRequest())
    assert {e.path_display for e in trash.entries} == {"/d", "/d/x", "/d/sub", "/d/sub/y"}
    files.restore(services, alice, RestoreRequest(path="/d"))
    assert get_file(services, alice, "/d/sub/y") == b"y"
    assert files.trash_list(services, alice, TrashListRequest()).entries == []


def test_a_file_in_the_trash_is_served_only_when_asked_for(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """`tessera get` looks at a deleted file, or any version of it, without an undelete
    (which puts it back on every device); a sync's download never asks for it, so a file
    deleted since its listing is still a 404 there."""
    first = put_file(services, alice, "/old/notes.txt", b"first words")
    put_file(services, alice, "/old/notes.txt", b"last words", parent_rev=1)
    files.delete(services, alice, DeleteRequest(path="/old"))
    for path, file_id in (("/old/notes.txt", None), (None, first.file_id)):
        with pytest.raises(NotFound):
            files.download(services, alice, DownloadRequest(path=path, file_id=file_id))
        trashed = partial(get_file, services, alice, path, file_id=file_id, include_deleted=True)
        assert trashed() == b"last words"
        assert trashed(rev=1) == b"first words"
    # a live file at the path wins; the deleted one is still had by its id
    put_file(services, alice, "/old/notes.txt", b"new file", parent_rev=None)
    assert get_file(services, alice, "/old/notes.txt", include_deleted=True) == b"new file"
    assert get_file(services, alice, file_id=first.file_id, include_deleted=True) == b"last words"
    # nor does it open another user's trash
    with pytest.raises(NotFound):
        files.download(services, bob, DownloadRequest(file_id=first.file_id, include_deleted=True))


def test_an_undeleted_folder_brings_back_only_what_was_deleted_with_it(
    services: Services, alice: Principal
) -> None:
    put_file(services, alice, "/d/before", b"b")
    files.delete(services, alice, DeleteRequest(path="/d/before"))
    put_file(services, alice, "/d/x", b"x")
    put_file(services, alice, "/d/sub/y", b"y")
    files.delete(services, alice, DeleteRequest(path="/d"))
    files.restore(services, alice, RestoreRequest(path="/d"))
    assert get_file(services, alice, "/d/x") == b"x"
    assert get_file(services, alice, "/d/sub/y") == b"y"
    trash = files.trash_list(services, alice, TrashListRequest()).entries
    assert [t.path_display for t in trash] == ["/d/before"]


def _trash_paths(services: Services, principal: Principal) -> list[str]:
    trash = files.trash_list(services, principal, TrashListRequest()).entries
    return sorted(t.path_display for t in trash)


def _trashed_id(services: Services, principal: Principal, display: str) -> str:
    trash = files.trash_list(services, principal, TrashListRequest()).entries
    (entry,) = [t for t in trash if t.path_display == display]
    return entry.file_id


def test_a_folder_undeleted_where_a_folder_is_again_merges_into_it(
    services: Services, alice: Principal
) -> None:
    """A file undeleted out of a deleted folder brings a new folder at its path. The old one
    was then refused as "taken", its other entries had no way back but one undelete each,
    and `undelete PATH` named the live folder ("it is not deleted")."""
    a = put_file(services, alice, "/Docs/a.txt", b"a")
    put_file(services, alice, "/Docs/b.txt", b"b")
    put_file(services, alice, "/Docs/sub/c.txt", b"c")
    files.delete(services, alice, DeleteRequest(path="/Docs"))
    cursor = listing.list_folder(services, alice, "", True, None).cursor
    files.restore(services, alice, RestoreRequest(file_id=a.file_id))
    live = files.metadata(services, alice, MetadataRequest(path="/Docs"))
    assert _trash_paths(services, alice) == ["/Docs", "/Docs/b.txt", "/Docs/sub", "/Docs/sub/c.txt"]

    back = files.restore(services, alice, RestoreRequest(path="/docs"))
    assert back == live  # the folder at the path stays the one that is there
    assert get_file(services, alice, "/Docs/b.txt") == b"b"
    assert get_file(services, alice, "/Docs/sub/c.txt") == b"c"
    assert _trash_paths(services, alice) == []
    changes = listing.list_folder_continue(services, alice, cursor, None)
    assert [(e.tag, e.path_display) for e in changes.entries] == [
        ("folder", "/Docs"),
        ("file", "/Docs/a.txt"),
        ("file", "/Docs/b.txt"),
        ("folder", "/Docs/sub"),
        ("file", "/Docs/sub/c.txt"),
    ]
    with pytest.raises(Unprocessable, match="not deleted"):  # nothing left to bring back
        files.restore(services, alice, RestoreRequest(path="/Docs"))


def test_a_merged_folder_leaves_in_the_trash_what_the_live_folder_holds_the_place_of(
    services: Services, alice: Principal
) -> None:
    """Into a live folder made since (and spelled otherwise), an entry comes back only where
    nothing holds its path, nor its folder's path: a live file wins, and an entry whose
    folder is a file now would lie under a file."""
    put_file(services, alice, "/Straße/same.txt", b"deleted")
    put_file(services, alice, "/Straße/other.txt", b"o")
    put_file(services, alice, "/Straße/Sub/inner.txt", b"i")
    put_file(services, alice, "/Straße/Deep/Er/x.txt", b"x")
    files.delete(services, alice, DeleteRequest(path="/Straße"))
    put_file(services, alice, "/STRASSE/same.txt", b"live", parent_rev=None)
    put_file(services, alice, "/STRASSE/sub", b"a file now", parent_rev=None)
    files.create_folder(services, alice, "/STRASSE/DEEP/ER")
    old = _trashed_id(services, alice, "/Straße")
    back = files.restore(services, alice, RestoreRequest(file_id=old))
    assert isinstance(back, FolderEntry) and back.path_display == "/STRASSE"
    assert get_file(services, alice, "/strasse/other.txt") == b"o"
    other = files.metadata(services, alice, MetadataRequest(path="/strasse/other.txt"))
    assert isinstance(other, FileEntry) and other.path_display == "/STRASSE/other.txt"
    deep = files.metadata(services, alice, MetadataRequest(path="/strasse/deep/er/x.txt"))
    assert isinstance(deep, FileEntry) and deep.path_display == "/STRASSE/DEEP/ER/x.txt"
    assert get_file(services, alice, "/STRASSE/same.txt") == b"live"
    assert get_file(services, alice, "/STRASSE/sub") == b"a file now"
    assert _trash_paths(services, alice) == [
        "/Straße/Sub",
        "/Straße/Sub/inner.txt",
        "/Straße/same.txt",
    ]


def test_nothing_merged_back_lands_under_a_shared_folder_mounted_since(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """`/Work` deleted with `Team/plan.txt`, `/Work/Team` made again and shared: the merge
    brought the old `Team` and its file back in alice's own folders, under the mount (an
    undelete of the file alone is refused). They stay in the trash."""
    old = put_file(services, alice, "/Work/Team/plan.txt", b"alice's private old plan")
    put_file(services, alice, "/Work/notes.txt", b"notes")
    files.delete(services, alice, DeleteRequest(path="/Work"))
    put_file(services, alice, "/Work/Team/shared.txt", b"for bob")
    sharing.account(services, bob)  # (signed in once)
    share = ShareRequest(path="/Work/Team", email=bob.email, access="editor")
    sharing.share(services, alice, share)
    with pytest.raises(Conflict, match="shared folder is mounted"):
        files.restore(services, alice, RestoreRequest(file_id=old.file_id))
    files.restore(services, alice, RestoreRequest(path="/Work"))
    assert get_file(services, alice, "/Work/notes.txt") == b"notes"
    page = listing.list_folder(services, alice, "/", True, None)
    assert sorted((e.tag, e.path_display) for e in page.entries) == [
        ("file", "/Work/Team/shared.txt"),
        ("file", "/Work/notes.txt"),
        ("folder", "/Work"),
        ("folder", "/Work/Team"),
    ]
    assert _trash_paths(services, alice) == ["/Work/Team", "/Work/Team/plan.txt"]


def test_a_merge_that_brings_nothing_back_answers_with_the_live_folder(
    services: Services, alice: Principal
) -> None:
    """An empty folder deleted and made again: its merge brings nothing back, and it wrote an
    empty journal (a 500: the outbox's key taken twice)."""
    files.create_folder(services, alice, "/E")
    files.delete(services, alice, DeleteRequest(path="/E"))
    live = files.create_folder(services, alice, "/E")
    cursor = listing.list_folder(services, alice, "", True, None).cursor
    assert files.restore(services, alice, RestoreRequest(path="/E")) == live
    assert _trash_paths(services, alice) == []
    assert listing.list_folder_continue(services, alice, cursor, None).entries == []


def test_a_folder_is_never_merged_into_a_file(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/d/x", b"x")
    files.delete(services, alice, DeleteRequest(path="/d"))
    old = _trashed_id(services, alice, "/d")
    put_file(services, alice, "/d", b"a file", parent_rev=None)
    with pytest.raises(Conflict, match="is taken"):
        files.restore(services, alice, RestoreRequest(file_id=old))
    with pytest.raises(Unprocessable, match="not deleted"):
        files.restore(services, alice, RestoreRequest(path="/d"))
    assert _trash_paths(services, alice) == ["/d", "/d/x"]


def test_a_folder_delete_if_empty_takes_nothing_along(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/full/x", b"x")
    files.create_folder(services, alice, "/empty")
    with pytest.raises(Conflict, match="not empty"):
        files.delete(services, alice, DeleteRequest(path="/full", if_empty=True))
    assert get_file(services, alice, "/full/x") == b"x"
    deleted = files.delete(services, alice, DeleteRequest(path="/empty", if_empty=True))
    assert isinstance(deleted, FolderEntry)
    trash = files.trash_list(services, alice, TrashListRequest()).entries
    assert [t.path_display for t in trash] == ["/empty"]


def test_a_folder_delete_if_empty_of_what_is_a_file_now_is_409(
    services: Services, alice: Principal
) -> None:
    """A device deleted the empty folder `d` it saw; another had replaced it with a file
    `d` meanwhile: `if_empty` was checked of folders only, so the file went to the trash,
    and from every device, unasked."""
    put_file(services, alice, "/d", b"another device's file")
    with pytest.raises(Conflict, match="is a file now"):
        files.delete(services, alice, DeleteRequest(path="/d", if_empty=True))
    assert get_file(services, alice, "/d") == b"another device's file"


# `ẞ` (3 UTF-8 bytes) and `ss` (2) share a key: a name spelled one way can land in a folder
# spelled the other, and an entry is stored spelled as the folders above it are.
_WIDE, _NARROW = "\u1e9e" * 85, "ss" * 85  # 255 and 170 bytes


def test_an_entry_is_refused_when_its_folders_spelling_makes_it_too_long(
    services: Services, alice: Principal
) -> None:
    """The request's path fit, but stored under the folders' longer spelling it did not:
    it became a path no later request could name."""
    wide = "/" + "/".join([_WIDE] * 8)  # 2048 bytes, the longest a stored path may be
    files.create_folder(services, alice, wide)
    narrow = "/" + "/".join([_NARROW] * 8)  # the same folders, 1368 bytes
    with pytest.raises(Unprocessable, match="spelled as the folders above it"):
        put_file(services, alice, narrow + "/n.txt", b"would be stored 2054 bytes long")
    with pytest.raises(Unprocessable, match="spelled as the folders above it"):
        files.create_folder(services, alice, narrow + "/sub")
    put_file(services, alice, "/moving/n.txt", b"n")
    # the folder fits there (1792 + 251 bytes as stored), its file (6 more) does not
    to = narrow[: -len(_NARROW) - 1] + "/" + "m" * 250
    with pytest.raises(Unprocessable, match="would be longer than 2048 bytes"):
        files.move(services, alice, MoveRequest(from_path="/moving", to_path=to))
    assert get_file(services, alice, "/moving/n.txt") == b"n"


def test_an_undelete_under_a_longer_spelling_that_would_not_fit_is_refused(
    services: Services, alice: Principal
) -> None:
    narrow = "/" + "/".join([_NARROW] * 8)
    put_file(services, alice, narrow + "/" + "n" * 250, b"deep")  # 1619 bytes
    files.delete(services, alice, DeleteRequest(path="/" + _NARROW))
    files.create_folder(services, alice, "/" + "/".join([_WIDE] * 7))
    (deleted,) = [
        t
        for t in files.trash_list(services, alice, TrashListRequest()).entries
        if t.path_display == narrow
    ]
    # back under the wide folders, its file would be stored 2214 bytes long
    with pytest.raises(Unprocessable, match="spelled as the folders above it"):
        files.restore(services, alice, RestoreRequest(file_id=deleted.file_id))
    trash = files.trash_list(services, alice, TrashListRequest()).entries
    assert deleted.file_id in {t.file_id for t in trash}  # still there, nothing half-restored


def test_a_delete_guarded_for_a_file_never_takes_what_replaced_it(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """A device deleting the file it synced sends its rev and id. When the path has become
    a folder since, or a shared folder's mount point, the guard was ignored: the folder
    and all in it went to the trash (or the member left the share), reported as done."""
    old = put_file(services, alice, "/Report", b"the file a device synced")
    files.delete(services, alice, DeleteRequest(path="/Report"))
    put_file(services, alice, "/Report/inside.txt", b"made since")
    stale = {"parent_rev": old.rev, "parent_file_id": old.file_id}
    for guard in (stale, {"parent_file_id": old.file_id}, {"parent_rev": old.rev}):
        with pytest.raises(Conflict, match="is a folder now"):
            files.delete(services, alice, DeleteRequest(path="/Report", **guard))
    assert get_file(services, alice, "/Report/inside.txt") == b"made since"

    mine = put_file(services, bob, "/Team", b"bob's file")
    # moved by another of his devices (deleted, it would keep the share off its path)
    files.move(services, bob, MoveRequest(from_path="/Team", to_path="/Old"))
    put_file(services, alice, "/Team/plan.txt", b"plan")
    assert share_with(services, alice, "/Team", bob, "editor").path_display == "/Team"
    with pytest.raises(Conflict, match="is a folder now"):
        files.delete(
            services,
            bob,
            DeleteRequest(path="/Team", parent_rev=mine.rev, parent_file_id=mine.file_id),
        )
    assert [s.path_display for s in sharing.shares(services, bob).shares] == ["/Team"]


def test_a_delete_guarded_by_file_id_alone_checks_it(services: Services, alice: Principal) -> None:
    first = put_file(services, alice, "/f", b"1")
    files.delete(services, alice, DeleteRequest(path="/f"))
    second = put_file(services, alice, "/f", b"another file at the same path")
    with pytest.raises(Conflict, match="not another file"):
        files.delete(services, alice, DeleteRequest(path="/f", parent_file_id=first.file_id))
    files.delete(services, alice, DeleteRequest(path="/f", parent_file_id=second.file_id))
    assert files.revisions(services, alice, RevisionsRequest(file_id=second.file_id)).is_deleted


def test_delete_with_stale_parent_rev_and_undelete_of_file(
    services: Services, alice: Principal
) -> None:
    e = put_file(services, alice, "/f", b"1")
    put_file(services, alice, "/f", b"2", parent_rev=1)
    with pytest.raises(Conflict):
        files.delete(services, alice, DeleteRequest(path="/f", parent_rev=1))
    files.delete(services, alice, DeleteRequest(path="/f", parent_rev=2))
    history = files.revisions(services, alice, RevisionsRequest(file_id=e.file_id))
    assert history.is_deleted
    # a new file may take the path; undeleting the old one then conflicts
    put_file(services, alice, "/f", b"new")
    with pytest.raises(Conflict):
        files.restore(services, alice, RestoreRequest(file_id=e.file_id))
    files.delete(services, alice, DeleteRequest(path="/f"))
    back = files.restore(services, alice, RestoreRequest(file_id=e.file_id))
    assert isinstance(back, FileEntry) and back.file_id == e.file_id
    assert get_file(services, alice, "/f") == b"2"


def test_a_move_of_another_entry_than_the_one_seen_is_409(
    services: Services, alice: Principal
) -> None:
    """A device renames the doc.txt it saw; another deleted that one and put a new doc.txt
    there meanwhile: the move took the new file, the device recorded it under its own
    content, and the two devices diverged without a word (an edit then overwrote the
    other's work). With the id it saw, the move is refused and replanned."""
    seen = put_file(services, alice, "/doc.txt", b"v1")
    files.delete(services, alice, DeleteRequest(path="/doc.txt"))
    other = put_file(services, alice, "/doc.txt", b"another device's doc")
    stale = MoveRequest(from_path="/doc.txt", to_path="/doc2.txt", parent_file_id=seen.file_id)
    with pytest.raises(Conflict, match="another entry now"):
        files.move(services, alice, stale)
    assert get_file(services, alice, "/doc.txt") == b"another device's doc"
    right = MoveRequest(from_path="/doc.txt", to_path="/doc2.txt", parent_file_id=other.file_id)
    assert files.move(services, alice, right).path_display == "/doc2.txt"


def test_move_keeps_id_and_history(services: Services, alice: Principal) -> None:
    e = put_file(services, alice, "/a/one", b"1")
    put_file(services, alice, "/a/one", b"2", parent_rev=1)
    moved = files.move(services, alice, MoveRequest(from_path="/a", to_path="/b/renamed"))
    assert isinstance(moved, FolderEntry) and moved.path_display == "/b/renamed"
    meta = files.metadata(services, alice, MetadataRequest(file_id=e.file_id))
    assert isinstance(meta, FileEntry) and meta.path_display == "/b/renamed/one"
    assert [
        v.rev
        for v in files.revisions(services, alice, RevisionsRequest(path="/b/renamed/one")).entries
    ] == [2, 1]
    case_only = files.move(
        services, alice, MoveRequest(from_path="/b/renamed/one", to_path="/b/renamed/ONE")
    )
    assert case_only.path_display == "/b/renamed/ONE"
    put_file(services, alice, "/taken", b"t")
    with pytest.raises(Conflict):
        files.move(services, alice, MoveRequest(from_path="/taken", to_path="/b/renamed/one"))
    with pytest.raises(Unprocessable, match="into itself"):
        files.move(services, alice, MoveRequest(from_path="/b", to_path="/b/renamed/x"))
    with pytest.raises(NotFound):
        files.move(services, alice, MoveRequest(from_path="/nope", to_path="/x"))


def test_a_folder_renamed_in_case_only(services: Services, alice: Principal) -> None:
    """Same key, new spelling: the folder and what is in it are shown with the new name."""
    e = put_file(services, alice, "/docs/sub/a", b"a")
    renamed = files.move(services, alice, MoveRequest(from_path="/docs", to_path="/Docs"))
    assert isinstance(renamed, FolderEntry) and renamed.path_display == "/Docs"
    meta = files.metadata(services, alice, MetadataRequest(file_id=e.file_id))
    assert meta.path_display == "/Docs/sub/a"
    assert files.metadata(services, alice, MetadataRequest(path="/docs")).path_display == "/Docs"


def test_create_folder(services: Services, alice: Principal) -> None:
    made = files.create_folder(services, alice, "/New/Deep")
    assert made.path_display == "/New/Deep"
    with pytest.raises(Conflict):
        files.create_folder(services, alice, "/new/deep")
    put_file(services, alice, "/file", b"f")
    with pytest.raises(Conflict):
        files.create_folder(services, alice, "/file/sub")


def _promote_without_repoint(services: Services, data: bytes) -> str:
    """What dedup-verify has done when a commit meets its result mid-way: the copy is
    verified and promoted, the staged object is gone (versions not yet repointed here)."""
    bid = block_id(data)
    bs = services.block_store
    staged = next(k for k in bs.list_keys("staging/") if k.endswith(bid[3:]))
    bs.copy(staged, "blocks/" + bid[3:])
    bs.delete(staged)
    with services.db.transaction() as store:
        store.conn.execute(
            "UPDATE upload_blocks SET state = 'promoted' WHERE staged_key = %s", (staged,)
        )
        set_block_state(store, [bid], "live")
    return staged


def test_reusing_a_block_whose_copy_was_promoted_points_at_the_canonical_block(
    services: Services, alice: Principal
) -> None:
    data = b"promoted meanwhile"
    put_file(services, alice, "/v1", data)
    _promote_without_repoint(services, data)
    commits.commit(services, alice, commit_request("/v2", [data], None))
    with services.db.transaction() as store:
        meta = files.metadata(services, alice, MetadataRequest(path="/v2"))
        assert isinstance(meta, FileEntry)
        row = store.file_by_path(meta.ns_id, "/v2")
        assert row is not None
        assert [b.staged_key for b in store.version_blocks(row.ns_id, row.file_id, 1)] == [None]
    assert get_file(services, alice, "/v2") == data
    assert get_file(services, alice, "/v1") == data  # a verified copy gives way too


def test_reusing_a_block_whose_copy_is_gone_needs_an_upload(
    services: Services, alice: Principal
) -> None:
    data = b"collected meanwhile"
    put_file(services, alice, "/v1", data)
    with services.db.transaction() as store:
        store.conn.execute("DELETE FROM upload_blocks")
    with pytest.raises(Unprocessable, match="never uploaded"):
        commits.commit(services, alice, commit_request("/v2", [data], None))


def race_held(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    held_at: str,
    first: Callable[[], object],
    second: Callable[[], object],
    *,
    on: type = Store,
    second_waits: bool = True,
) -> tuple[object, object]:
    """Run `second` while `first` holds its locks: `first` stops once its call of
    `<on>.<held_at>` has returned, `second` starts and runs until it waits for a lock, then
    both finish. What each returned or raised. With `second_waits` False, `second` runs to
    its end first (`first` holds nothing it needs yet: its transaction is only begun)."""
    original = getattr(on, held_at)
    holding, release = threading.Event(), threading.Event()
    outcomes: dict[str, object] = {}

    def held(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)
        if threading.current_thread().name == "first":
            holding.set()
            release.wait(60)
        return result

    def run(name: str, call: Callable[[], object]) -> threading.Thread:
        def outcome() -> None:
            try:
                outcomes[name] = call()
            except Exception as exc:
                outcomes[name] = exc

        thread = threading.Thread(target=outcome, name=name)
        thread.start()
        return thread

    monkeypatch.setattr(on, held_at, held)
    threads = [run("first", first)]
    assert holding.wait(10)
    threads.append(run("second", second))
    if second_waits:
        # until `second` waits for a lock `first` holds: seconds on a loaded 2-core machine
        # (5 s was once too few while the suite shared it), and the passing case pays none
        wait_for_a_lock_waiter(database_url, timeout=30)
    else:
        threads[-1].join(60)
    release.set()
    for thread in threads:
        thread.join(60)
    return outcomes["first"], outcomes["second"]


@pytest.mark.parametrize(
    "change",
    [
        lambda svc, who: files.move(svc, who, MoveRequest(from_path="/f", to_path="/g")),
        lambda svc, who: files.delete(svc, who, DeleteRequest(path="/f")),
        lambda svc, who: files.restore(svc, who, RestoreRequest(path="/f", rev=1)),
    ],
    ids=["move", "delete", "restore"],
)
def test_a_change_waiting_for_a_delete_of_its_entry_is_409(
    services: Services,
    alice: Principal,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[Services, Principal], object],
) -> None:
    """The entry is located before its lock is taken: when a delete held the lock
    meanwhile, the change answers 409 instead of moving, deleting or restoring the
    deleted entry."""
    e = put_file(services, alice, "/f", b"f")
    deleted, waited = race_held(
        monkeypatch,
        database_url,
        "append_journal",
        lambda: files.delete(services, alice, DeleteRequest(path="/f")),
        lambda: change(services, alice),
    )
    assert isinstance(deleted, FileEntry)
    assert isinstance(waited, Conflict) and "changed during the request" in str(waited)
    history = files.revisions(services, alice, RevisionsRequest(file_id=e.file_id))
    assert history.is_deleted and [v.rev for v in history.entries] == [1]
    trash = files.trash_list(services, alice, TrashListRequest()).entries
    assert [t.path_display for t in trash] == ["/f"]


def test_a_folder_delete_if_empty_waiting_for_a_commit_into_it_is_409(
    services: Services, alice: Principal, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client saw the folder empty; another device's file lands in it while the delete
    waits for the lock. The file must not go to the trash with the folder."""
    files.create_folder(services, alice, "/proj")
    committed, deleted = race_held(
        monkeypatch,
        database_url,
        "write_version",
        lambda: put_file(services, alice, "/proj/new", b"B's new work"),
        lambda: files.delete(services, alice, DeleteRequest(path="/proj", if_empty=True)),
    )
    assert isinstance(committed, FileEntry)
    assert isinstance(deleted, Conflict) and "not empty" in str(deleted)
    assert get_file(services, alice, "/proj/new") == b"B's new work"
    assert files.trash_list(services, alice, TrashListRequest()).entries == []


def test_an_undelete_racing_the_trash_purge_journals_only_what_it_restored(
    services: Services, alice: Principal, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc purges a child of the folder between the undelete reading the trash and making it
    live: the journal names only the entries that came back. (It named every child read, so
    clients were told of a file that no longer exists.)"""
    put_file(services, alice, "/d/x", b"x")
    put_file(services, alice, "/d/y", b"y")
    files.delete(services, alice, DeleteRequest(path="/d"))
    cursor = listing.list_folder(services, alice, "", True, None).cursor
    undelete = Store.undelete

    def purged_meanwhile(self: Store, ns_id: int, file_ids: list[str], user_id: str) -> object:
        with psycopg.connect(database_url, autocommit=True) as gc, gc.transaction():
            row = gc.execute("SELECT file_id FROM files WHERE path_key = '/d/y'").fetchone()
            assert row is not None
            for table in ("version_blocks", "file_versions", "files"):
                gc.execute(f"DELETE FROM {table} WHERE file_id = %s", (row[0],))
        return undelete(self, ns_id, file_ids, user_id)

    monkeypatch.setattr(Store, "undelete", purged_meanwhile)
    files.restore(services, alice, RestoreRequest(path="/d"))
    changes = listing.list_folder_continue(services, alice, cursor, None)
    assert [(e.tag, e.path_display) for e in changes.entries] == [
        ("folder", "/d"),
        ("file", "/d/x"),
    ]
    with pytest.raises(NotFound):
        files.metadata(services, alice, MetadataRequest(path="/d/y"))


_DISGUISED = "/invoice\u202efdp.exe"  # reads as "invoiceexe.pdf"


def test_no_write_names_what_disguises_how_a_name_reads(
    services: Services, alice: Principal
) -> None:
    with pytest.raises(InvalidPath, match="U\\+202E"):
        put_file(services, alice, _DISGUISED, b"x")
    with pytest.raises(InvalidPath, match="U\\+202E"):
        files.create_folder(services, alice, _DISGUISED)
    put_file(services, alice, "/plain.pdf", b"p")
    with pytest.raises(InvalidPath, match="U\\+202E"):
        files.move(services, alice, MoveRequest(from_path="/plain.pdf", to_path=_DISGUISED))
    assert get_file(services, alice, "/plain.pdf") == b"p"


def test_a_name_stored_before_the_rule_can_be_renamed_and_deleted(
    services: Services, alice: Principal
) -> None:
    root = files.metadata(services, alice, MetadataRequest(path="/"))
    assert isinstance(root, FolderEntry)
    with services.db.transaction() as store:
        assert store.insert_file(
            root.ns_id, "id:old", paths.path_key(_DISGUISED), "/", _DISGUISED, "folder"
        )
    renamed = files.move(services, alice, MoveRequest(from_path=_DISGUISED, to_path="/invoice"))
    assert renamed.path_display == "/invoice"
    files.delete(services, alice, DeleteRequest(path="/invoice"))
