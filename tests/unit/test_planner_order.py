"""The order of a plan's steps, where one step would get in another's way."""

from __future__ import annotations

from datetime import date

import pytest

from tessera_client.paths import path_key
from tessera_client.planner import Entry, EntryKind, OpKind, plan


def _tree(*entries: Entry) -> dict[str, Entry]:
    return {path_key(e.path): e for e in entries}


def test_a_respelled_folder_moves_before_a_folder_is_made_inside_it() -> None:
    """Made first, `Docs/sub` would put a second spelling beside `docs` on a case-sensitive
    disk, and the move of `docs` to `Docs` would find its name taken."""
    synced = Entry("docs/a.txt", content_hash="h1", file_id="f1", rev=1, inode=7)
    base = _tree(Entry("docs", EntryKind.FOLDER, file_id="d1"), synced)
    local = _tree(Entry("docs", EntryKind.FOLDER), synced)
    remote = _tree(
        Entry("Docs", EntryKind.FOLDER, file_id="d1"),
        Entry("Docs/a.txt", content_hash="h1", file_id="f1", rev=1),
        Entry("Docs/sub", EntryKind.FOLDER, file_id="d2"),
    )
    steps = [
        (op.kind, op.path)
        for op in plan(local, remote, base, device="b", day=date(2026, 11, 27)).ops
    ]
    assert steps == [
        (OpKind.MOVE_LOCAL, "Docs"),
        (OpKind.CREATE_FOLDER_LOCAL, "Docs/sub"),
    ]


def _respelled_docs(*remote_files: Entry) -> list[tuple[OpKind, str, str]]:
    """The steps for `docs` (holding the synced `docs/a.txt`) renamed `Docs` on the server,
    with what `remote_files` says happened to the file there."""
    synced = Entry("docs/a.txt", content_hash="h1", file_id="f1", rev=1, inode=7)
    base = _tree(Entry("docs", EntryKind.FOLDER, file_id="d1"), synced)
    local = _tree(Entry("docs", EntryKind.FOLDER), synced)
    remote = _tree(Entry("Docs", EntryKind.FOLDER, file_id="d1"), *remote_files)
    ops = plan(local, remote, base, device="b", day=date(2026, 11, 27)).ops
    return [(op.kind, op.src, op.path) for op in ops]


def test_a_file_moved_in_a_respelled_folder_is_moved_from_where_the_folder_went() -> None:
    """Planned before the folder's move, the file's move named its old spelling, gone
    by the time it ran on a case-sensitive disk."""
    moved = Entry("Docs/b.txt", content_hash="h1", file_id="f1", rev=1)
    assert _respelled_docs(moved) == [
        (OpKind.MOVE_LOCAL, "docs", "Docs"),
        (OpKind.MOVE_LOCAL, "Docs/a.txt", "Docs/b.txt"),
    ]


def test_a_file_changed_in_a_respelled_folder_is_fetched_where_the_folder_went() -> None:
    """At the old spelling, the download made `docs` again beside `Docs`."""
    edited = Entry("Docs/a.txt", content_hash="h2", file_id="f1", rev=2)
    assert _respelled_docs(edited) == [
        (OpKind.MOVE_LOCAL, "docs", "Docs"),
        (OpKind.DOWNLOAD, "", "Docs/a.txt"),
    ]


def test_a_file_renamed_in_case_in_a_folder_respelled_before_is_sent() -> None:
    """`docs` became `Docs` in an earlier round, which recorded the folder alone: its file's
    record still says `docs/a.txt`. Renamed `A.txt` here (or on the server), the file
    looked unlike its record on both sides and the rename was never sent."""
    base = _tree(
        Entry("Docs", EntryKind.FOLDER, file_id="d1"),
        Entry("docs/a.txt", content_hash="h1", file_id="f1", rev=1, inode=7),
    )
    folder = Entry("Docs", EntryKind.FOLDER, file_id="d1")
    synced = Entry("Docs/a.txt", content_hash="h1", file_id="f1", rev=1, inode=7)
    renamed = Entry("Docs/A.txt", content_hash="h1", file_id="f1", rev=1, inode=7)
    day = date(2026, 11, 28)
    here = plan(_tree(folder, renamed), _tree(folder, synced), base, device="b", day=day)
    assert [(op.kind, op.src, op.path) for op in here.ops] == [
        (OpKind.MOVE_REMOTE, "Docs/a.txt", "Docs/A.txt")
    ]
    there = plan(_tree(folder, synced), _tree(folder, renamed), base, device="b", day=day)
    assert [(op.kind, op.src, op.path) for op in there.ops] == [
        (OpKind.MOVE_LOCAL, "Docs/a.txt", "Docs/A.txt")
    ]


@pytest.mark.parametrize("synced", [None, "DOCS"], ids=["never synced", "both renamed"])
def test_one_folder_spelled_two_ways_takes_the_servers_spelling_first(synced: str | None) -> None:
    """`Docs` here, `docs` on the server, neither as synced: the local folder is renamed to
    the server's spelling before anything goes into it, and its file goes up under it."""
    base = {} if synced is None else _tree(Entry(synced, EntryKind.FOLDER, file_id="d1"))
    local = _tree(
        Entry("Docs", EntryKind.FOLDER), Entry("Docs/mine.txt", content_hash="h1", inode=7)
    )
    remote = _tree(
        Entry("docs", EntryKind.FOLDER, file_id="d1"),
        Entry("docs/theirs.txt", content_hash="h2", file_id="f2", rev=1),
    )
    ops = plan(local, remote, base, device="b", day=date(2026, 11, 28)).ops
    assert (ops[0].kind, ops[0].src, ops[0].path) == (OpKind.MOVE_LOCAL, "Docs", "docs")
    transfers = {(op.kind, op.path) for op in ops if op.kind != OpKind.RECORD}
    assert transfers == {
        (OpKind.MOVE_LOCAL, "docs"),
        (OpKind.UPLOAD, "docs/mine.txt"),
        (OpKind.DOWNLOAD, "docs/theirs.txt"),
    }


def test_a_record_under_a_folder_spelled_otherwise_is_stale_not_a_rename() -> None:
    """The record of `docs/a.txt` with no record of its folder (respelled `Docs` since):
    `Docs/A.txt` here against `Docs/a.txt` on the server is a rename made here, not one
    name spelled two ways with neither synced; it is not undone to the server's spelling."""
    base = _tree(Entry("docs/a.txt", content_hash="h1", file_id="f1", rev=1, inode=7))
    folder = Entry("Docs", EntryKind.FOLDER, file_id="d1")
    local = _tree(folder, Entry("Docs/A.txt", content_hash="h1", file_id="f1", rev=1, inode=7))
    remote = _tree(folder, Entry("Docs/a.txt", content_hash="h1", file_id="f1", rev=1))
    ops = plan(local, remote, base, device="b", day=date(2026, 11, 28)).ops
    assert not [op for op in ops if op.kind == OpKind.MOVE_LOCAL]
