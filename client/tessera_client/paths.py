"""Canonical paths: every path the server sends is checked here before it touches the disk.

Server paths look like `/a/b.txt`. Locally the client works with relative POSIX paths
(`a/b.txt`) inside the synced folder. Two paths are "the same file" when their keys match
(NFC + case fold), the way the server compares them.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date

MAX_COMPONENT_BYTES = 255
MAX_PATH_CHARS = 4096
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafePathError(ValueError):
    """A path that must never be used on disk (traversal, absolute, NUL, ...)."""


def canonical_rel(path: str) -> str:
    """Turn a server path (`/a/b`) into a safe relative POSIX path (`a/b`), NFC.

    Rejects, rather than repairs, anything suspicious: `..` or `.` components, NUL and
    other control characters, backslashes, drive letters, empty components (`a//b`),
    over-long names, and the root itself.
    """
    if not isinstance(path, str) or not path:
        raise UnsafePathError("empty path")
    if len(path) > MAX_PATH_CHARS:
        raise UnsafePathError("path too long")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise UnsafePathError(f"control character in path {path!r}")
    if "\\" in path:
        raise UnsafePathError(f"backslash in path {path!r}")
    nfc = unicodedata.normalize("NFC", path)
    rel = nfc[1:] if nfc.startswith("/") else nfc
    if rel.startswith("/") or _DRIVE.match(rel):
        raise UnsafePathError(f"absolute path {path!r}")
    parts = rel.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"bad component {part!r} in {path!r}")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise UnsafePathError(f"name too long in {path!r}")
        if part != part.strip() and part.strip() in ("", ".", ".."):
            raise UnsafePathError(f"bad component {part!r} in {path!r}")
    return "/".join(parts)


def server_path(rel: str) -> str:
    """The server form (`/a/b`) of a relative path."""
    return "/" + canonical_rel(rel)


def path_key(rel: str) -> str:
    """The comparison key of a path: NFC then case fold (how the server compares paths)."""
    return unicodedata.normalize("NFC", rel).casefold()


def parent_of(rel: str) -> str:
    """The parent folder of a relative path ('' for the top)."""
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


def ancestors(rel: str) -> list[str]:
    """All parent folders of `rel`, outermost first (`a/b/c` -> [`a`, `a/b`])."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def is_under(rel: str, folder: str) -> bool:
    """True when `rel` lies inside `folder` (not equal to it)."""
    return rel.startswith(folder + "/")


def conflicted_copy_name(rel: str, device: str, day: date, attempt: int = 0) -> str:
    """Dropbox's convention: `name (<device>'s conflicted copy YYYY-MM-DD).ext`.

    `attempt` > 0 adds a counter when that name is taken.
    """
    folder, _, name = rel.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:  # no extension, or a dot file like `.bashrc`
        stem, ext = name, ""
    suffix = f" ({device}'s conflicted copy {day.isoformat()}"
    suffix += f" {attempt + 1})" if attempt else ")"
    new = stem + suffix + ("." + ext if ext else "")
    return f"{folder}/{new}" if folder else new
