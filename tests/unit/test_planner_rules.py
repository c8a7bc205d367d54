"""The planner's per-path rules where the property tests do not reach: a server whose
history goes back."""

from __future__ import annotations

from datetime import date

from tessera_client.paths import path_key
from tessera_client.planner import Entry, OpKind, plan

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
