"""The planner's rules where the property tests do not reach: a server whose history goes
back, and files moved into a path that changed kind."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from tessera_client.paths import path_key
from tessera_client.planner import Entry, EntryKind, OpKind, plan

from .test_planner_properties import Model

DAY = date(2026, 11, 27)


def _tree(*entries: Entry) -> dict[str, Entry]:
    return {path_key(e.path): e for e in entries}


def test_an_older_rev_of_the_synced_file_does_not_overwrite_it() -> None:
    """The server lists rev 3 of a file this device synced at rev 5 (restored from a
    backup, or a listing naming it twice): the local rev 5 may be nowhere else now. It
    was overwritten with the download of rev 3; now it is kept as a conflicted copy."""
    synced = Entry("notes.txt", content_hash="h5", file_id="f1", rev=5, inode=9)
    older = Entry("notes.txt", content_hash="h3", file_id="f1", rev=3)
    ops = plan(_tree(synced), _tree(older), _tree(synced), device="d", day=DAY).ops
    assert [(op.kind, op.path) for op in ops] == [(OpKind.CONFLICT, "notes.txt")]
    assert ops[0].copy_path == f"notes (d's conflicted copy {DAY}).txt"


def test_an_older_rev_with_the_same_content_is_recorded() -> None:
    synced = Entry("notes.txt", content_hash="h5", file_id="f1", rev=5, inode=9)
    older = Entry("notes.txt", content_hash="h5", file_id="f1", rev=3)
    ops = plan(_tree(synced), _tree(older), _tree(synced), device="d", day=DAY).ops
    assert [(op.kind, op.remote) for op in ops] == [(OpKind.RECORD, older)]


def test_a_newer_rev_still_downloads() -> None:
    synced = Entry("notes.txt", content_hash="h5", file_id="f1", rev=5, inode=9)
    newer = Entry("notes.txt", content_hash="h6", file_id="f1", rev=6)
    ops = plan(_tree(synced), _tree(newer), _tree(synced), device="d", day=DAY).ops
    assert [(op.kind, op.remote) for op in ops] == [(OpKind.DOWNLOAD, newer)]


def test_a_rename_here_of_a_file_edited_elsewhere_moves_the_synced_rev_then_downloads() -> None:
    """The move names the rev this device synced, which the executor records for the
    moved file (its content is what the disk holds): recorded as the newer rev, the old
    text would have gone up over the edit. The edit then comes down where the file went."""
    synced = Entry("doc.txt", content_hash="h1", size=2, file_id="f1", rev=1, inode=7)
    renamed = replace(synced, path="doc2.txt")
    edited = Entry("doc.txt", content_hash="h2", size=3, file_id="f1", rev=2)
    ops = plan(_tree(renamed), _tree(edited), _tree(synced), device="d", day=DAY).ops
    assert [(op.kind, op.src, op.path) for op in ops] == [
        (OpKind.MOVE_REMOTE, "doc.txt", "doc2.txt"),
        (OpKind.DOWNLOAD, "", "doc2.txt"),
    ]
    moved, download = ops
    assert moved.remote is not None and download.remote is not None
    assert (moved.remote.file_id, moved.remote.rev, moved.remote.content_hash) == ("f1", 1, "h1")
    assert (download.remote.rev, download.remote.content_hash) == (2, "h2")


def test_a_copy_kept_as_a_file_edited_elsewhere_is_deleted_is_no_rename() -> None:
    """Finder's Duplicate then Trash: the copy holds the synced content under another
    inode. Taken for a rename of the file another device edited, the edit was renamed on
    every device and came down over the copy."""
    synced = Entry("doc.txt", content_hash="h1", size=2, file_id="f1", rev=1, inode=7)
    copy = Entry("doc copy.txt", content_hash="h1", size=2, inode=8)
    edited = Entry("doc.txt", content_hash="h2", size=3, file_id="f1", rev=2)
    ops = plan(_tree(copy), _tree(edited), _tree(synced), device="d", day=DAY).ops
    assert sorted((op.kind, op.path) for op in ops) == [
        (OpKind.DOWNLOAD, "doc.txt"),
        (OpKind.UPLOAD, "doc copy.txt"),
    ]


def test_an_edit_here_of_a_file_renamed_elsewhere_follows_it_and_goes_up() -> None:
    synced = Entry("doc.txt", content_hash="h1", file_id="f1", rev=1, inode=7)
    edited = replace(synced, content_hash="h2")
    renamed = Entry("doc2.txt", content_hash="h1", file_id="f1", rev=1)
    ops = plan(_tree(edited), _tree(renamed), _tree(synced), device="d", day=DAY).ops
    assert [(op.kind, op.src, op.path) for op in ops] == [
        (OpKind.MOVE_LOCAL, "doc.txt", "doc2.txt"),
        (OpKind.UPLOAD, "", "doc2.txt"),
    ]


def test_files_moved_into_a_file_made_a_folder_elsewhere_are_moved_not_deleted() -> None:
    """Another device replaced the file `notes` with a folder and moved a dozen files into
    it. This round deletes the old file only; the dozen wait, and the next round moves them
    (taken for deleted, they were deleted here, fetched again, and paused the sync as a
    mass delete)."""
    old = Entry("notes", content_hash="h0", file_id="f0", rev=1, inode=100)
    moved = [
        Entry(f"docs/{n}.txt", content_hash=f"h{n}", file_id=f"f{n}", rev=1, inode=100 + n)
        for n in range(1, 13)
    ]
    docs = Entry("docs", EntryKind.FOLDER, file_id="d1")
    base = _tree(old, docs, *moved)
    remote = _tree(
        docs,
        Entry("notes", EntryKind.FOLDER, file_id="d2"),
        *(replace(e, path="notes/" + e.path.removeprefix("docs/"), inode=0) for e in moved),
    )
    first = plan(base, remote, base, device="d", day=DAY)
    assert [(op.kind, op.path) for op in first.ops] == [(OpKind.DELETE_LOCAL, "notes")]
    after = _tree(docs, *moved)  # here and in the base, once the old file is gone
    second = plan(after, remote, after, device="d", day=DAY)
    kinds = [op.kind for op in second.ops]
    assert kinds == [OpKind.CREATE_FOLDER_LOCAL] + [OpKind.MOVE_LOCAL] * 12
    assert second.deletes == 0


def _converged(local: dict[str, Entry], remote: dict[str, Entry], base: dict[str, Entry]) -> Model:
    """The trees after rounds of planning and applying, once a plan is empty (at most 5)."""
    model = Model(local, remote, base)
    for _ in range(5):
        ops = plan(model.local, model.remote, model.base, device="d", day=DAY).ops
        if not ops:
            return model
        model.apply(ops)
    raise AssertionError(f"no convergence in 5 rounds: {ops}")


def test_two_folders_made_files_of_each_others_contents_converge() -> None:
    """Each clash held the file moved into the other's trimmed subtree, each waited for the
    other, and every plan was empty while the sides differed."""
    folder = EntryKind.FOLDER
    synced = _tree(
        Entry("a", folder, file_id="d:a"),
        Entry("a/x", content_hash="h1", file_id="f1", rev=1, inode=1),
        Entry("b", folder, file_id="d:b"),
        Entry("b/y", content_hash="h2", file_id="f2", rev=1, inode=2),
    )
    swapped = _tree(Entry("a", content_hash="h2", inode=2), Entry("b", content_hash="h1", inode=1))
    model = _converged(swapped, synced, synced)
    assert model.view(model.local) == model.view(model.remote) == model.view(swapped)


def test_two_clashes_of_one_content_converge() -> None:
    folder = EntryKind.FOLDER
    synced = _tree(
        Entry("a", content_hash="h0", file_id="f1", rev=1, inode=100),
        Entry("c", folder, file_id="d:c"),
        Entry("c/a", content_hash="h0", file_id="f2", rev=1, inode=101),
    )
    here = _tree(
        Entry("a", folder),
        Entry("a/a", content_hash="h0", inode=100),
        Entry("c", content_hash="h0", inode=101),
    )
    model = _converged(here, synced, synced)
    assert model.view(model.local) == model.view(model.remote) == model.view(here)


def test_the_same_rename_on_both_sides_records_the_move() -> None:
    """Both devices renamed the file alike: read as a new file beside a deleted one, an
    edit made since on the other device became a conflicted copy of the unchanged file."""
    synced = Entry("doc.txt", content_hash="h1", file_id="f1", rev=1, inode=7)
    here = Entry("doc2.txt", content_hash="h1", inode=8)  # (an editor's save: a new inode)
    there = Entry("doc2.txt", content_hash="h2", file_id="f1", rev=2)
    ops = plan(_tree(here), _tree(there), _tree(synced), device="d", day=DAY).ops
    assert [(op.kind, op.src, op.path) for op in ops] == [
        (OpKind.MOVE_RECORD, "doc.txt", "doc2.txt"),
        (OpKind.DOWNLOAD, "", "doc2.txt"),
    ]
    model = _converged(_tree(here), _tree(there), _tree(synced))
    assert model.view(model.local) == {path_key("doc2.txt"): ("file", "h2")}


def test_a_file_of_the_synced_inode_but_other_content_is_no_move_here() -> None:
    """ext4 gives a deleted file's inode number to the next file made: an unrelated file
    made where the server moved the synced one, on the inode alone, took it over (its
    content went up as the next rev). Both are kept."""
    synced = Entry("doc.txt", content_hash="h1", file_id="f1", rev=1, inode=7)
    here = Entry("doc2.txt", content_hash="h2", inode=7)
    there = Entry("doc2.txt", content_hash="h1", file_id="f1", rev=1)
    ops = plan(_tree(here), _tree(there), _tree(synced), device="d", day=DAY).ops
    assert sorted(op.kind for op in ops) == [OpKind.CONFLICT, OpKind.FORGET]


def test_a_move_made_but_not_recorded_takes_the_newer_rev_where_it_went() -> None:
    """A crash between a move and its record, and the server edited the file since: the
    file here is the synced one (same inode, same content), so the edit comes down over
    it. It became a conflicted copy of the older rev."""
    synced = Entry("doc.txt", content_hash="h1", file_id="f1", rev=1, inode=7)
    here = replace(synced, path="doc2.txt", file_id="", rev=0)
    newer = Entry("doc2.txt", content_hash="h2", file_id="f1", rev=2)
    ops = plan(_tree(here), _tree(newer), _tree(synced), device="d", day=DAY).ops
    assert [(op.kind, op.path) for op in ops] == [
        (OpKind.MOVE_RECORD, "doc2.txt"),
        (OpKind.DOWNLOAD, "doc2.txt"),
    ]
