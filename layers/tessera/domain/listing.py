"""list_folder / continue / longpoll (DESIGN §4-§6) over opaque, signed cursors.

A listing covers a folder of the caller's view, which may span several namespaces (the one
holding the folder, and with `recursive` every shared folder mounted below it). The cursor
holds, per namespace, the journal seq reached and — while the first listing is still being
paged — the last path key sent. Journal rows are absolute states, so replaying them from
the seq a snapshot started at is always correct. The cursor also holds the caller's
membership version: when a share appears or disappears, `continue` sends the new mount
point with everything in it, or a `deleted` entry for the mount that went away.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

from tessera.domain import paths
from tessera.domain.errors import InvalidCursor, InvalidPath, NotFound, Unprocessable
from tessera.domain.models import (
    DeletedEntry,
    Entry,
    FileEntry,
    FolderEntry,
    ListFolderResponse,
    LongpollRequest,
    LongpollResponse,
)
from tessera.domain.services import Services
from tessera.domain.views import (
    View,
    entry_names,
    file_entry,
    folder_entry,
    mount_entry,
    mount_file_id,
    view_transaction,
)
from tessera.metadata.store import FileRow, JournalRow, KeyScope, MountRow, Store
from tessera.ports import KeyService, Principal

# c2: the JSON is compressed (zlib) and keeps its non-ASCII text as UTF-8: a mount named in
# emoji took 12 bytes a character escaped, and sixty such shares made a cursor too long to
# send back. c1 (plain, escaped JSON) is still read.
_VERSION = "c2"
_READABLE_VERSIONS = ("c1", "c2")


@dataclass
class _Part:
    """One namespace of a listing and how far the caller has got in it."""

    ns: int
    mount: str  # mount path (display) of the namespace in the caller's view
    folder: str  # ns-relative key of the listed folder ("/" for a whole mounted namespace)
    seq: int  # journal seq reached
    snap: str | None  # snapshot in progress: last path key sent ("" = not started); else None
    point: bool  # only the mount point itself is listed (non-recursive parent listing)
    show_mount: bool  # the snapshot starts with the mount point's folder entry


@dataclass
class _Cursor:
    user: str
    path: str  # the listed view path (canonical display)
    recursive: bool
    membership: int
    parts: list[_Part]
    root: list[int]  # [root ns, seq]: the caller's root is always watched (mount changes)
    more: bool  # the page that made this cursor had more to send
    issued: int = 0  # when it was encoded (epoch s); cursors from before the field: 0


# ---------------------------------------------------------------------------------------
# Cursor encoding


def _cursor_key(keys: KeyService, version: int) -> bytes:
    return hmac.new(keys.secret(version), b"tessera list_folder cursor", hashlib.sha256).digest()


def encode_cursor(keys: KeyService, cursor: _Cursor, now: datetime) -> str:
    """`c2.<key version>.<payload>.<hmac>` (base64url): opaque and tamper-proof, stamped
    with the time `now` it is issued at."""
    version = keys.current_version()
    fields = {**asdict(cursor), "issued": int(now.timestamp())}
    raw = zlib.compress(json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode())
    payload = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    body = f"{_VERSION}.{version}.{payload}"
    sig = hmac.new(_cursor_key(keys, version), body.encode(), hashlib.sha256).digest()
    return body + "." + base64.urlsafe_b64encode(sig).decode().rstrip("=")


def decode_cursor(keys: KeyService, text: str, user_id: str) -> _Cursor:
    """The cursor behind `text`, checked: signature first, then that it is the caller's."""
    try:
        tag, version_text, payload, sig = text.split(".")
        if tag not in _READABLE_VERSIONS:
            raise ValueError("unknown cursor version")
        version = int(version_text)
        if not keys.knows(version):  # before loading it: on AWS, a forged one cost SSM calls
            raise ValueError("unknown key version")
        key = _cursor_key(keys, version)
        want = hmac.new(key, f"{tag}.{version_text}.{payload}".encode(), hashlib.sha256).digest()
        given = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    except (ValueError, KeyError, binascii.Error) as exc:
        raise InvalidCursor("the cursor is malformed or was not issued by this server") from exc
    if not hmac.compare_digest(want, given):
        raise InvalidCursor("the cursor is malformed or was not issued by this server")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    # signed by this server, so never a decompression bomb
    data: dict[str, Any] = json.loads(zlib.decompress(raw) if tag == "c2" else raw)
    cursor = _Cursor(**{**data, "parts": [_Part(**p) for p in data["parts"]]})
    if cursor.user != user_id:
        raise InvalidCursor("the cursor belongs to another user")
    return cursor


# ---------------------------------------------------------------------------------------
# Scope


def _scope(store: Store, view: View, path: str, recursive: bool) -> list[_Part]:
    """The namespaces a listing of `path` covers, in the order entries are sent: the one
    holding the folder first, then mounts below it (by path)."""
    mount, rel = view.resolve(path)
    key = paths.path_key(path)
    if rel != paths.ROOT:
        row = store.file_by_path(mount.ns_id, paths.path_key(rel))
        if row is None:
            raise NotFound(f"nothing at {path!r}")
        if row.kind != "folder":
            raise Unprocessable(f"{path!r} is a file, not a folder")
    parts = [_Part(mount.ns_id, mount.mount_path, paths.path_key(rel), 0, "", False, False)]
    for m in view.mounts_below(key):
        if recursive:
            parts.append(_Part(m.ns_id, m.mount_path, paths.ROOT, 0, "", False, True))
        elif paths.parent(m.mount_key) == key:
            parts.append(_Part(m.ns_id, m.mount_path, paths.ROOT, 0, "", True, True))
    return parts


def _key_scope(part: _Part, recursive: bool) -> KeyScope:
    folder = part.folder
    return KeyScope(
        folder_key=folder,
        ancestors=tuple(paths.ancestors(folder)) if folder != paths.ROOT else (),
        subtree=paths.subtree_range(folder) if recursive else None,
    )


def _mount_row(view: View, part: _Part) -> MountRow:
    m = view.mount_of(part.ns)
    assert m is not None  # parts are rebuilt whenever the view's mounts change
    return m


def _row_entry(view: View, mount: MountRow, row: FileRow) -> FileEntry | FolderEntry:
    return file_entry(view, mount, row) if row.kind == "file" else folder_entry(view, mount, row)


def _journal_entry(view: View, mount: MountRow, j: JournalRow) -> Entry:
    names = entry_names(view.view_path(mount, j.path_display))
    if j.op == "delete":
        return DeletedEntry(**names)
    if j.kind == "folder":
        shared = int(j.file_id[3:]) if j.file_id.startswith("ns:") else None
        # a mount point's row is logged again when the member's access changes: the entry
        # carries the access the caller has now, as a snapshot's `mount_entry` does
        shared_mount = view.mount_of(shared) if shared is not None else None
        return FolderEntry(
            **names,
            file_id=j.file_id,
            ns_id=j.ns_id,
            shared_ns_id=shared,
            access=shared_mount.access if shared_mount else None,  # type: ignore[arg-type]
        )
    assert j.size is not None and j.content_hash is not None
    return FileEntry(
        **names,
        file_id=j.file_id,
        rev=j.rev,
        size=j.size,
        content_hash=j.content_hash,
        mtime=j.mtime,
        server_modified=j.created_at,
        ns_id=j.ns_id,
    )


# What a page's entries may come to on the wire, about: a Lambda answer holds at most 6 MB,
# and 2,000 entries of long non-Latin paths (each path twice, and the name) came to 8.7 MB
# once escaped (`\uXXXX`, then escaped again in Lambda's envelope): a 5xx for the same
# page on every retry, a listing that never ended. Pages of short paths never meet it.
PAGE_BYTES = 4 * 1024 * 1024
# An entry's fixed fields (tag, ids, rev, size, hash, times) on the wire, with room to spare
_ENTRY_BYTES = 400


class Named(Protocol):
    """An entry of an answer, by the names it carries (a listing's, the trash's)."""

    name: str
    path_display: str
    path_lower: str


def _wire_bytes(entry: Named) -> int:
    """An upper bound of `entry`'s size in a Lambda answer: a UTF-8 byte of its names can
    take up to 4 there (a 2-byte letter is 6 escaped, 7 in the envelope)."""
    names = (entry.name, entry.path_display, entry.path_lower)
    return _ENTRY_BYTES + 4 * sum(len(s.encode("utf-8", "surrogatepass")) for s in names)


class PageBudget:
    """The entries a page may still take, by count and by bytes (at least one a page)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count, self.bytes = limit, 0, 0

    @property
    def room(self) -> int:
        return self.limit - self.count

    def take(self, entries: Sequence[Named]) -> int:
        """How many of `entries`, in order, the page takes (counted in)."""
        taken = 0
        for entry in entries[: self.room]:
            size = _wire_bytes(entry)
            if self.count and self.bytes + size > PAGE_BYTES:
                break
            self.count, self.bytes, taken = self.count + 1, self.bytes + size, taken + 1
        return taken


def _page(store: Store, view: View, cursor: _Cursor, limit: int) -> list[Entry]:
    """Send up to `limit` entries (fewer when they would pass `PAGE_BYTES`), advancing
    `cursor` in place."""
    entries: list[Entry] = []
    budget = PageBudget(limit)
    heads = store.latest_seqs([p.ns for p in cursor.parts] + [view.root.ns_id])
    more = False
    for part in cursor.parts:
        mount = _mount_row(view, part)
        if part.snap is not None:
            if part.snap == "" and part.show_mount:
                entry = mount_entry(mount)
                if not budget.take([entry]):  # no room for it on this page
                    more = True
                    break
                entries.append(entry)
                # sent: a page that ends right after it must not send it again (with
                # limit=1 every page was that entry alone, and the listing never ended)
                part.show_mount = False
            if part.point:
                part.snap = None
                continue
            rows = store.list_page(
                part.ns,
                _key_scope(part, cursor.recursive),
                after_key=part.snap,
                limit=budget.room + 1,
            )
            fresh = [_row_entry(view, mount, r) for r in rows[: budget.room]]
            taken = budget.take(fresh)
            entries += fresh[:taken]
            if taken < len(rows):
                part.snap = rows[taken - 1].path_key if taken else part.snap
                more = True
                break
            part.snap = None
        if part.point:
            continue
        jrows = store.journal_after(
            part.ns, part.seq, _key_scope(part, cursor.recursive), limit=budget.room + 1
        )
        news = [_journal_entry(view, mount, j) for j in jrows[: budget.room]]
        taken = budget.take(news)
        entries += news[:taken]
        if taken < len(jrows):
            if taken:
                part.seq = jrows[taken - 1].seq
            more = True
            break
        part.seq = heads.get(part.ns, part.seq)
    cursor.root = [view.root.ns_id, heads.get(view.root.ns_id, 0)]
    cursor.more = more
    return entries


def _limit(svc: Services, limit: int | None) -> int:
    return min(limit or svc.settings.list_limit, svc.settings.list_limit)


def list_folder(
    svc: Services, principal: Principal, path: str, recursive: bool, limit: int | None
) -> ListFolderResponse:
    """The entries of a folder (or its whole subtree) and a cursor for what comes next."""
    canon = paths.canonical(path)
    with view_transaction(svc, principal, repeatable_read=True) as (store, view):
        parts = _scope(store, view, canon, recursive)
        heads = store.latest_seqs([p.ns for p in parts])
        for p in parts:
            p.seq = heads.get(p.ns, 0)
        cursor = _Cursor(
            view.user.user_id,
            canon,
            recursive,
            view.user.membership_version,
            parts,
            [view.root.ns_id, 0],
            False,
        )
        entries = _page(store, view, cursor, _limit(svc, limit))
    return _page_answer(svc, entries, cursor)


def _rescope(store: Store, view: View, cursor: _Cursor) -> list[Entry]:
    """Follow a change of the caller's mounts: drop namespaces that left the view (a
    `deleted` entry for their mount point), snapshot the ones that joined it.

    A namespace unmounted and mounted again since the cursor (the caller left and was
    added back) is snapshotted again too, even at the same path: the caller's root
    journal sends its mount point's `deleted` entry, which takes everything under it on
    the client, and the namespace's own journal holds only what changed since. So is one
    mounted at another path: what was sent lies under the old one.

    When the listed folder itself lies inside a namespace snapshotted again, no journal
    the listing reads holds that mount point: the listed folder's own `deleted` entry
    comes first, else what was deleted while the caller was away stayed on the client."""
    try:
        fresh = _scope(store, view, cursor.path, cursor.recursive)
    except (NotFound, Unprocessable):
        # The listed folder itself went away: read on in the namespaces still mounted where
        # they were, whose journals hold its deletion (and what comes there next). Dropped
        # all, the listing went dead, and one inside a share sent the whole mount deleted.
        fresh = [p for p in cursor.parts if _mounted_at(view, p)]
        # and in the one the path leads into now (a share left, the caller's own folders):
        # else a listing inside a share the caller left learnt nothing made there again
        here = _part_where_it_leads(view, cursor.path)
        if here is not None and all(p.ns != here.ns for p in fresh):
            fresh.insert(0, here)
    old = {p.ns: p for p in cursor.parts}
    new_ids = {p.ns for p in fresh}
    removed: list[Entry] = []
    for p in cursor.parts:
        if p.ns not in new_ids and p.mount != paths.ROOT:
            removed.append(DeletedEntry(**entry_names(p.mount)))
    heads = store.latest_seqs([p.ns for p in fresh])
    root_ns, root_seq = cursor.root
    unmounted = store.deleted_since(
        root_ns, root_seq, [mount_file_id(p.ns) for p in fresh if p.ns in old]
    )
    parts = []
    for p in fresh:
        kept = old.get(p.ns)
        if (
            kept is not None
            and (kept.folder, kept.mount) == (p.folder, p.mount)
            and mount_file_id(p.ns) not in unmounted
        ):
            parts.append(kept)
        else:
            p.seq = heads.get(p.ns, 0)
            parts.append(p)
    if parts and parts[0] is fresh[0] and not _covered(cursor.path, removed):
        removed.append(DeletedEntry(**entry_names(cursor.path)))
    cursor.parts = parts
    cursor.membership = view.user.membership_version
    return removed


def _part_where_it_leads(view: View, path: str) -> _Part | None:
    """A part listing `path` in the namespace it leads into now, where nothing is yet (so
    what is made there comes by the journal); None when the path is too long there."""
    try:
        mount, rel = view.resolve(path)
    except InvalidPath:
        return None
    return _Part(mount.ns_id, mount.mount_path, paths.path_key(rel), 0, "", False, False)


def _mounted_at(view: View, part: _Part) -> bool:
    """Whether the part's namespace is still in the view, mounted where the part has it."""
    mount = view.mount_of(part.ns)
    return mount is not None and mount.mount_path == part.mount


def _covered(path: str, deleted: list[Entry]) -> bool:
    """`path` is the root, or lies in a folder among `deleted` (gone on the client)."""
    key = paths.path_key(path)
    return path == paths.ROOT or any(
        key == e.path_lower or key.startswith(e.path_lower + "/") for e in deleted
    )


def list_folder_continue(
    svc: Services, principal: Principal, cursor_text: str, limit: int | None
) -> ListFolderResponse:
    """What changed since the cursor (or the next page of a listing)."""
    cursor = decode_cursor(svc.keys, cursor_text, principal.user_id)
    with view_transaction(svc, principal, repeatable_read=True) as (store, view):
        entries: list[Entry] = []
        if cursor.membership != view.user.membership_version:
            entries = _rescope(store, view, cursor)
        entries += _page(store, view, cursor, max(_limit(svc, limit) - len(entries), 1))
    return _page_answer(svc, entries, cursor)


def _page_answer(svc: Services, entries: list[Entry], cursor: _Cursor) -> ListFolderResponse:
    """A page of a listing and the cursor that continues it."""
    return ListFolderResponse(
        entries=entries,
        cursor=encode_cursor(svc.keys, cursor, svc.clock.now()),
        has_more=cursor.more,
    )


@dataclass(frozen=True)
class LongpollPlan:
    """What a long-poll waits for: `watch` (ns -> seq reached) for `timeout` seconds.

    `ready` means changes are already pending: answer at once. The local gateway awaits
    `feed.wait_async(watch, timeout)` itself, so an idle long-poll holds no thread.
    """

    watch: dict[int, int]
    timeout: float
    backoff: int | None
    ready: bool = False


def plan_longpoll(svc: Services, principal: Principal, req: LongpollRequest) -> LongpollPlan:
    """Validate the cursor and decide what to wait for (no database access)."""
    cursor = decode_cursor(svc.keys, req.cursor, principal.user_id)
    settings = svc.settings
    backoff = settings.longpoll_backoff_s or None
    timeout = min(max(float(req.timeout), settings.longpoll_min_s), settings.longpoll_max_s)
    # A cursor older than the change feed's memory (the DynamoDB table keeps 7 days) could
    # wait for ever on changes the feed no longer holds: the caller lists instead.
    aged = svc.clock.now().timestamp() - cursor.issued > settings.longpoll_cursor_max_age_s
    if aged or cursor.more or any(p.snap is not None for p in cursor.parts):
        return LongpollPlan(watch={}, timeout=timeout, backoff=backoff, ready=True)
    watch = {p.ns: p.seq for p in cursor.parts if not p.point}
    root_ns, root_seq = cursor.root
    watch[root_ns] = min(watch.get(root_ns, root_seq), root_seq)
    return LongpollPlan(watch=watch, timeout=timeout, backoff=backoff)


def longpoll(svc: Services, principal: Principal, req: LongpollRequest) -> LongpollResponse:
    """Wait until something changes after the cursor, or the (clamped) timeout passes.

    Answered from the change feed alone: the metadata database is not touched."""
    plan = plan_longpoll(svc, principal, req)
    changed = plan.ready or svc.feed.wait(plan.watch, plan.timeout)
    return LongpollResponse(changes=changed, backoff=plan.backoff)
