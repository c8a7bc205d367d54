"""The filesystem the client touches, behind a small interface (Syncthing `lib/fs` style).

`RealFilesystem` works on a folder on disk, `FakeFilesystem` in memory (tests inject
faults such as a full disk through it), and `SafeFilesystem` wraps either one so that
every path is canonicalised and no symlink is ever followed, wherever it sits on the way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import itertools
import os
import secrets
import stat as stat_mod
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, cast

from tessera.blocks import open_regular
from tessera_client.paths import UnsafePathError, ancestors, canonical_rel, parent_of

TEMP_PREFIX = ".tessera-tmp-"
# A download's temp file kept when it fails, named after its target, so the next attempt
# (a later round, another process) resumes it. A temp file all the same: never synced, and
# removed by a scan once nobody has written to it for a day.
PARTIAL_PREFIX = f"{TEMP_PREFIX}part."
# Left in a synced folder that holds something: its absence marks a folder that is not the
# one synced (an empty mount point, another drive), not one the user emptied.
FOLDER_MARKER = ".tessera-folder"
# Names this process's temp files (after TEMP_PREFIX), so a scan leaves them alone. Not the
# pid alone: a client that always runs with one pid (PID 1 in a container) took the temp
# files its killed predecessor left for its own, and never removed them.
TEMP_OWNER = f"{os.getpid()}.{secrets.token_hex(4)}"
# The coarsest modification time a filesystem the client may sync keeps (FAT: 2 s; HFS+:
# 1 s). A file written again within it can keep its size and mtime.
MTIME_GRANULARITY_NS = 2 * 10**9


def racily_clean(mtime_ns: int, seen_ns: int) -> bool:
    """Whether a file's stat, taken at `seen_ns`, cannot vouch for its content later: it
    was modified so shortly before that a second write could leave size and mtime as they
    were (Git's "racy clean" index entries). An mtime well in the future (another device's
    clock, a camera's date) is not racy: any write sets it to now, so it changes. A
    `seen_ns` of 0 (content never read) vouches for nothing."""
    return seen_ns <= 0 or abs(seen_ns - mtime_ns) < MTIME_GRANULARITY_NS


class Kind(StrEnum):
    """What sits at a path."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


@dataclass(frozen=True)
class Stat:
    """The facts the client trusts about a path (never following a symlink)."""

    kind: Kind
    size: int
    mtime_ns: int
    inode: int
    dev: int = 0  # the filesystem it is on (0: not told, as by a fake filesystem)


class DiskFullError(OSError):
    """The disk is full: downloads stop, nothing half-written is left in place."""


def out_of_room(error: BaseException) -> bool:
    """Whether `error` says the disk has no room for what was written: full (ENOSPC, also
    out of inodes) or the user's disk quota used up (EDQUOT, on shared machines), which
    was taken for a one-off failure of each file, retried every round."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


class PathTooLongError(OSError):
    """A path the server holds is too long to create in this synced folder (ENAMETOOLONG)."""


class SymlinkError(OSError):
    """A symlink stands where the client would have to follow it."""


class Filesystem(ABC):
    """Operations on relative POSIX paths inside one folder."""

    @abstractmethod
    def lstat(self, rel: str) -> Stat:
        """Facts about `rel` without following a symlink; FileNotFoundError when absent."""

    @abstractmethod
    def listdir(self, rel: str) -> list[str]:
        """Names inside folder `rel` ('' is the top)."""

    def scandir(self, rel: str) -> list[tuple[str, Stat]]:
        """The entries of folder `rel` with their facts (never following a symlink); an
        entry gone between the listing and its stat is left out."""
        entries = []
        for name in self.listdir(rel):
            try:
                entries.append((name, self.lstat(f"{rel}/{name}" if rel else name)))
            except FileNotFoundError:
                continue
        return entries

    @abstractmethod
    def mkdir(self, rel: str) -> None:
        """Create folder `rel` (its parent must exist); no error when it already exists."""

    @abstractmethod
    def remove(self, rel: str) -> None:
        """Delete file (or symlink) `rel`."""

    @abstractmethod
    def rmdir(self, rel: str) -> None:
        """Delete the empty folder `rel`."""

    @abstractmethod
    def rename(self, src: str, dst: str, *, replace: bool = True) -> None:
        """Atomically and durably rename `src` to `dst`, replacing a file at `dst`; with
        `replace=False`, `FileExistsError` when anything is at `dst`, atomically where the
        system allows it (a file put there since the caller looked is never written over)."""

    @abstractmethod
    def create_temp(self, folder: str, *, like: str | None = None) -> tuple[str, BinaryIO]:
        """Create a new empty temp file in `folder` (never an existing one); its path + handle.
        With the permissions of the file `like` when there is one: a download that replaces
        a file (renamed over it) must not make a private file world-readable, nor take a
        script's execute bit away."""

    @abstractmethod
    def open_partial(self, folder: str, key: str) -> tuple[str, BinaryIO]:
        """Open the partial download `key` in `folder` to read and write at position 0,
        keeping what it holds (empty when new); its path + handle. Private (0600) while it
        is written: `give_mode` sets its final bits. Refuses (OSError) anything but a plain
        file of this user's own (a symlink, a folder, a hard link to another file, one
        another user made there first: the download would write through it), and one that
        another download (another process) has open: two writers would mix their blocks."""

    def give_mode(self, handle: BinaryIO, *, like: str | None) -> None:
        """Give the open file the permission bits of the file `like`, or a new file's when
        there is none (see `create_temp`)."""
        return None  # permissions are not modelled here

    @abstractmethod
    def open_read(self, rel: str) -> BinaryIO:
        """Open file `rel` for reading, refusing a symlink."""

    @abstractmethod
    def fsync(self, handle: BinaryIO) -> None:
        """Flush a written file to stable storage."""

    @abstractmethod
    def set_mtime(self, rel: str, mtime_ns: int) -> None:
        """Set the modification time of `rel`."""

    def local_path(self, rel: str) -> Path | None:
        """The path on disk, when there is one (the block scanner reads files by path)."""
        return None

    def check_fits(self, rel: str) -> None:
        """Raise PathTooLongError when a file at `rel` could not be created here (a name or
        a whole path over the system's limits). Nothing is limited unless a filesystem says."""
        return None  # no limits known (the fake filesystem's paths are only strings)

    def name_max(self) -> int | None:
        """The longest name (UTF-8 bytes) this filesystem takes, when it says."""
        return None

    def exists(self, rel: str) -> bool:
        """True when anything (even a symlink) sits at `rel` (`lstat_if_any`)."""
        return self.lstat_if_any(rel) is not None

    def lstat_if_any(self, rel: str) -> Stat | None:
        """What sits at `rel` (even a symlink), or None. None too when a folder on the way
        is now a file or a symlink: nothing there is the client's (every step at `rel`
        refuses it), and a conflicted copy's folder made a symlink had raised out of every
        round."""
        try:
            return self.lstat(rel)
        except (FileNotFoundError, NotADirectoryError, SymlinkError):
            return None


# The mtimes the state database (SQLite INTEGER, 64 bits) can hold: 1677-2262. ext4 keeps
# them up to 2446 (`touch -d 2400-01-01`), btrfs and tmpfs further: past 2262 a round
# failed as it recorded the file, every round.
_MTIME_NS_RANGE = (-(2**63), 2**63 - 1)


def _current_umask() -> int:
    # read by setting it: at import, before the client starts any thread that makes files
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _current_umask()


def _own_partial(fd: int, rel: str, path: str) -> None:
    """Hold `fd` for this download (until closed), check that it is a partial download
    this user may write and still the file at `path` (see `open_partial`), and make it
    private and writable; closes `fd` when refused. Locked first, so nothing is changed in
    a file another download holds (its final permissions, set before its rename), and
    checked against `path` after, since another download may have renamed it into place
    between this one's open and its lock."""
    try:
        _hold(fd, rel)
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            raise OSError(errno.EEXIST, "not a partial download of this client's", rel)
        there = os.lstat(path)
        if (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino):
            raise OSError(errno.EBUSY, "another download put it in place meanwhile", rel)
        os.fchmod(fd, 0o600)
        # a resumed download may only read it: the scan's stale-temp sweep must not take it
        # for abandoned meanwhile
        os.utime(fd)
    except BaseException:
        os.close(fd)
        raise


# Filesystems without advisory locks (some network and FUSE mounts) refuse flock so
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP})


def _hold(fd: int, rel: str) -> None:
    """Hold the file of `fd` for this download alone, until closed: another finds it held
    (EBUSY). Where the filesystem has no locks, unheld (a partial is then resumed as it
    was before locks; refused, every download there left an empty one behind). The import
    keeps this module importable where there is no `fcntl` (the real filesystem is POSIX)."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(errno.EBUSY, "another download is writing it", rel) from None
    except OSError as e:
        if e.errno not in _NO_LOCKS:
            raise


def _stat_of(st: os.stat_result) -> Stat:
    mtime_ns = min(max(st.st_mtime_ns, _MTIME_NS_RANGE[0]), _MTIME_NS_RANGE[1])
    return Stat(_kind_of(st.st_mode), st.st_size, mtime_ns, st.st_ino, st.st_dev)


# What fsync of a folder raises where the filesystem cannot do it (SMB/CIFS, some FUSE
# mounts: EINVAL) or the folder cannot be opened for reading (EACCES). The rename is done
# by then; such a filesystem orders its entries as it does, as Syncthing and borg accept.
_FSYNC_DIR_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES})


def _rename_noreplace(src: str, dst: str) -> None:
    """Rename `src` to `dst` unless something else is at `dst` (`FileExistsError`).

    `dst` may be `src` itself under another spelling (`Foo.txt` to `foo.txt` on a disk that
    ignores case, or normalization): that is a respelling, done as such; refused, it was
    refused every round."""
    try:
        _rename_exclusive(src, dst)
    except FileExistsError:
        if not _one_entry(src, dst):
            raise
        os.rename(src, dst)


def _one_entry(a: str, b: str) -> bool:
    """Whether paths `a` and `b` name one directory entry (not two hard links to a file):
    the same file, and a folder, or a file of one name, or `b` not spelled so on disk."""
    try:
        first, second = os.lstat(a), os.lstat(b)
        if (first.st_dev, first.st_ino) != (second.st_dev, second.st_ino):
            return False
        if stat_mod.S_ISDIR(first.st_mode) or first.st_nlink == 1:
            return True
        return os.path.basename(b) not in os.listdir(os.path.dirname(b) or ".")
    except OSError:
        return False


def _rename_exclusive(src: str, dst: str) -> None:
    """Rename `src` to `dst` unless something is at `dst` (`FileExistsError`): in one step
    where the system has one (Linux `renameat2(RENAME_NOREPLACE)`, macOS
    `renamex_np(RENAME_EXCL)`); else, for a file, a hard link and the old name's unlink; else
    a look first, which leaves a moment between the look and the rename."""
    if os.name == "nt":  # Windows' rename refuses a taken name itself
        os.rename(src, dst)
        return
    call = _NOREPLACE_CALL
    if call is not None:
        if call(os.fsencode(src), os.fsencode(dst)) == 0:
            return
        code = ctypes.get_errno()
        if code not in _NOREPLACE_UNSUPPORTED:
            raise OSError(code, os.strerror(code), src, None, dst)
    if not stat_mod.S_ISDIR(os.lstat(src).st_mode):
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists", dst)
    os.rename(src, dst)


def _noreplace_call() -> Callable[[bytes, bytes], int] | None:
    """The system's rename-unless-taken call, as (old path, new path) -> 0 or -1 (errno)."""
    if os.name == "nt":  # (CDLL(None) is a TypeError there)
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if hasattr(libc, "renameat2"):  # glibc 2.28+: (olddirfd, old, newdirfd, new, flags)
        renameat2, at_fdcwd, rename_noreplace = libc.renameat2, -100, 1
        return lambda old, new: int(renameat2(at_fdcwd, old, at_fdcwd, new, rename_noreplace))
    if hasattr(libc, "renamex_np"):  # macOS 10.12+: (old, new, flags)
        renamex_np, rename_excl = libc.renamex_np, 4
        return lambda old, new: int(renamex_np(old, new, rename_excl))
    return None


_NOREPLACE_CALL = _noreplace_call()
# a filesystem (or kernel) without the flag: the fallbacks instead
_NOREPLACE_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})


def _fsync_dir(path: str) -> None:
    """Flush a folder's entries to stable storage where the filesystem can (POSIX; Windows
    has no handle for it and NTFS journals renames itself)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno not in _FSYNC_DIR_UNSUPPORTED:
            raise


def _kind_of(mode: int) -> Kind:
    if stat_mod.S_ISLNK(mode):
        return Kind.SYMLINK
    if stat_mod.S_ISDIR(mode):
        return Kind.DIR
    if stat_mod.S_ISREG(mode):
        return Kind.FILE
    return Kind.OTHER


class RealFilesystem(Filesystem):
    """A folder on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._top = str(self.root)  # joined as a str: a Path's __fspath__ per call added up
        self._name_path_max: tuple[int, int] | None = None

    def _abs(self, rel: str) -> str:
        return os.path.join(self._top, rel) if rel else self._top

    def lstat(self, rel: str) -> Stat:
        return _stat_of(os.lstat(self._abs(rel)))

    def listdir(self, rel: str) -> list[str]:
        return os.listdir(self._abs(rel))

    def scandir(self, rel: str) -> list[tuple[str, Stat]]:
        entries = []
        with os.scandir(self._abs(rel)) as found:
            for entry in found:
                try:
                    entries.append((entry.name, _stat_of(entry.stat(follow_symlinks=False))))
                except FileNotFoundError:
                    continue
        return entries

    def mkdir(self, rel: str) -> None:
        try:
            os.mkdir(self._abs(rel))
        except FileExistsError:
            if self.lstat(rel).kind != Kind.DIR:
                raise

    def remove(self, rel: str) -> None:
        os.unlink(self._abs(rel))
        # durable before the caller forgets the file (as a rename): on btrfs or APFS the
        # state database's next flush could land without the unlink, and after a power
        # cut the file, back with no record, went up as new to every device
        _fsync_dir(self._abs(parent_of(rel)))

    def rmdir(self, rel: str) -> None:
        os.rmdir(self._abs(rel))
        _fsync_dir(self._abs(parent_of(rel)))  # (as `remove`)

    def rename(self, src: str, dst: str, *, replace: bool = True) -> None:
        if replace:
            os.replace(self._abs(src), self._abs(dst))
        else:
            _rename_noreplace(self._abs(src), self._abs(dst))
        # Make the rename itself durable before the caller records it as done: without it a
        # power cut can leave the state database saying "synced" over a folder that lost
        # the new name, and the next round would take the missing file for a delete.
        for folder in dict.fromkeys((parent_of(dst), parent_of(src))):
            _fsync_dir(self._abs(folder))

    def _mode_of(self, like: str | None) -> int:
        """The permission bits of the file `like`, or a new file's (0644 less the umask)
        when there is none."""
        if like is not None:
            with contextlib.suppress(FileNotFoundError):
                return stat_mod.S_IMODE(os.lstat(self._abs(like)).st_mode)
        return 0o644 & ~_UMASK

    def create_temp(self, folder: str, *, like: str | None = None) -> tuple[str, BinaryIO]:
        mode = self._mode_of(like)
        for n in itertools.count():
            name = f"{TEMP_PREFIX}{TEMP_OWNER}-{os.urandom(4).hex()}"
            rel = f"{folder}/{name}" if folder else name
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            try:
                fd = os.open(self._abs(rel), flags, 0o600)
            except FileExistsError:
                if n > 100:
                    raise
                continue
            os.fchmod(fd, mode)  # exactly these bits (os.open's go through the umask)
            return rel, os.fdopen(fd, "wb")
        raise AssertionError("unreachable")

    def open_partial(self, folder: str, key: str) -> tuple[str, BinaryIO]:
        name = f"{PARTIAL_PREFIX}{key}"
        rel = f"{folder}/{name}" if folder else name
        path = self._abs(rel)
        # O_NONBLOCK: a FIFO at the name (someone's, read-only) had held the read-only open,
        # and the download, for ever; `_own_partial` refuses it. (No effect on a plain file.)
        flags = os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o600)
        except PermissionError:
            # an attempt whose final rename failed left it with a read-only file's bits
            readonly = os.open(path, os.O_RDONLY | flags)
            _own_partial(readonly, rel, path)
            os.close(readonly)
            fd = os.open(path, os.O_RDWR | flags)
        _own_partial(fd, rel, path)
        try:
            # a plain file now: the flag off again (some FUSE and network filesystems heed it)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return rel, os.fdopen(fd, "r+b")

    def give_mode(self, handle: BinaryIO, *, like: str | None) -> None:
        os.fchmod(handle.fileno(), self._mode_of(like))

    def open_read(self, rel: str) -> BinaryIO:
        # a FIFO would block the open for ever, and SIGINT with it (Python retries an
        # interrupted open): one named `.tesseraignore` hung every scan
        # buffered, as `open` hands them out: a read of a block's size gets all of it even
        # where the filesystem answers in pieces (FUSE, network mounts)
        raw = open_regular(self._abs(rel), follow_symlinks=False)
        return cast(BinaryIO, io.BufferedReader(raw))

    def fsync(self, handle: BinaryIO) -> None:
        handle.flush()
        os.fsync(handle.fileno())

    def set_mtime(self, rel: str, mtime_ns: int) -> None:
        os.utime(self._abs(rel), ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def local_path(self, rel: str) -> Path | None:
        return Path(self._abs(rel))

    def check_fits(self, rel: str) -> None:
        # Found before a download fetches the blocks, not at its final rename: the temp
        # file's short name fits where the file's does not, so every round fetched the
        # whole file again only to fail at the end.
        name_max, path_max = self._limits()
        for name in rel.split("/"):
            if (size := len(os.fsencode(name))) > name_max:
                raise PathTooLongError(
                    errno.ENAMETOOLONG,
                    f"the name {name[:40]!r}... is {size} bytes, over this "
                    f"filesystem's {name_max}; shorten it on another device",
                )
        length = len(os.fsencode(self._abs(rel)))
        if length >= path_max:  # the limit counts the terminating NUL
            raise PathTooLongError(
                errno.ENAMETOOLONG,
                f"the path would be {length} bytes here, over this system's {path_max - 1};"
                " sync into a folder with a shorter path, or shorten it on another device",
            )

    def name_max(self) -> int | None:
        return self._limits()[0]

    def _limits(self) -> tuple[int, int]:
        """(NAME_MAX, PATH_MAX) of the synced folder's filesystem, asked once."""
        if self._name_path_max is None:
            try:
                self._name_path_max = (
                    os.pathconf(self._top, "PC_NAME_MAX"),
                    os.pathconf(self._top, "PC_PATH_MAX"),
                )
            except (AttributeError, OSError, ValueError):  # Windows: no pathconf
                self._name_path_max = (2**31, 2**31)
        return self._name_path_max


@dataclass
class _Node:
    kind: Kind
    data: bytearray = field(default_factory=bytearray)
    mtime_ns: int = 0
    inode: int = 0
    target: str = ""


class _FakeHandle(io.RawIOBase):
    """A read-write handle on a fake file that charges every byte it adds to the fake disk."""

    def __init__(self, fs: FakeFilesystem, rel: str) -> None:
        super().__init__()
        # the node, not its path: as an open file on disk, it stays this file when renamed
        # or deleted
        self.fs, self.node, self.position = fs, fs.nodes[rel], 0

    def _data(self) -> bytearray:
        return self.node.data

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            self.position = len(self._data()) + offset
        else:
            self.position = (self.position if whence == io.SEEK_CUR else 0) + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, b: Any) -> int:
        chunk = self._data()[self.position : self.position + len(b)]
        b[: len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)

    def write(self, b: Any) -> int:
        data, added = self._data(), bytes(b)
        self.fs.charge(max(0, self.position + len(added) - len(data)))
        data.extend(bytes(max(0, self.position - len(data))))
        data[self.position : self.position + len(added)] = added
        self.position += len(added)
        return len(added)

    def truncate(self, size: int | None = None) -> int:
        size = self.position if size is None else size
        data = self._data()
        if self.fs.space_left is not None:
            self.fs.space_left += max(0, len(data) - size)
        del data[size:]
        return size


class FakeFilesystem(Filesystem):
    """An in-memory folder for tests, with injectable faults.

    `space_left` (bytes, None = unlimited) makes writes fail with `full_errno` (ENOSPC)
    once used up, like a full disk (EDQUOT: a used-up quota); `fail_rename` makes renames
    fail with EIO.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {"": _Node(Kind.DIR, inode=1)}
        self._inodes = itertools.count(2)
        self._clock = itertools.count(1_000_000_000)
        self.space_left: int | None = None
        self.full_errno = errno.ENOSPC
        self.fail_rename = False
        self.fsyncs = 0

    def charge(self, n: int) -> None:
        """Take `n` bytes of the fake disk, or fail like a full disk."""
        if self.space_left is not None:
            if n > self.space_left:
                raise OSError(self.full_errno, os.strerror(self.full_errno))
            self.space_left -= n

    def _node(self, rel: str) -> _Node:
        try:
            return self.nodes[rel]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such file", rel) from None

    def _parent_dir(self, rel: str) -> None:
        if self._node(parent_of(rel)).kind != Kind.DIR:
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", parent_of(rel))

    def _new(self, rel: str, kind: Kind, data: bytes = b"", target: str = "") -> None:
        self._parent_dir(rel)
        self.nodes[rel] = _Node(
            kind, bytearray(data), next(self._clock), next(self._inodes), target
        )

    def write_file(self, rel: str, data: bytes) -> None:
        """Test helper: create or replace a file."""
        self._new(rel, Kind.FILE, data)

    def symlink(self, target: str, rel: str) -> None:
        """Test helper: create a symlink."""
        self._new(rel, Kind.SYMLINK, target=target)

    def read_file(self, rel: str) -> bytes:
        """Test helper: a file's bytes."""
        return bytes(self._node(rel).data)

    def lstat(self, rel: str) -> Stat:
        n = self._node(rel)
        return Stat(n.kind, len(n.data), n.mtime_ns, n.inode)

    def listdir(self, rel: str) -> list[str]:
        if self._node(rel).kind != Kind.DIR:
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", rel)
        prefix = rel + "/" if rel else ""
        return [
            p[len(prefix) :]
            for p in self.nodes
            if p and p.startswith(prefix) and "/" not in p[len(prefix) :]
        ]

    def mkdir(self, rel: str) -> None:
        if rel in self.nodes:
            if self.nodes[rel].kind != Kind.DIR:
                raise FileExistsError(errno.EEXIST, "exists", rel)
            return
        self._new(rel, Kind.DIR)

    def remove(self, rel: str) -> None:
        if self._node(rel).kind == Kind.DIR:
            raise IsADirectoryError(errno.EISDIR, "is a folder", rel)
        freed = len(self.nodes.pop(rel).data)
        if self.space_left is not None:
            self.space_left += freed

    def rmdir(self, rel: str) -> None:
        if self.listdir(rel):
            raise OSError(errno.ENOTEMPTY, "folder not empty", rel)
        del self.nodes[rel]

    def rename(self, src: str, dst: str, *, replace: bool = True) -> None:
        if self.fail_rename:
            raise OSError(errno.EIO, "injected rename failure", src)
        node = self._node(src)
        self._parent_dir(dst)
        if not replace and dst in self.nodes:
            raise FileExistsError(errno.EEXIST, "exists", dst)
        if dst in self.nodes and self.nodes[dst].kind == Kind.DIR:
            raise IsADirectoryError(errno.EISDIR, "is a folder", dst)
        moved = {p: n for p, n in self.nodes.items() if p == src or p.startswith(src + "/")}
        for p in moved:
            del self.nodes[p]
        for p, n in moved.items():
            self.nodes[dst + p[len(src) :]] = n
        node.mtime_ns = node.mtime_ns or next(self._clock)

    def create_temp(self, folder: str, *, like: str | None = None) -> tuple[str, BinaryIO]:
        # permissions are not modelled here: `like` changes nothing
        name = f"{TEMP_PREFIX}{next(self._inodes)}"
        rel = f"{folder}/{name}" if folder else name
        self._new(rel, Kind.FILE)
        return rel, io.BufferedWriter(_FakeHandle(self, rel))

    def open_partial(self, folder: str, key: str) -> tuple[str, BinaryIO]:
        name = f"{PARTIAL_PREFIX}{key}"
        rel = f"{folder}/{name}" if folder else name
        if rel not in self.nodes:
            self._new(rel, Kind.FILE)
        elif self.nodes[rel].kind != Kind.FILE:
            raise OSError(errno.EEXIST, "not a partial download of this client's", rel)
        return rel, io.BufferedRandom(_FakeHandle(self, rel))

    def open_read(self, rel: str) -> BinaryIO:
        n = self._node(rel)
        if n.kind != Kind.FILE:
            raise OSError(errno.ELOOP if n.kind == Kind.SYMLINK else errno.EISDIR, "not a file")
        return io.BytesIO(bytes(n.data))

    def fsync(self, handle: BinaryIO) -> None:
        handle.flush()
        self.fsyncs += 1

    def set_mtime(self, rel: str, mtime_ns: int) -> None:
        self._node(rel).mtime_ns = mtime_ns


class SafeFilesystem(Filesystem):
    """Wraps a filesystem so every path is canonical and no symlink is followed.

    Each path is passed through `canonical_rel` (traversal, absolute, NUL, backslash,
    drive letters rejected; NFC), and every folder on the way to it must be a real folder,
    not a symlink — so nothing is ever read or written outside the synced folder.
    """

    def __init__(self, inner: Filesystem) -> None:
        self.inner = inner

    def _check(self, rel: str) -> str:
        try:
            clean = canonical_rel(rel)
        except UnsafePathError as e:
            raise UnsafePathError(f"refusing unsafe path {rel!r}: {e}") from None
        if clean != rel:
            raise UnsafePathError(f"refusing non-canonical path {rel!r}")
        for folder in ancestors(clean):
            try:
                kind = self.inner.lstat(folder).kind
            except FileNotFoundError:
                continue  # creating the folder chain is the caller's business
            if kind == Kind.SYMLINK:
                raise SymlinkError(errno.ELOOP, f"symlink on the way to {rel!r}", folder)
            if kind != Kind.DIR:
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", folder)
        return clean

    def _check_folder(self, rel: str) -> str:
        return rel if rel == "" else self._check(rel)

    def _check_dir(self, rel: str) -> str:
        """Like `_check_folder`, and `rel` itself must be a real folder (not a symlink)."""
        rel = self._check_folder(rel)
        if rel:
            kind = self.inner.lstat(rel).kind
            if kind == Kind.SYMLINK:
                raise SymlinkError(errno.ELOOP, "refusing to follow a symlink", rel)
            if kind != Kind.DIR:
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", rel)
        return rel

    def lstat(self, rel: str) -> Stat:
        return self.inner.lstat(self._check_folder(rel))

    def listdir(self, rel: str) -> list[str]:
        return self.inner.listdir(self._check_dir(rel))

    def scandir(self, rel: str) -> list[tuple[str, Stat]]:
        return self.scan_folder(rel)[0]

    def scan_folder(self, rel: str) -> tuple[list[tuple[str, Stat]], list[tuple[str, str]]]:
        """`scandir`, and the names it left out with why (names no path may hold: not
        UTF-8, control characters, a backslash...), for the scan to tell the user. `rel`
        is checked once, as `listdir` does; its entries need no check on the way (`rel` is
        their only folder), only of their names. A scan walks every folder this way: an
        `lstat` per entry checked each folder above it again, one more system call per
        level for every file."""
        rel = self._check_dir(rel)
        entries, refused = [], []
        for name, st in self.inner.scandir(rel):
            try:
                canonical_rel(f"{rel}/{name}" if rel else name)
            except UnsafePathError as e:
                refused.append((name, str(e)))
                continue
            entries.append((name, st))
        return entries, refused

    def mkdir(self, rel: str) -> None:
        rel = self._check(rel)
        if self.inner.exists(rel):
            self._check_dir(rel)
            return
        self.inner.mkdir(rel)

    def remove(self, rel: str) -> None:
        self.inner.remove(self._check(rel))

    def rmdir(self, rel: str) -> None:
        self.inner.rmdir(self._check(rel))

    def rename(self, src: str, dst: str, *, replace: bool = True) -> None:
        self.inner.rename(self._check(src), self._check(dst), replace=replace)

    def create_temp(self, folder: str, *, like: str | None = None) -> tuple[str, BinaryIO]:
        checked = None if like is None else self._check(like)
        return self.inner.create_temp(self._check_dir(folder), like=checked)

    def open_partial(self, folder: str, key: str) -> tuple[str, BinaryIO]:
        return self.inner.open_partial(self._check_dir(folder), key)

    def give_mode(self, handle: BinaryIO, *, like: str | None) -> None:
        self.inner.give_mode(handle, like=None if like is None else self._check(like))

    def open_read(self, rel: str) -> BinaryIO:
        rel = self._check(rel)
        if self.inner.lstat(rel).kind == Kind.SYMLINK:
            raise SymlinkError(errno.ELOOP, "refusing to follow a symlink", rel)
        return self.inner.open_read(rel)

    def fsync(self, handle: BinaryIO) -> None:
        self.inner.fsync(handle)

    def set_mtime(self, rel: str, mtime_ns: int) -> None:
        self.inner.set_mtime(self._check(rel), mtime_ns)

    def local_path(self, rel: str) -> Path | None:
        return self.inner.local_path(self._check(rel))

    def check_fits(self, rel: str) -> None:
        self.inner.check_fits(self._check(rel))

    def name_max(self) -> int | None:
        return self.inner.name_max()

    def makedirs(self, rel: str) -> None:
        """Create `rel` and every missing folder above it, refusing symlinks on the way."""
        for folder in [*ancestors(self._check(rel)), rel]:
            self.mkdir(folder)
