"""The one home of path rules, shared by the server and the sync client.

A canonical path starts with "/", is NFC, has no trailing "/" (the root is "/"), and none of
its components is empty, ".", "..", or holds NUL, a control character or a backslash. Names
are at most 255 UTF-8 bytes; a path stored in a namespace at most 2048 bytes, a view path
(a mount's path, then a path inside it) at most 4096. Paths are compared by `path_key`: NFC +
case fold, so two spellings that differ only in case or Unicode form are one file.
"""

from __future__ import annotations

import re
import unicodedata

from tessera.domain.errors import InvalidPath

ROOT = "/"
MAX_NAME_BYTES = 255
# A path's key is what PostgreSQL indexes (files, ns_members), and a btree entry holds at
# most 2,704 bytes: a longer key that does not compress (CJK text) failed there, as a 503
# the client retried for ever. The path and its key must each fit this many UTF-8 bytes.
MAX_PATH_BYTES = 2048
# A view path is a mount's path (stored in the root namespace) and a path stored inside the
# mounted namespace, so every member's view of a stored path fits this: the owner's limit is
# not a member's, whose mount (`/Team (2)/deeper`) may be longer.
MAX_VIEW_PATH_BYTES = 2 * MAX_PATH_BYTES
# How many names deep a path a write names may go. A commit makes every folder above its
# file that is missing, a row and a journal row each, whose paths grow with the depth: a
# 2 KB path of 1,022 one-letter folders made 3.4 MB of rows, and a 217 KB batch of them
# 1.4 GB, for no quota (folders and empty files count none).
MAX_DEPTH = 64
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")
# What changes how a name reads without being seen: line and paragraph separators (one name
# shown on two lines of a listing or a log) and the bidirectional embeddings, overrides and
# isolates (U+202E shows "invoice\u202efdp.exe" as "invoiceexe.pdf"). Not LRM/RLM, which
# right-to-left names may carry, nor ZWJ, which joins emoji.
_DISGUISING = re.compile("[\u0085\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def canonical(raw: str, *, field: str = "path") -> str:
    """The canonical form of `raw` ("" and "/" are the root); `InvalidPath` (422) otherwise."""
    if raw in ("", ROOT):
        return ROOT
    if not raw.startswith("/"):
        raise InvalidPath(f"{field} must start with '/': {raw!r}", field=field)
    path = unicodedata.normalize("NFC", raw)
    if path.endswith("/"):
        path = path[:-1]
    if problem := length_problem(path, MAX_VIEW_PATH_BYTES):
        raise InvalidPath(f"{field} is {problem}", field=field)
    for name in path[1:].split("/"):
        if name == "":
            raise InvalidPath(f"{field} has an empty component: {raw!r}", field=field)
        if name in (".", ".."):
            raise InvalidPath(f"{field} may not contain '.' or '..': {raw!r}", field=field)
        if _FORBIDDEN.search(name):
            raise InvalidPath(
                f"{field} contains NUL, a control character or a backslash", field=field
            )
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise InvalidPath(
                f"{field} has a name longer than {MAX_NAME_BYTES} bytes: {name[:40]!r}…",
                field=field,
            )
    return path


def target(raw: str, *, field: str = "path") -> str:
    """The canonical form of a path a write names (a commit, an upload, a new folder, a
    move's destination): `canonical`, and 422 for a name that disguises how it reads
    (`_DISGUISING`). Only writes are held to it: an entry stored before the rule can still
    be read, moved to a plain name and deleted."""
    path = canonical(raw, field=field)
    if path.count("/") > MAX_DEPTH:
        raise InvalidPath(f"{field} is more than {MAX_DEPTH} names deep", field=field)
    if match := _DISGUISING.search(path):
        raise InvalidPath(
            f"{field} holds U+{ord(match[0]):04X}, which changes how a name reads without"
            " being seen (a line break or a bidirectional control); rename it",
            field=field,
        )
    return path


def plain_name(text: str, *, limit: int = MAX_NAME_BYTES) -> str:
    """`text` made fit to be part of a name a write may create: in NFC, each folder
    separator, control character, backslash or disguising character (see `target`) made
    `-`, what has no UTF-8 form (the lone surrogates of undecodable bytes in an
    environment variable) made `?`, and cut to `limit` UTF-8 bytes (a device's name in a
    conflicted copy's name)."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    plain = _DISGUISING.sub("-", _FORBIDDEN.sub("-", text.replace("/", "-")))
    return utf8_prefix(unicodedata.normalize("NFC", plain), limit)


def length_problem(path: str, limit: int = MAX_PATH_BYTES) -> str | None:
    """Why `path` is too long (its UTF-8 bytes or its key's over `limit`; by default, too
    long to store in a namespace), else None."""
    if len(path.encode("utf-8")) > limit:
        return f"longer than {limit} bytes"
    if len(path_key(path).encode("utf-8")) > limit:
        return f"longer than {limit} bytes once case-folded"
    return None


def path_key(path: str) -> str:
    """The comparison key of a canonical path: NFC + case fold (NFC again after folding)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def parent(path: str) -> str:
    """The parent of a canonical path ("/" for top-level names and for the root)."""
    head = path.rsplit("/", 1)[0]
    return head or ROOT


def name(path: str) -> str:
    """The last component ("" for the root)."""
    return path.rsplit("/", 1)[1] if path != ROOT else ""


def join(base: str, rel: str) -> str:
    """`base` + `rel`, both canonical; `rel` is "/"-rooted relative to `base`."""
    if rel == ROOT:
        return base
    if base == ROOT:
        return rel
    return base + rel


def ancestors(path: str) -> list[str]:
    """Every proper ancestor below the root, outermost first: /a/b/c → [/a, /a/b]."""
    parts = path.split("/")[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def is_within(path: str, base: str) -> bool:
    """True when `path` is `base` or below it (compare keys with keys, displays with displays)."""
    return base == ROOT or path == base or path.startswith(base + "/")


def relative(path: str, base: str) -> str:
    """`path` relative to `base` as a "/"-rooted path ("/" when equal). Needs `path` within
    `base` by key: the two may be spelled differently, even in length (case folding turns
    "ß" into "ss"), so `base`'s components are cut off, not its characters."""
    if base == ROOT:
        return path
    rest = path.split("/")[base.count("/") + 1 :]
    return "/" + "/".join(rest) if rest else ROOT


def utf8_prefix(text: str, limit: int) -> str:
    """The longest start of `text` that is at most `limit` UTF-8 bytes (never half a
    character): for names that grow a suffix and must stay within MAX_NAME_BYTES."""
    return text.encode()[: max(limit, 0)].decode("utf-8", "ignore")


def subtree_range(key: str) -> tuple[str, str]:
    """Half-open key range [lo, hi) of everything strictly below `key` (C collation)."""
    prefix = ROOT if key == ROOT else key + "/"
    return prefix, prefix[:-1] + "0"  # "0" is the code point after "/"
