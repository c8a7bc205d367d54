"""The local scan (trust size+mtime+inode, skip symlinks, report clashes) and the watcher."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import pytest

from tessera_client.fs import (
    PARTIAL_PREFIX,
    TEMP_OWNER,
    FakeFilesystem,
    RealFilesystem,
    SafeFilesystem,
    _Node,
)
from tessera_client.ignore import IgnoreRules
from tessera_client.planner import Entry, EntryKind
from tessera_client.scanner import Scanner
from tessera_client.watcher import MAX_SETTLE_S, Watcher, inotify_watches


def _scanner(root: Path) -> Scanner:
    return Scanner(SafeFilesystem(RealFilesystem(root)))


class DecomposingFilesystem(FakeFilesystem):
    """A disk like HFS+: it lists every name decomposed (NFD), and finds a path by either
    spelling."""

    def _node(self, rel: str) -> _Node:
        return super()._node(unicodedata.normalize("NFC", rel))

    def listdir(self, rel: str) -> list[str]:
        return [unicodedata.normalize("NFD", n) for n in super().listdir(rel)]


def test_a_disk_that_decomposes_names_syncs_them_under_their_nfc_spelling() -> None:
    """HFS+ lists every name decomposed: each was skipped ("not in NFC form; rename it",
    which no rename could cure there), and a download written under its NFC name came
    back decomposed and was never synced again. A decomposed name the disk also finds by
    its NFC spelling is that file, under its NFC name."""
    fake = DecomposingFilesystem()
    fake.mkdir("\u00dcber")
    fake.write_file("\u00dcber/caf\u00e9.txt", b"x")
    st = fake.lstat("\u00dcber/caf\u00e9.txt")  # synced before: a fake disk is not hashed
    synced = Entry(
        "\u00dcber/caf\u00e9.txt", EntryKind.FILE, "b3:x", 1, "f", 1, st.mtime_ns, st.inode
    )
    scan = Scanner(SafeFilesystem(fake)).scan({"\u00fcber/caf\u00e9.txt": synced})
    assert sorted(scan.tree) == ["\u00fcber", "\u00fcber/caf\u00e9.txt"]
    assert scan.tree["\u00fcber/caf\u00e9.txt"].path == "\u00dcber/caf\u00e9.txt"
    assert scan.skipped == [] and scan.unseen == set()


def test_scan_reports_symlinks_clashes_and_non_nfc_names(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "A.TXT").write_text("two")
    (tmp_path / "cafe\u0301.txt").write_text("nfd")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.bin").write_bytes(b"x")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    (tmp_path / ".tesseraignore").write_text("*.log\n")
    (tmp_path / "debug.log").write_text("ignored")
    os.symlink("/etc", tmp_path / "link")
    scan = _scanner(tmp_path).scan({})
    assert sorted(e.path for e in scan.tree.values()) == ["A.TXT", "sub", "sub/x.bin"]
    reasons = dict(scan.skipped)
    assert "symlink" in reasons["link"]
    assert "clashes" in reasons["a.txt"]
    assert "NFC" in reasons["cafe\u0301.txt"]
    assert scan.tree["sub"].kind == EntryKind.FOLDER
    # what it did not look at is not gone: not to be synced either way
    # a clash: "a.txt" is not gone; ignored entries by key, whatever the spelling
    assert scan.unseen == {
        "link",
        "caf\u00e9.txt",
        "a.txt",
        "debug.log",
        ".ds_store",
        ".tesseraignore",
    }
    assert scan.left_alone("debug.log", "DEBUG.LOG", is_dir=False)
    for path in ["link", "link/inside.txt", "caf\u00e9.txt", "debug.log", ".DS_Store"]:
        assert scan.left_alone(path, path, is_dir=False), path
    for path in ["gone.txt", "sub/gone.txt"]:
        assert not scan.left_alone(path, path, is_dir=False), path


def test_names_no_path_may_hold_are_reported_not_fatal(tmp_path: Path) -> None:
    """A name whose bytes are not UTF-8 raised UnicodeEncodeError out of every scan (the
    daemon and `sync --once` ended with a traceback naming no file); names with control
    characters or a backslash were left out without a word."""
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"caf\xe9"))
    (tmp_path / os.fsdecode(b"caf\xe9") / "in.txt").write_text("inside")
    (tmp_path / os.fsdecode(b"r\xe9sum\xe9.txt")).write_text("latin-1")
    (tmp_path / "back\\slash").write_text("b")
    (tmp_path / "bell\x07").write_text("c")
    (tmp_path / "ok.txt").write_text("fine")
    scan = _scanner(tmp_path).scan({})
    assert sorted(e.path for e in scan.tree.values()) == ["ok.txt"]
    reasons = dict(scan.skipped)
    assert set(reasons) == {"caf\\xe9", "r\\xe9sum\\xe9.txt", "back\\slash", "bell\\x07"}
    assert "not valid UTF-8; rename it" in reasons["r\\xe9sum\\xe9.txt"]
    assert all("rename it to sync it" in why for why in reasons.values())
    # not gone either: the server may hold a name stored before a rule refused it
    assert {"back\\slash", "bell\x07"} <= scan.unseen


def test_a_clash_keeps_the_synced_spelling(tmp_path: Path) -> None:
    """`NOTES.txt` appearing beside synced `notes.txt` sorts first, yet `notes.txt` keeps
    the path and `NOTES.txt` is reported: never sent as a new version of `notes.txt`."""
    (tmp_path / "notes.txt").write_text("synced")
    scanner = _scanner(tmp_path)
    base = dict(scanner.scan({}).tree)
    (tmp_path / "NOTES.txt").write_text("an unrelated new file")
    scan = scanner.scan(base)
    assert scan.tree["notes.txt"].path == "notes.txt"
    assert scan.tree["notes.txt"].content_hash == base["notes.txt"].content_hash
    assert "clashes" in dict(scan.skipped)["NOTES.txt"]


@pytest.mark.parametrize("renamed", [True, False], ids=["renamed", "rewritten"])
def test_a_clash_without_the_synced_spelling_sends_no_other_files_content(
    tmp_path: Path, renamed: bool
) -> None:
    """Synced `Notes.txt` became `notes.txt`, and an unrelated `NOTES.txt` appeared. The
    first to sort was kept and went up as the synced file's new version, replacing it on
    every device. The renamed file (same inode) keeps the path; with neither the synced
    spelling nor its inode here, both are left alone, unsynced, and reported."""
    (tmp_path / "Notes.txt").write_text("synced")
    scanner = _scanner(tmp_path)
    base = dict(scanner.scan({}).tree)
    (tmp_path / "NOTES.txt").write_text("an unrelated new file")
    if renamed:
        (tmp_path / "Notes.txt").rename(tmp_path / "notes.txt")
    else:  # written before the old one goes, so not on its inode
        (tmp_path / "notes.txt").write_text("synced, saved anew")
        (tmp_path / "Notes.txt").unlink()
    scan = scanner.scan(base)
    skipped = dict(scan.skipped)
    assert "clashes" in skipped["NOTES.txt"]
    if renamed:
        assert scan.tree["notes.txt"].path == "notes.txt"
        assert scan.tree["notes.txt"].content_hash == base["notes.txt"].content_hash
    else:
        assert "notes.txt" not in scan.tree and "clashes" in skipped["notes.txt"]
        assert scan.left_alone("notes.txt", "Notes.txt", is_dir=False)


def test_a_new_spelling_of_a_synced_folder_is_skipped_not_taken_for_it(tmp_path: Path) -> None:
    """`Docs` sorts before the synced `docs`, and was kept in its place: its `a.txt` was
    sent as a new version of the synced one, and the synced folder renamed on the server.
    The synced spelling is kept; the new one is skipped, and nothing in it is synced."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("synced")
    scanner = _scanner(tmp_path)
    base = dict(scanner.scan({}).tree)
    (tmp_path / "Docs").mkdir()
    (tmp_path / "Docs" / "a.txt").write_text("unrelated")
    (tmp_path / "Docs" / "b.txt").write_text("unrelated too")
    scan = scanner.scan(base)
    assert scan.tree["docs"].path == "docs"
    assert scan.tree["docs/a.txt"].content_hash == base["docs/a.txt"].content_hash
    assert "docs/b.txt" not in scan.tree
    assert [path for path, _ in scan.skipped] == ["Docs"]


def test_unchanged_files_are_not_rehashed(tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"content")
    an_hour_ago = time.time_ns() - 3600 * 10**9  # a stat taken just after a write is racy
    os.utime(f, ns=(an_hour_ago, an_hour_ago))
    st = f.stat()
    base = {
        "f.bin": Entry(
            "f.bin",
            content_hash="b3:trusted",
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            inode=st.st_ino,
        )
    }
    scanner = _scanner(tmp_path)
    assert scanner.scan(base).tree["f.bin"].content_hash == "b3:trusted"
    f.write_bytes(b"changed!")  # size changes: hashed again
    fresh = scanner.scan(base).tree["f.bin"]
    assert fresh.content_hash.startswith("b3:") and fresh.content_hash != "b3:trusted"
    assert scanner.manifest("f.bin") is not None


def test_watcher_wakes_once_things_settle(tmp_path: Path) -> None:
    wake = threading.Event()
    watcher = Watcher(tmp_path, wake, debounce_s=0.1)
    watcher.start()
    try:
        (tmp_path / ".tessera-tmp-1").write_bytes(b"own temp file")
        time.sleep(0.5)
        assert not wake.is_set()  # the executor's temp files never wake a round
        (tmp_path / "new.txt").write_text("hello")
        assert wake.wait(5)
        (tmp_path / "new.txt").write_text("hello again")
        time.sleep(0.02)  # its event is in: `settle` must now wait out the debounce
        start = time.monotonic()
        watcher.settle()
        assert time.monotonic() - watcher._last >= watcher.debounce_s  # waited till quiet
        assert time.monotonic() - start <= MAX_SETTLE_S + 0.5  # bounded (+ a loaded CI's sleep)
    finally:
        watcher.stop()


def test_a_watcher_is_not_woken_by_what_the_ignore_rules_cover(tmp_path: Path) -> None:
    """A busy ignored folder (a build's output) or an editor's swap file woke a round of
    the whole tree each second, for nothing any scan would look at."""
    wake = threading.Event()
    rules = IgnoreRules.from_text("build/\n*.swp\n")
    watcher = Watcher(tmp_path, wake, debounce_s=0.05, rules=lambda: rules)
    (tmp_path / "build").mkdir()
    watcher.start()
    try:
        (tmp_path / "build" / "out").mkdir()
        (tmp_path / "build" / "out" / "a.o").write_bytes(b"object")
        (tmp_path / ".notes.txt.swp").write_bytes(b"swap")
        time.sleep(0.5)
        assert not wake.is_set()
        for change in (
            lambda: (tmp_path / ".notes.txt.swp").rename(tmp_path / "notes.txt"),  # saved
            lambda: (tmp_path / ".tesseraignore").write_text("build/\n"),  # the rules' own
            lambda: (tmp_path / "new.txt").write_text("seen"),
        ):
            wake.clear()
            change()
            assert wake.wait(5)
    finally:
        watcher.stop()


def test_watchdogs_warnings_do_not_break_into_the_status_display() -> None:
    """An inotify queue overflow printed watchdog's warning raw to stderr, across the
    daemon's live status (a process of its own: pytest's logging takes the warning)."""
    warn = (
        "import logging, tessera_client.watcher;"
        " logging.getLogger('watchdog.observers.inotify_buffer').warning('Inotify queue"
        " overflowed')"
    )
    done = subprocess.run([sys.executable, "-c", warn], capture_output=True, text=True, check=True)
    assert done.stderr == ""


def test_a_watcher_knows_when_its_folder_was_replaced_and_starts_again(tmp_path: Path) -> None:
    """watchdog ends its thread when the watched folder is deleted, and a folder made again
    at the path, or mounted over, is watched by nobody: no event ever came again. `alive`
    tells, and a new `start` watches the folder now there."""
    folder = tmp_path / "sync"
    folder.mkdir()
    wake = threading.Event()
    watcher = Watcher(folder, wake, debounce_s=0.05)
    assert not watcher.alive()  # not started
    watcher.start()
    try:
        assert watcher.alive()
        shutil.rmtree(folder)
        folder.mkdir()  # (it may take the old folder's inode number)
        deadline = time.monotonic() + 5
        while watcher.alive() and time.monotonic() < deadline:
            time.sleep(0.01)  # the deletion's event is delivered on watchdog's thread
        assert not watcher.alive()
        watcher.start()
        assert watcher.alive()
        wake.clear()
        (folder / "new.txt").write_text("in the new folder")
        assert wake.wait(5)
    finally:
        watcher.stop()
    assert not watcher.alive()
    shutil.rmtree(folder)  # gone: each full scan tries again, and must leave nothing open
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(5):
        with pytest.raises(FileNotFoundError):
            watcher.start()
    assert fds is None or len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.skipif(inotify_watches() is None, reason="inotify's /proc/self/fdinfo: Linux")
def test_a_watcher_counts_the_folders_it_could_not_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """watchdog skips a subfolder it cannot watch (inotify's per-user watch limit) without
    a word: changes there woke nothing. The watches held are counted against the folders."""
    for sub in ("a", "a/b", "c"):
        (tmp_path / sub).mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "c")  # followed by neither
    watcher = Watcher(tmp_path, threading.Event())
    assert watcher.unwatched_folders() is None  # not started
    watcher.start()
    try:
        assert watcher.unwatched_folders() == 0  # 4 folders, 4 watches
        monkeypatch.setattr("tessera_client.watcher.inotify_watches", lambda: 1)
        assert watcher.unwatched_folders() == 3
    finally:
        watcher.stop()


def test_a_scan_removes_temp_files_another_process_left_a_day_ago(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    old = time.time_ns() - 2 * 24 * 3600 * 10**9
    left = tmp_path / "sub" / ".tessera-tmp-999999999-0a1b2c3d"  # a killed client's
    writing = tmp_path / ".tessera-tmp-999999998-4e5f6a7b"  # another client still at work
    ours = tmp_path / f".tessera-tmp-{TEMP_OWNER}-8c9d0e1f"  # this process's download
    # a killed client that ran with this pid too (PID 1 in a container)
    same_pid = tmp_path / f".tessera-tmp-{os.getpid()}.0badf00d-9a8b7c6d"
    # partial downloads, kept for the next attempt: one nobody resumed for two days
    abandoned, resumable = (tmp_path / f"{PARTIAL_PREFIX}{key * 32}" for key in "ab")
    for temp in (left, writing, ours, same_pid, abandoned, resumable):
        temp.write_bytes(b"partial download")
    for temp in (left, ours, same_pid, abandoned):
        os.utime(temp, ns=(old, old))
    scan = _scanner(tmp_path).scan({})
    assert not left.exists() and not same_pid.exists() and not abandoned.exists()
    assert writing.exists() and ours.exists() and resumable.exists()
    assert set(scan.tree) == {"sub"}  # temp files are never synced


def test_a_same_size_rewrite_within_the_mtime_granularity_is_hashed_again(
    tmp_path: Path,
) -> None:
    # On FAT (2 s mtimes) or HFS+ (1 s) a save right after the scan hashed the file kept
    # its size and mtime: trusted, the edit was never uploaded.
    f = tmp_path / "draft.txt"
    f.write_bytes(b"draft one")
    scanner = _scanner(tmp_path)
    first = scanner.scan({}).tree["draft.txt"].content_hash
    st = f.stat()
    with open(f, "r+b") as same_inode:
        same_inode.write(b"draft two")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # the coarse clock did not move
    again = scanner.scan({}).tree["draft.txt"]
    assert again.content_hash != first
    assert (again.size, again.mtime_ns, again.inode) == (st.st_size, st.st_mtime_ns, st.st_ino)


def test_a_file_dated_in_the_future_is_hashed_once_not_at_every_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # downloads take the uploader's mtime: a device whose clock runs an hour ahead made
    # every other device read its files again at every scan
    from tessera_client import scanner as scanner_module

    f = tmp_path / "from-the-future.bin"
    f.write_bytes(b"content")
    in_an_hour = time.time_ns() + 3600 * 10**9
    os.utime(f, ns=(in_an_hour, in_an_hour))
    hashed: list[str] = []
    real_scan_file = scanner_module.scan_file  # type: ignore[attr-defined]

    def counting(path: str) -> object:
        hashed.append(path)
        return real_scan_file(path)

    monkeypatch.setattr(scanner_module, "scan_file", counting)
    scanner = _scanner(tmp_path)
    first = scanner.scan({})
    again = scanner.scan({})
    assert len(hashed) == 1
    assert again.tree["from-the-future.bin"] == first.tree["from-the-future.bin"]
    assert again.hashed_ns["from-the-future.bin"] == first.hashed_ns["from-the-future.bin"]


def test_the_scan_says_when_each_file_was_read(tmp_path: Path) -> None:
    (tmp_path / "new.txt").write_text("new")
    trusted = tmp_path / "trusted.txt"
    trusted.write_text("old")
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(trusted, ns=(an_hour_ago, an_hour_ago))
    st = trusted.stat()
    base = {
        "trusted.txt": Entry(
            "trusted.txt", content_hash="b3:t", size=3, mtime_ns=an_hour_ago, inode=st.st_ino
        )
    }
    before = time.time_ns()
    scan = _scanner(tmp_path).scan(base)
    after = time.time_ns()
    assert set(scan.hashed_ns) == {"new.txt", "trusted.txt"}
    assert all(before <= t <= after for t in scan.hashed_ns.values())


@pytest.mark.parametrize("kind", ["symlink", "folder", "fifo"])
def test_an_unreadable_ignore_file_leaves_everything_alone(tmp_path: Path, kind: str) -> None:
    """`.tesseraignore` that cannot be read (a symlink, as dotfile managers make; a folder;
    a FIFO, whose open had blocked every scan for ever, Ctrl-C too) is reported, and the
    pass syncs nothing: without its rules, ignored files would be uploaded, and ignored
    files deleted here since would be deleted on the server."""
    (tmp_path / "secret.key").write_text("k")
    (tmp_path / "notes.txt").write_text("n")
    rules = tmp_path / "rules.txt"
    rules.write_text("*.key\n")
    if kind == "symlink":
        os.symlink(rules, tmp_path / ".tesseraignore")
    elif kind == "fifo":
        os.mkfifo(tmp_path / ".tesseraignore")
    else:
        (tmp_path / ".tesseraignore").mkdir()
    scan = _scanner(tmp_path).scan({})
    assert scan.tree == {}
    assert ".tesseraignore" in dict(scan.skipped)
    for path in ["secret.key", "notes.txt", "gone.txt"]:
        assert scan.left_alone(path, path, is_dir=False), path


def test_an_ignore_file_saved_with_a_byte_order_mark_keeps_its_first_rule(tmp_path: Path) -> None:
    """An editor's BOM made the first rule `\\ufeff*.key`, which matched nothing: the
    private keys it named were uploaded."""
    (tmp_path / ".tesseraignore").write_bytes(b"\xef\xbb\xbf*.key\r\nbuild/\r\n")
    (tmp_path / "id.key").write_text("private")
    (tmp_path / "notes.txt").write_text("n")
    scan = _scanner(tmp_path).scan({})
    assert sorted(e.path for e in scan.tree.values()) == ["notes.txt"]
