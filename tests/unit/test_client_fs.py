"""Safety wrappers over the filesystem interface, on the fake filesystem (and one real one)."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat
import threading
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tessera_client import fs as fs_module
from tessera_client.fs import (
    PARTIAL_PREFIX,
    FakeFilesystem,
    Filesystem,
    Kind,
    PathTooLongError,
    RealFilesystem,
    SafeFilesystem,
    SymlinkError,
)
from tessera_client.paths import UnsafePathError, canonical_rel, conflicted_copy_name

BAD = [
    "/../x",
    "../x",
    "a/../../b",
    "/a/./b",
    "//etc/passwd",
    "C:/win",
    "a\\..\\b",
    "a\x00b",
    "",
    "/",
    "a//b",
    "a/",
]


@pytest.mark.parametrize("path", BAD)
def test_canonical_rel_rejects_tricks(path: str) -> None:
    with pytest.raises(UnsafePathError):
        canonical_rel(path)


def test_canonical_rel_normalises_to_nfc() -> None:
    assert canonical_rel("/cafe\u0301/x") == "caf\u00e9/x"
    assert canonical_rel("/a/b.txt") == "a/b.txt"


@pytest.mark.parametrize("path", [*BAD, "cafe\u0301"])
def test_safe_fs_refuses_unsafe_paths(path: str) -> None:
    fs = SafeFilesystem(FakeFilesystem())
    with pytest.raises((UnsafePathError, ValueError)):
        fs.mkdir(path)


def test_safe_fs_never_follows_a_symlinked_folder() -> None:
    fake = FakeFilesystem()
    fake.mkdir("real")
    fake.symlink("/etc", "link")
    fs = SafeFilesystem(fake)
    with pytest.raises(SymlinkError):
        fs.create_temp("link")
    with pytest.raises(SymlinkError):
        fs.rename("real", "link/x")
    with pytest.raises(SymlinkError):
        fs.open_read("link")
    with pytest.raises(SymlinkError):
        fs.makedirs("link/deeper/still")
    assert set(fake.nodes) == {"", "real", "link"}


def test_full_disk_fails_the_write_and_leaves_the_target_alone() -> None:
    fake = FakeFilesystem()
    fake.write_file("doc.txt", b"precious")
    fake.space_left = 10
    fs = SafeFilesystem(fake)
    tmp, handle = fs.create_temp("")
    with pytest.raises(OSError) as info:
        handle.write(b"x" * 64)
        fs.fsync(handle)
    assert info.value.errno == errno.ENOSPC
    assert fake.read_file("doc.txt") == b"precious"
    fs.remove(tmp)
    assert set(fake.nodes) == {"", "doc.txt"}


def test_fake_rename_moves_whole_subtrees() -> None:
    fake = FakeFilesystem()
    fake.mkdir("a")
    fake.write_file("a/x", b"1")
    fake.mkdir("b")
    fake.rename("a", "b/a2")
    assert fake.read_file("b/a2/x") == b"1" and "a" not in fake.nodes


def test_real_fs_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "evil")
    os.symlink(outside / "f", root / "evil-file")
    fs = SafeFilesystem(RealFilesystem(root))
    assert fs.lstat("evil").kind == Kind.SYMLINK
    with pytest.raises(SymlinkError):
        fs.create_temp("evil")
    with pytest.raises(SymlinkError):
        fs.makedirs("evil/x")
    with pytest.raises(OSError):
        fs.open_read("evil-file")
    assert list(outside.iterdir()) == []


def test_conflicted_copy_names() -> None:
    d = date(2026, 11, 26)
    assert (
        conflicted_copy_name("a/report.txt", "lap", d)
        == "a/report (lap's conflicted copy 2026-11-26).txt"
    )
    assert (
        conflicted_copy_name("Makefile", "lap", d) == "Makefile (lap's conflicted copy 2026-11-26)"
    )
    assert (
        conflicted_copy_name(".bashrc", "lap", d, 1)
        == ".bashrc (lap's conflicted copy 2026-11-26 2)"
    )
    # within a filesystem's shorter longest name (eCryptfs: 143 bytes), its extension kept
    short = conflicted_copy_name("a/" + "é" * 100 + ".txt", "lap", d, name_max=143)
    assert len(short.rpartition("/")[2].encode()) <= 143 and short.endswith("2026-11-26).txt")


@pytest.mark.parametrize(
    "device",
    [
        "work/laptop",
        "C:\\pc",
        "tab\there",
        "bidi\u202eevil",
        "x" * 300,
        "中" * 100,
        "cafe\u0301",  # decomposed: the copy's name was not canonical, refused every round
        "bad\udcffbytes",  # TESSERA_DEVICE of bytes that are not UTF-8: a crash in `plan`
    ],
)
def test_a_device_name_never_leaves_the_copys_folder_or_its_limits(device: str) -> None:
    """`--device work/laptop` put the copy in a folder `report (work` that is not there:
    the rename failed every round and the conflict never resolved. A device name now
    brings no separator, control or disguising character, and at most 64 bytes."""
    name = conflicted_copy_name("docs/report.txt", device, date(2026, 11, 26))
    assert canonical_rel(name) == name
    assert name.startswith("docs/report (") and name.count("/") == 1
    assert name.endswith("'s conflicted copy 2026-11-26).txt")
    label = name.removeprefix("docs/report (").split("'s conflicted copy")[0]
    assert len(label.encode()) <= 64 and not set(label) & set("/\\\t\u202e")


@pytest.mark.parametrize(
    "rel",
    [
        "docs/" + "報" * 72 + ".txt",  # 216 + 4 bytes: the copy's name would be 261
        "x" * 20 + "." + "e" * 230,  # an extension too long to keep beside the suffix
        "/".join(["d" * 250] * 7 + ["g" * 111, "f" * 170 + ".txt"]),  # 2,044 of 2,048 bytes
        # only a view path through a shared folder's mount point passes 2,048 bytes
        "Team (2)/" + "/".join(["d" * 250] * 12 + ["report.txt"]),
    ],
    ids=["long-cjk-name", "long-extension", "long-path", "long-view-path"],
)
def test_conflicted_copy_names_stay_within_the_servers_limits(rel: str) -> None:
    """A copy name past 255 bytes was refused on disk and by the server: the conflict that
    needed it stopped the daemon, or left both versions unsynced every round."""
    canonical_rel(rel)  # the original is a valid path
    names = {conflicted_copy_name(rel, "lap", date(2026, 11, 26), n) for n in range(3)}
    assert len(names) == 3
    for name in names:
        assert canonical_rel(name) == name  # within the name and path limits, NFC
        assert "'s conflicted copy 2026-11-26" in name
        assert name.rpartition("/")[0] == rel.rpartition("/")[0]
        if len(rel.encode()) < 2048:  # stored as seen, the copy must fit as the original did
            assert len(name.encode()) < 2048
        else:  # its stem and extension kept: a copy named only by its suffix tells nothing
            copy = name.rpartition("/")[2]
            assert copy.startswith("report (lap's conflicted copy") and copy.endswith(").txt")


def _tree(fs: RealFilesystem | FakeFilesystem) -> None:
    fs.mkdir("docs")
    fs.mkdir("docs/sub")
    if isinstance(fs, FakeFilesystem):
        fs.write_file("docs/a.txt", b"abc")
        fs.symlink("/etc", "docs/link")
    else:
        (fs.root / "docs/a.txt").write_bytes(b"abc")
        os.symlink("/etc", fs.root / "docs/link")


@pytest.mark.parametrize("kind", ["real", "fake"])
def test_scandir_gives_each_entry_with_its_lstat(kind: str, tmp_path: Path) -> None:
    """A scan reads a folder's entries and their facts in one call, as `lstat` would give
    them: a symlink is reported, never followed."""
    inner = RealFilesystem(tmp_path) if kind == "real" else FakeFilesystem()
    _tree(inner)
    fs = SafeFilesystem(inner)
    entries = dict(fs.scandir("docs"))
    assert entries == {name: fs.lstat(f"docs/{name}") for name in ("a.txt", "link", "sub")}
    assert [entries[n].kind for n in ("a.txt", "link", "sub")] == [
        Kind.FILE,
        Kind.SYMLINK,
        Kind.DIR,
    ]
    assert entries["a.txt"].size == 3
    with pytest.raises(SymlinkError):  # the folder itself is checked, as listdir does
        fs.scandir("docs/link")


def test_scandir_leaves_out_the_names_lstat_refuses(tmp_path: Path) -> None:
    """A name no path may hold (a backslash) is left out, as a scan that asked `lstat`
    about it did; a name in another Unicode form is kept, for the scanner to report."""
    (tmp_path / "back\\slash").write_bytes(b"x")
    (tmp_path / "cafe\u0301").write_bytes(b"x")
    (tmp_path / "plain").write_bytes(b"x")
    names = {name for name, _ in SafeFilesystem(RealFilesystem(tmp_path)).scandir("")}
    assert names == {"cafe\u0301", "plain"}


def test_real_rename_flushes_the_folders_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rename is only durable once its folder is flushed; the engine records a download
    # (or move) as done right after it, so an unflushed rename lost to a power cut would
    # read as a local delete next round.
    fs = RealFilesystem(tmp_path)
    fs.mkdir("a")
    fs.mkdir("b")
    (tmp_path / "a" / "x").write_bytes(b"1")
    flushed = _flushes(monkeypatch)
    fs.rename("a/x", "b/y")
    assert sorted(flushed) == [str(tmp_path / "a"), str(tmp_path / "b")]
    flushed.clear()
    (tmp_path / "top").write_bytes(b"2")
    fs.rename("top", "b/top")
    assert sorted(flushed) == [str(tmp_path), str(tmp_path / "b")]
    assert (tmp_path / "b" / "top").read_bytes() == b"2"


def _flushes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths `os.fsync` is called on from now on (Linux)."""
    flushed: list[str] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return flushed


def test_real_deletes_flush_their_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete is forgotten in the state database right after it: unflushed, a power cut
    on a filesystem that orders the two apart brought the file back, unrecorded, and it
    went up as a new file to every device."""
    fs = RealFilesystem(tmp_path)
    fs.mkdir("a")
    fs.mkdir("a/empty")
    (tmp_path / "a" / "x").write_bytes(b"1")
    (tmp_path / "top").write_bytes(b"2")
    flushed = _flushes(monkeypatch)
    fs.remove("a/x")
    fs.rmdir("a/empty")
    fs.remove("top")
    assert flushed == [str(tmp_path / "a"), str(tmp_path / "a"), str(tmp_path)]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a"]


@pytest.mark.parametrize("way", ["system call", "hard link", "look first"])
def test_a_rename_that_must_not_replace_leaves_what_it_finds(
    way: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file made at a new file's path between the plan's look and the rename was written
    over: `replace=False` refuses, in one step where the system can (renameat2 here), else
    by a hard link (a file) or a look first (a folder, or links refused)."""
    if way != "system call":
        monkeypatch.setattr(fs_module, "_NOREPLACE_CALL", None)
    if way == "look first":
        monkeypatch.setattr(os, "link", lambda *_a, **_k: _raise(OSError(errno.EPERM, "no")))
    else:
        assert way == "hard link" or fs_module._NOREPLACE_CALL is not None
    fs = SafeFilesystem(RealFilesystem(tmp_path))
    (tmp_path / "new").write_bytes(b"downloaded")
    (tmp_path / "mine").write_bytes(b"the user's")
    (tmp_path / "folder").mkdir()
    (tmp_path / "taken").mkdir()
    for src, dst in (("new", "mine"), ("folder", "taken"), ("new", "taken")):
        with pytest.raises(FileExistsError):
            fs.rename(src, dst, replace=False)
    assert (tmp_path / "mine").read_bytes() == b"the user's"
    assert (tmp_path / "new").read_bytes() == b"downloaded"
    fs.rename("new", "free", replace=False)
    fs.rename("folder", "free folder", replace=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["free", "free folder", "mine", "taken"]
    assert (tmp_path / "free").read_bytes() == b"downloaded"
    fake = FakeFilesystem()
    fake.write_file("a", b"1")
    fake.write_file("b", b"2")
    with pytest.raises(FileExistsError):
        fake.rename("a", "b", replace=False)
    assert fake.read_file("b") == b"2"


def test_a_rename_that_must_not_replace_respells_one_entry_but_not_onto_a_hard_link(
    tmp_path: Path,
) -> None:
    """On a disk that ignores case `foo.txt` is `Foo.txt`: refused as taken, a respelling
    was refused every round. (Here two spellings of one path stand in for it.) Two hard
    links are two entries: the other is kept."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "Foo.txt").write_bytes(b"mine")
    fs_module._rename_noreplace(str(tmp_path / "Foo.txt"), str(tmp_path / "sub/../Foo.txt"))
    assert (tmp_path / "Foo.txt").read_bytes() == b"mine"
    os.link(tmp_path / "Foo.txt", tmp_path / "linked.txt")
    with pytest.raises(FileExistsError):
        fs_module._rename_noreplace(str(tmp_path / "Foo.txt"), str(tmp_path / "linked.txt"))
    assert (tmp_path / "Foo.txt").exists() and (tmp_path / "linked.txt").exists()


def test_one_entry_on_a_disk_that_ignores_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file with another hard link is still one entry under a second spelling there: the
    disk spells it otherwise (its listing), while a hard link is listed as named."""
    (tmp_path / "Foo.txt").write_bytes(b"mine")
    os.link(tmp_path / "Foo.txt", tmp_path / "backup.txt")
    lstat = os.lstat

    def ignoring_case(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        named = Path(path)
        return lstat(named.with_name("Foo.txt") if named.name == "foo.txt" else named)

    monkeypatch.setattr(os, "lstat", ignoring_case)
    assert fs_module._one_entry(str(tmp_path / "Foo.txt"), str(tmp_path / "foo.txt"))
    assert not fs_module._one_entry(str(tmp_path / "Foo.txt"), str(tmp_path / "backup.txt"))


def test_the_filesystem_layer_asks_no_c_library_on_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ctypes.CDLL(None)` is a TypeError there: the module failed to import."""
    monkeypatch.setattr(os, "name", "nt")
    assert fs_module._noreplace_call() is None


def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP, errno.EACCES])
def test_a_rename_on_a_filesystem_that_cannot_flush_folders_still_succeeds(
    code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SMB/CIFS and some FUSE mounts refuse fsync on a folder (EINVAL): raised after the
    # rename was done, it failed every download there and aborted conflict handling.
    fs = RealFilesystem(tmp_path)
    (tmp_path / "x").write_bytes(b"1")

    def refusing(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", refusing)
    fs.rename("x", "y")
    assert (tmp_path / "y").read_bytes() == b"1"


def test_a_failing_folder_flush_is_still_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = RealFilesystem(tmp_path)
    (tmp_path / "x").write_bytes(b"1")

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError) as raised:
        fs.rename("x", "y")
    assert raised.value.errno == errno.EIO


def test_racily_clean_knows_future_mtimes_and_unread_content() -> None:
    from tessera_client.fs import MTIME_GRANULARITY_NS, racily_clean

    now = 10**18
    assert racily_clean(now - MTIME_GRANULARITY_NS // 2, now)
    assert not racily_clean(now - 2 * MTIME_GRANULARITY_NS, now)
    # another device's clock an hour ahead: any write here sets the mtime to now, so it moves
    assert not racily_clean(now + 3600 * 10**9, now)
    assert racily_clean(now + MTIME_GRANULARITY_NS // 2, now)
    assert racily_clean(now - 3600 * 10**9, 0)  # content never read vouches for nothing


def test_names_and_paths_over_the_systems_limits_are_refused_before_any_write(
    tmp_path: Path,
) -> None:
    """Found before a download fetches the blocks, not at its final rename. (The safe
    wrapper refuses names over 255 bytes anywhere; some filesystems allow fewer: eCryptfs
    143.)"""
    fs = RealFilesystem(tmp_path)
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    path_max = os.pathconf(tmp_path, "PC_PATH_MAX")
    fs.check_fits("a/" + "n" * name_max)  # at the limits: fine
    with pytest.raises(PathTooLongError, match=f"over this filesystem's {name_max}") as name:
        fs.check_fits("a/" + "n" * (name_max + 1))
    assert name.value.errno == errno.ENAMETOOLONG
    deep = "/".join(["d" * 200] * (path_max // 201 + 1))  # every name fits, the whole does not
    with pytest.raises(PathTooLongError, match=f"over this system's {path_max - 1}"):
        fs.check_fits(deep)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make", [RealFilesystem, FakeFilesystem])
def test_a_partial_download_is_opened_again_with_what_it_holds(
    tmp_path: Path, make: Callable[..., Filesystem]
) -> None:
    """A download's partial temp file is found again by its key, its bytes kept, to be
    overwritten from the start; another key is another file."""
    fs = SafeFilesystem(make(tmp_path) if make is RealFilesystem else make())
    fs.mkdir("d")
    rel, handle = fs.open_partial("d", "k1")
    with handle:
        handle.write(b"first attempt")
    assert rel == f"d/{PARTIAL_PREFIX}k1"
    again, handle = fs.open_partial("d", "k1")
    with handle:
        assert again == rel and handle.read(5) == b"first"
        handle.seek(0)
        handle.write(b"FIRST")
        handle.seek(0, io.SEEK_END)
        handle.write(b"!")
    with fs.open_read(rel) as f:
        assert f.read() == b"FIRST attempt!"
    other, handle = fs.open_partial("d", "k2")
    handle.close()
    assert other != rel and fs.lstat(other).size == 0


def test_a_partial_download_is_never_written_through_something_else(tmp_path: Path) -> None:
    """Under a partial download's name, a symlink, a folder, a hard link to another file
    or a file another user made there first is refused: the download would write through
    it (into a file outside the folder, into another synced file, into a file that user
    can still write, to be renamed into place as the synced file)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.write_bytes(b"not the client's")
    fs = SafeFilesystem(RealFilesystem(root))
    os.symlink(outside, root / f"{PARTIAL_PREFIX}link")
    (root / f"{PARTIAL_PREFIX}dir").mkdir()
    (root / "synced.txt").write_bytes(b"a synced file")
    os.link(root / "synced.txt", root / f"{PARTIAL_PREFIX}hard")
    keys = ["link", "dir", "hard"]
    if os.geteuid() == 0:  # (only root can give a file away)
        (root / f"{PARTIAL_PREFIX}planted").write_bytes(b"")
        os.chown(root / f"{PARTIAL_PREFIX}planted", 65534, 65534)
        keys.append("planted")
    for key in keys:
        with pytest.raises(OSError):
            fs.open_partial("", key)
    assert outside.read_bytes() == b"not the client's"
    assert (root / "synced.txt").read_bytes() == b"a synced file"


def test_a_fifo_under_a_partial_downloads_name_is_refused_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only FIFO at the name (someone else's: the open to write it is refused, as
    for a partial download left read-only) held the read-only open, and the download, for
    ever. (The refusal is made here: this suite may run as root, whom no mode refuses.)"""
    fs = SafeFilesystem(RealFilesystem(tmp_path))
    os.mkfifo(tmp_path / f"{PARTIAL_PREFIX}k", 0o444)
    real_open = os.open

    def open_as_another_user(path: str, flags: int, *args: int) -> int:
        if flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_as_another_user)
    outcome: list[OSError] = []

    def attempt() -> None:
        try:
            fs.open_partial("", "k")
        except OSError as e:
            outcome.append(e)

    opener = threading.Thread(target=attempt, daemon=True)
    opener.start()
    opener.join(5)
    assert not opener.is_alive(), "the open is waiting on the FIFO"
    assert outcome and outcome[0].errno == errno.EEXIST
    monkeypatch.undo()
    _, partial = fs.open_partial("", "plain")  # and a plain file's is written as usual
    with partial:
        assert os.get_blocking(partial.fileno())


def test_a_partial_download_has_one_writer_at_a_time(tmp_path: Path) -> None:
    """Another download (another process: two homes on one folder) finds the partial
    download held, and writes elsewhere; two writers would mix their blocks."""
    fs = SafeFilesystem(RealFilesystem(tmp_path))
    rel, first = fs.open_partial("", "k")
    with first:
        with pytest.raises(OSError) as held:
            fs.open_partial("", "k")
        assert held.value.errno == errno.EBUSY
    again, handle = fs.open_partial("", "k")  # let go when closed
    handle.close()
    assert again == rel


def test_a_partial_download_is_private_until_it_takes_its_files_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partial download is written as 0600 (another user must not read a private file
    before it is in place) and takes the permissions of the file it replaces at the end;
    one left read-only (its rename failed after it took a read-only file's bits) opens
    again, where O_RDWR failed every retry for any user but root."""
    (tmp_path / "private.txt").write_bytes(b"secret")
    (tmp_path / "script.sh").write_bytes(b"#!/bin/sh")
    os.chmod(tmp_path / "private.txt", 0o600)
    os.chmod(tmp_path / "script.sh", 0o755)
    fs = SafeFilesystem(RealFilesystem(tmp_path))

    def mode(rel: str) -> int:
        return stat.S_IMODE(os.lstat(tmp_path / rel).st_mode)

    real_open = os.open

    def as_a_user(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        """os.open with a user's permission check, whoever runs the tests."""
        if flags & os.O_RDWR and os.path.exists(path) and not os.stat(path).st_mode & 0o200:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", as_a_user)
    new_file = 0o644 & ~os.umask(os.umask(0o022))  # (no file there: a new file's bits)
    for like, expected in (("script.sh", 0o755), ("private.txt", 0o600), ("new.txt", new_file)):
        rel, handle = fs.open_partial("", "k")
        with handle:
            assert mode(rel) == 0o600
            fs.give_mode(handle, like=like)
        assert mode(rel) == expected
    os.chmod(tmp_path / rel, 0o444)
    rel, handle = fs.open_partial("", "k")
    handle.close()
    assert mode(rel) == 0o600


def test_a_partial_renamed_into_place_between_the_open_and_the_lock_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another download renames the partial into place (and lets go of it) between this
    one's open and its lock: the lock then succeeds on the synced file, which this one
    made private and wrote its own blocks into. It is refused, untouched."""
    fs = SafeFilesystem(RealFilesystem(tmp_path))
    rel, handle = fs.open_partial("", "k")
    with handle:
        handle.write(b"the other download's file")
    os.chmod(tmp_path / rel, 0o644)
    hold = fs_module._hold

    def renamed_first(fd: int, name: str) -> None:
        os.rename(tmp_path / rel, tmp_path / "doc.txt")  # the other download, finishing
        hold(fd, name)

    monkeypatch.setattr(fs_module, "_hold", renamed_first)
    with pytest.raises(OSError):
        fs.open_partial("", "k")
    placed = tmp_path / "doc.txt"
    assert placed.read_bytes() == b"the other download's file"
    assert stat.S_IMODE(placed.stat().st_mode) == 0o644


def test_a_filesystem_without_locks_still_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some network and FUSE mounts refuse flock (ENOLCK): every download there had fallen
    back to a fresh temp file, never resuming, and left an empty partial behind."""

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    fs = SafeFilesystem(RealFilesystem(tmp_path))
    rel, handle = fs.open_partial("", "k")
    with handle:
        handle.write(b"first attempt")
    again, handle = fs.open_partial("", "k")
    with handle:
        assert again == rel and handle.read() == b"first attempt"
