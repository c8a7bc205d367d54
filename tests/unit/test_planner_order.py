"""The order of a plan's steps, where one step would get in another's way."""

from __future__ import annotations

from datetime import date

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
