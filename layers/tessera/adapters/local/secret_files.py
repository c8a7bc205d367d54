"""Files that hold secrets in the local state dir: created 0600, refused when readable by others.

One home for the rules every local secret (block-key file, URL-signing key, JWT signing key)
follows, so a loose `chmod` is caught the same way everywhere.
"""

from __future__ import annotations

import contextlib
import os
import stat
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
    """Write `data` to `path` with mode 0600, durably.

    `exclusive` creates the file (O_EXCL: two processes starting at once never both win);
    otherwise the file is replaced atomically through a private temp file and a rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path if exclusive else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(target, flags, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if not exclusive:
        os.replace(target, path)


def load_or_create(path: Path, create: Callable[[], bytes]) -> bytes:
    """The bytes of the private file at `path`, creating it from `create()` on first use."""
    if not path.exists():
        # another process may create it first: then use theirs
        with contextlib.suppress(FileExistsError):
            write_private(path, create(), exclusive=True)
    check_private(path)
    return path.read_bytes()
