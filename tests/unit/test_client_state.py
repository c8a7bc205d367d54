"""The state database: synced tree, remote mirror, cursor, pending work, conflicts; WAL; reopen."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from tessera_client.fs import DiskFullError
from tessera_client.planner import Entry, EntryKind
from tessera_client.reporting import SyncError
from tessera_client.state import StateDB


def test_base_tree_round_trips_and_survives_reopen(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    e = Entry("Docs/Ä.txt", EntryKind.FILE, "b3:aa", 5, "id:1", 3, 123, 77)
    db.put_base(e, ["b3:x", "b3:y"])
    db.put_base(Entry("Docs", EntryKind.FOLDER))
    db.set_meta("cursor", "c1")
    db.put_pending("upload", "docs/ä.txt", {"upload_id": "up_1", "sent": ["b3:x"]})
    db.close()

    db = StateDB(tmp_path / "state.db")
    tree = db.base_tree()
    assert tree["docs/ä.txt"] == e
    assert tree["docs"].kind == EntryKind.FOLDER
    assert db.base_blocks("DOCS/ä.TXT") == ["b3:x", "b3:y"]
    assert db.base_entry("DOCS/ä.TXT") == e and db.base_entry("docs/none.txt") is None
    assert db.cursor == "c1"
    assert db.get_pending("upload", "docs/ä.txt") == {"upload_id": "up_1", "sent": ["b3:x"]}
    assert db._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_recursive_deletes_touch_only_the_subtree(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    for p in ["a", "a/x", "a/b/y", "ab", "ab/z"]:
        db.put_base(Entry(p, EntryKind.FOLDER if "x" not in p else EntryKind.FILE))
        db.put_remote(Entry(p, EntryKind.FOLDER))
    db.delete_base("a", recursive=True)
    db.delete_remote("a")
    assert sorted(db.base_tree()) == ["ab", "ab/z"]
    assert sorted(db.remote_tree()) == ["ab", "ab/z"]


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    with pytest.raises(RuntimeError, match="boom"), db.transaction():  # and raised again
        db.set_meta("cursor", "half")
        raise RuntimeError("boom")
    assert db.cursor is None


def test_pending_and_conflicts(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    db.put_pending("upload", "k1", {"a": 1})
    db.put_pending("upload", "k2", {"a": 2})
    db.drop_pending("upload", "k1")
    assert [k for _, k, _ in db.list_pending("upload")] == ["k2"]
    db.add_conflict("a (dev's conflicted copy 2026-11-26).txt", "a.txt", "why", local_only=True)
    [c] = db.conflicts()
    assert c.local_only and c.original == "a.txt"
    db.drop_conflict(c.path)
    assert db.conflicts() == []
    db.set_meta("cursor", None)
    assert db.cursor is None


def test_a_stat_recorded_right_after_a_write_is_not_trusted_later(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    now = time.time_ns()
    db.put_base(Entry("fresh.txt", EntryKind.FILE, "b3:aa", 5, "id:1", 1, now - 10**8, 7))
    db.put_base(Entry("old.txt", EntryKind.FILE, "b3:bb", 5, "id:2", 1, now - 60 * 10**9, 8))
    tree = db.base_tree()
    assert tree["fresh.txt"].mtime_ns == 0  # hashed again next scan
    assert tree["old.txt"].mtime_ns == now - 60 * 10**9


def test_a_stat_is_judged_against_when_the_content_was_read_not_when_it_is_recorded(
    tmp_path: Path,
) -> None:
    # A file hashed 1 s after its mtime and recorded after a slow upload: a same-size save
    # meanwhile could have kept that mtime, so the stat must not vouch for the hash.
    db = StateDB(tmp_path / "state.db")
    mtime = time.time_ns() - 3600 * 10**9
    entry = Entry("slow.txt", EntryKind.FILE, "b3:aa", 5, "id:1", 1, mtime, 7)
    db.put_base(entry, seen_ns=mtime + 10**9)
    assert db.base_tree()["slow.txt"].mtime_ns == 0
    db.put_base(entry, seen_ns=mtime + 3 * 10**9)
    assert db.base_tree()["slow.txt"].mtime_ns == mtime


def test_a_full_disk_is_a_disk_full_error_and_leaves_no_transaction_open(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    db.put_base(Entry("kept.txt", EntryKind.FILE, "b3:aa", 1))
    # SQLite's own page limit fails a write exactly as a full disk does (SQLITE_FULL)
    pages = db._db.execute("PRAGMA page_count").fetchone()[0]
    db._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(DiskFullError, match="state database") as full, db.transaction():
        for i in range(1000):
            db.put_base(Entry(f"f{i}.txt", EntryKind.FILE, "b3:bb", 1), ["b3:x" * 50])
    assert full.value.errno == errno.ENOSPC
    assert not db._db.in_transaction  # the next transaction is its own, not a joined one
    db._db.execute("PRAGMA max_page_count = 1000000")
    db.put_base(Entry("after.txt", EntryKind.FILE, "b3:cc", 1))
    db.close()
    tree = StateDB(tmp_path / "s.db").base_tree()
    assert sorted(tree) == ["after.txt", "kept.txt"]  # all of the failed transaction, or none


def test_a_state_database_that_cannot_be_opened_says_why_and_what_to_do(tmp_path: Path) -> None:
    """A home deeper than SQLite's 512-byte path limit (or gone) failed with a traceback."""
    deep = tmp_path.joinpath(*["d" * 200] * 3)
    deep.mkdir(parents=True)
    for path in (deep / "state.db", tmp_path / "gone" / "state.db"):
        with pytest.raises(SyncError, match="cannot open this device's state database"):
            StateDB(path)


def test_the_blocks_sent_go_with_their_pending_work(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    db.put_pending("upload", "big.bin", {"upload_id": "up_1"})
    db.add_pending_sent("upload", "big.bin", ["b3:a", "b3:b"])
    db.add_pending_sent("upload", "big.bin", ["b3:b", "b3:c"])  # a block sent again
    db.add_pending_sent("upload", "other.bin", ["b3:z"])
    assert db.pending_sent("upload", "big.bin") == {"b3:a", "b3:b", "b3:c"}
    db.put_pending("upload", "big.bin", {"upload_id": "up_2"})  # a new session: none sent
    assert db.pending_sent("upload", "big.bin") == set()
    db.add_pending_sent("upload", "big.bin", ["b3:d"])
    db.drop_pending("upload", "big.bin")
    assert db.pending_sent("upload", "big.bin") == set()
    assert db.pending_sent("upload", "other.bin") == {"b3:z"}
    db.forget_sync()
    assert db.pending_sent("upload", "other.bin") == set()
