"""Files that hold secrets in the local state dir: created 0600, refused when readable by others.

One home for the rules every local secret (block-key file, URL-signing key, JWT signing key)
follows, so a loose `chmod` is caught the same way everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path


class InsecureSecretFile(Exception):
    """A secret file is readable or writable by someone other than its owner."""


def check_private(path: Path) -> None:
    """Raise `InsecureSecretFile` unless `path` is accessible to its owner only."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise InsecureSecretFile(
            f"{path} has mode {mode:04o}; a secret file must be private to its owner. "
            f"Fix it with: chmod 600 {path}"
        )


def write_private(path: Path, data: bytes, *, exclusive: bool) -> None:
    """Write `data` to `path` with mode 0600, durably, whole or not at all.

    Written to a private temp file first, then put in place: with `exclusive` by a hard
    link, which fails when `path` exists (two processes starting at once never both win),
    otherwise by a rename. Written in place, a full disk or a kill mid-write left an empty
    key file, and every later start failed on it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # a random name: one left by a kill must not block a later process given its pid
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(name)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            _link_exclusive(temp, path)
        else:
            os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _link_exclusive(temp: Path, path: Path) -> None:
    """Put `temp` at `path`; FileExistsError when something is there already."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise
    except OSError:
        # a filesystem without hard links (FAT, some FUSE mounts): a rename, after a check
        if path.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.rename(temp, path)


def load_or_create(path: Path, create: Callable[[], bytes]) -> bytes:
    """The bytes of the private file at `path`, creating it from `create()` on first use."""
    if not path.exists():
        # another process may create it first: then use theirs
        with contextlib.suppress(FileExistsError):
            write_private(path, create(), exclusive=True)
    check_private(path)
    return path.read_bytes()
