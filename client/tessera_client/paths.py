"""Canonical paths: every path the server sends is checked here before it touches the disk.

Server paths look like `/a/b.txt`. Locally the client works with relative POSIX paths
(`a/b.txt`) inside the synced folder. Two paths are "the same file" when their keys match
(NFC + case fold), the way the server compares them.
"""

from __future__ import annotations

import re
from datetime import date

from tessera.domain import paths as server_paths
from tessera.domain.errors import TesseraError

_DRIVE = re.compile(r"^[A-Za-z]:")


def printable(text: str) -> str:
    """`text` (a local path, or a name from the server) as it can be shown in a terminal:
    bytes that are not UTF-8 as `\\xNN`, control characters escaped."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if text.isprintable() else repr(text)[1:-1]


class UnsafePathError(ValueError):
    """A path that must never be used on disk (traversal, absolute, NUL, ...)."""


def canonical_rel(path: str) -> str:
    """Turn a server path (`/a/b`) into a safe relative POSIX path (`a/b`), NFC.

    Applies the server's own rules for a path a write names (`tessera.domain.paths.target`:
    no `.`/`..` or empty components, no NUL/control characters or backslashes, no line
    separators or bidirectional controls that disguise a name, length limits) and rejects,
    rather than repairs, anything else suspicious on a disk: drive letters, a doubled
    leading `/`, a trailing `/`, and the root itself.
    """
    if not isinstance(path, str) or path in ("", "/"):
        raise UnsafePathError("empty path or the root")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # a name's bytes that are not UTF-8, as the OS hands them over
        raise UnsafePathError("the name is not valid UTF-8") from None
    body = path[1:] if path.startswith("/") else path
    if body.startswith("/") or body.endswith("/") or _DRIVE.match(body):
        raise UnsafePathError(f"absolute or malformed path {path!r}")
    try:
        return server_paths.target("/" + body)[1:]
    except TesseraError as e:
        raise UnsafePathError(e.message) from None


def server_path(rel: str) -> str:
    """The server form (`/a/b`) of a relative path."""
    return "/" + canonical_rel(rel)


def path_key(rel: str) -> str:
    """The comparison key of a path: NFC + case fold (the server's `path_key`)."""
    return server_paths.path_key(rel)


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


# The most of a device's name a conflicted copy's name carries (UTF-8 bytes)
MAX_DEVICE_LABEL_BYTES = 64


def conflicted_copy_name(
    rel: str, device: str, day: date, attempt: int = 0, *, name_max: int | None = None
) -> str:
    """Dropbox's convention: `name (<device>'s conflicted copy YYYY-MM-DD).ext`.

    `attempt` > 0 adds a counter when that name is taken. The stem is shortened (at a
    character boundary) when the copy's name or path would pass the server's limits, or
    the local filesystem's longest name (`name_max`: eCryptfs takes 143 bytes, and a copy
    named to 255 failed its rename every round): a copy that cannot be named keeps neither
    side.
    """
    folder, _, name = rel.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:  # no extension, or a dot file like `.bashrc`
        stem, ext = name, ""
    # a device named with a `/` put the copy in a folder that is not there, and the
    # conflict failed every round; a long name left no room for the file's own
    label = server_paths.plain_name(device, limit=MAX_DEVICE_LABEL_BYTES)
    suffix = f" ({label}'s conflicted copy {day.isoformat()}"
    suffix += f" {attempt + 1})" if attempt else ")"
    tail = suffix + ("." + ext if ext else "")
    # The server limits a path as stored in its namespace; this side sees view paths, a
    # shared folder's mount point in front. A path within the stored limit is budgeted
    # against it (exact outside a shared folder, cautious inside one); a longer one can
    # only lie in a shared folder, whose mount point's length is unknown here: it gets
    # the view limit, and the server says (422) when the copy's stored part does not fit.
    stored = len(rel.encode()) + 1 <= server_paths.MAX_PATH_BYTES
    limit = server_paths.MAX_PATH_BYTES if stored else server_paths.MAX_VIEW_PATH_BYTES
    # less the leading and the inner `/`
    room = min(server_paths.MAX_NAME_BYTES, name_max or 2**31, limit - len(folder.encode()) - 2)
    if len(tail.encode()) >= room:  # an extension too long to keep: it joins the stem
        stem, tail = name, suffix
    new = server_paths.utf8_prefix(stem, room - len(tail.encode())) + tail
    return f"{folder}/{new}" if folder else new
