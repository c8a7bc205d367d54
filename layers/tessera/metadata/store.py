"""The queries of the metadata service, one method each, over one open transaction.

Rows come back as small frozen dataclasses; the domain never sees SQL. Every method that
takes a namespace takes its `ns_id` first (the shard key).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tessera.metadata.locks import LockClass
from tessera.ports import ChangeEvent

NOTIFY_CHANNEL = "tessera_changes"

_FILE_COLS = (
    "f.ns_id, f.file_id, f.path_key, f.path_display, f.kind, f.latest_rev, f.is_deleted,"
    " f.deleted_at"
)
_VERSION_COLS = "v.size, v.content_hash, v.mtime, v.server_time"


def _path_hash(path_key: str) -> bytes:
    """What a session's part-uploaded file is keyed by (migration 118): its view path key
    may be longer than a btree entry can be."""
    return hashlib.sha256(path_key.encode()).digest()


@dataclass(frozen=True)
class UserRow:
    """A user and their root namespace."""

    user_id: str
    email: str
    root_ns_id: int
    quota_bytes: int
    membership_version: int


@dataclass(frozen=True)
class MountRow:
    """One namespace of a user's view: where it is mounted and with which access."""

    ns_id: int
    mount_path: str
    mount_key: str
    access: str
    kind: str
    name: str
    owner_id: str


@dataclass(frozen=True)
class VersionInfo:
    """What an entry shows of a file version."""

    size: int
    content_hash: str
    mtime: datetime | None
    server_time: datetime


@dataclass(frozen=True)
class FileRow:
    """A file or folder, with its latest version (files only) joined in."""

    ns_id: int
    file_id: str
    path_key: str
    path_display: str
    kind: str
    latest_rev: int
    is_deleted: bool
    deleted_at: datetime | None
    version: VersionInfo | None = None


@dataclass(frozen=True)
class VersionRow:
    """One version of a file."""

    ns_id: int
    file_id: str
    rev: int
    size: int
    content_hash: str
    mtime: datetime | None
    server_time: datetime
    path_display: str


@dataclass(frozen=True)
class VersionBlockRow:
    """A block of a version, with the block's state and the key version to decode it."""

    ordinal: int
    block_id: str
    size: int
    staged_key: str | None
    state: str
    key_version: int
    staged_state: str | None  # the staged copy's state (upload_blocks) when staged_key is set


@dataclass(frozen=True)
class BlockReport:
    """A user's report of a block: when, and when scrub checked it (None: still to)."""

    reported_at: datetime
    checked_at: datetime | None
    new: bool  # this report queued the check (else one was queued, or done a moment ago)


@dataclass(frozen=True)
class ReadableBlock:
    """A block the caller can already read, and the staged copy to reuse if not yet live."""

    block_id: str
    size: int
    state: str
    staged_key: str | None


@dataclass(frozen=True)
class UploadRow:
    """An upload session."""

    upload_id: str
    user_id: str
    state: str
    expires_at: datetime


@dataclass(frozen=True)
class UploadFileRow:
    """A file of an upload session whose block list comes in parts, and how far it got."""

    size: int
    content_hash: str
    block_count: int
    block_bytes: int


@dataclass(frozen=True)
class UploadBlockRow:
    """A block an upload session expects, and its staged copy."""

    block_id: str
    size: int
    key_version: int
    stored_size: int | None
    sha256: str | None
    staged_key: str
    state: str


@dataclass(frozen=True)
class SessionReads:
    """A commit's reads of the caller's upload session (`Store.session_for_commits`)."""

    session: UploadRow | None  # FOR SHARE until the transaction ends
    expected: dict[str, UploadBlockRow]  # its expected blocks among those asked for


@dataclass(frozen=True)
class CommitReads:
    """What a commit reads once it holds its namespace (`Store.lock_for_commit`)."""

    kinds: dict[str, tuple[str, str]]  # path_key → (kind, path_display) of live parents
    readable: dict[str, ReadableBlock]  # the blocks a version in the caller's view holds
    session: UploadRow | None  # the caller's session, FOR SHARE until the transaction ends,
    # so gc cannot expire it (and delete its staged copies) meanwhile
    expected: dict[str, UploadBlockRow]  # the session's expected blocks among them
    # the caller's `membership_version` as of the lock: a share or unshare that committed
    # since the caller's view was read changes it (the view may route the path wrongly)
    membership_version: int | None = None


@dataclass(frozen=True)
class WrittenVersion:
    """What `Store.write_version` wrote."""

    server_time: datetime
    created: set[str]  # block ids whose `blocks` row this version created
    event: ChangeEvent
    over_quota: bool  # the version grew its author's usage past their quota
    # blocks quarantined by the time this version's refcount bump got their row: scrub
    # took them while the commit ran (it waits for the row, then sees the new state)
    quarantined: set[str]


@dataclass(frozen=True)
class JournalRow:
    """One change in a namespace, an absolute state (see migration 001)."""

    ns_id: int
    seq: int
    file_id: str
    rev: int
    op: str
    kind: str
    path_key: str
    path_display: str
    size: int | None
    content_hash: str | None
    mtime: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class NewJournal:
    """A journal row to append (the seq is assigned by `append_journal`)."""

    file_id: str
    rev: int
    op: str
    kind: str
    path_key: str
    parent_key: str
    path_display: str
    size: int | None = None
    content_hash: str | None = None
    mtime: datetime | None = None


@dataclass(frozen=True)
class MemberRow:
    """A member of a namespace."""

    user_id: str
    email: str
    access: str
    mount_path: str


@dataclass(frozen=True)
class InviteRow:
    """An invitation to a shared namespace, not yet accepted or declined."""

    ns_id: int
    user_id: str
    email: str
    access: str
    invited_at: datetime


@dataclass(frozen=True)
class InvitationRow:
    """An invitation as its invitee sees it: the folder's name and who owns it."""

    ns_id: int
    name: str
    owner_id: str
    owner_email: str
    access: str
    invited_at: datetime


@dataclass(frozen=True)
class KeyScope:
    """What a listing covers in one namespace: the children of `folder_key` or, with
    `subtree` set to its [lo, hi) key range, everything below it."""

    folder_key: str
    ancestors: tuple[str, ...]
    subtree: tuple[str, str] | None

    def sql(self, alias: str) -> tuple[str, list[Any]]:
        """The WHERE fragment and its parameters."""
        if self.subtree is not None:
            return f"({alias}.path_key >= %s AND {alias}.path_key < %s)", list(self.subtree)
        return f"{alias}.parent_key = %s", [self.folder_key]


def _view(rows: Sequence[Sequence[Any]]) -> tuple[UserRow, list[MountRow]] | None:
    """A user and their mounts from rows of `_USER_VIEW_SQL`; None when there are none."""
    if not rows:
        return None
    return UserRow(*rows[0][:5]), [MountRow(*r[5:]) for r in rows]


def _file(row: Sequence[Any]) -> FileRow:
    version = None
    if len(row) > 8 and row[8] is not None:
        version = VersionInfo(row[8], row[9], row[10], row[11])
    return FileRow(*row[:8], version=version)  # type: ignore[misc]


# `ns<N>-<seq>-<write>`: the key, and a token of this write (`_journal_params`). The key
# alone would name a new event the same as an old one when a seq is handed out again (a
# database restored to an earlier point): the change table would take it for the event it
# holds, and its bus consumers would never see it. With the token it refuses it (relay:
# outbox_dead, an alarm).
_EVENT_ID = "'ns' || %(ns)s || '-' || ns.latest_seq || '-' || %(write)s"


# Bump the namespace's seq, append the journal rows, write the outbox row (CTEs); then queue
# the NOTIFY (delivered at COMMIT). One statement. `guard` names a CTE that must have
# returned a row for anything to be written (`nf`: the new file row).
def _journal_ctes(guard: str | None = None, grow: str | None = None) -> str:
    """The CTEs `ns` (the namespace row: seq moved on by the rows, `bytes_used` by the SQL
    expression `grow`), `j` (the journal rows) and `o` (the outbox row)."""
    when = f" AND EXISTS (SELECT 1 FROM {guard})" if guard else ""
    usage = f", bytes_used = bytes_used + ({grow})" if grow else ""
    return (
        f"ns AS (UPDATE namespaces SET latest_seq = latest_seq + %(n)s{usage}"
        f"  WHERE ns_id = %(ns)s{when} RETURNING latest_seq, bytes_used),"
        " j AS (INSERT INTO journal (ns_id, seq, file_id, rev, op, kind, path_key,"
        "  parent_key, path_display, size, content_hash, mtime)"
        "  SELECT %(ns)s, ns.latest_seq - %(n)s + t.o, t.f, t.r, t.op, t.k, t.pk, t.par,"
        "  t.pd, t.sz, t.ch, t.mt FROM ns, jsonb_to_recordset(%(rows)s::jsonb) AS t(o bigint,"
        "  f text, r bigint, op text, k text, pk text, par text, pd text, sz bigint, ch text,"
        "  mt timestamptz)),"
        " o AS (INSERT INTO outbox (ns_id, seq, event_id, kind, payload)"
        f"  SELECT %(ns)s, ns.latest_seq, {_EVENT_ID}, %(kind)s,"
        "  %(payload)s::jsonb || jsonb_build_object('ns_id', %(ns)s::bigint,"
        f"  'seq', ns.latest_seq, 'event_id', {_EVENT_ID})"
        "  FROM ns)"
    )


_NOTIFY = (
    "pg_notify(%(chan)s, json_build_object('ns_id', %(ns)s::bigint, 'seq', ns.latest_seq)::text)"
)
_JOURNAL_SQL = f"WITH {_journal_ctes()} SELECT ns.latest_seq, {_NOTIFY} FROM ns"

# A version's rows, after the journal CTEs: every part reads `ns`, so nothing is written
# when the journal's guard held it back. A reused block counts as read (`last_access`),
# else cold storage could move the blocks of a version just committed; at most once an
# hour, as `Store.touch_blocks`: `last_access` is indexed (cold candidates), and an
# unchanged value keeps the refcount bump a HOT update.
_VERSION_CTES = (
    " v AS (INSERT INTO file_versions (ns_id, file_id, rev, size, content_hash, author_id,"
    "  mtime, journal_seq, path_display) SELECT %(ns)s, %(fid)s, %(rev)s, %(size)s,"
    "  %(hash)s, %(author)s, %(mtime)s, ns.latest_seq, %(pd)s FROM ns RETURNING server_time),"
    " vb AS (INSERT INTO version_blocks (ns_id, file_id, rev, ordinal, block_id, size,"
    "  staged_key) SELECT %(ns)s, %(fid)s, %(rev)s, t.o, t.b, t.s, t.k"
    "  FROM ns, jsonb_to_recordset(%(vblocks)s::jsonb) AS t(o int, b text, s int, k text)),"
    " b AS (INSERT INTO blocks (block_id, size, key_version, refcount, state)"
    "  SELECT t.b, t.s, t.k, t.c, 'staged' FROM ns, jsonb_to_recordset(%(refs)s::jsonb)"
    "  AS t(b text, s int, k int, c bigint) ORDER BY t.b"
    "  ON CONFLICT (block_id) DO UPDATE SET refcount = blocks.refcount + EXCLUDED.refcount,"
    "  zero_since = NULL, last_access = CASE WHEN blocks.last_access >= now() - interval"
    "  '1 hour' THEN blocks.last_access ELSE now() END, updated_at = now()"
    "  RETURNING block_id, xmax = 0 AS fresh, state)"
)


# When a statement run with its namespace held happened: its own start, one value for all
# its rows. Not now(), the transaction's start, taken before it queued for the namespace:
# a delete begun before the owner was left alone in a shared folder and done after was
# stamped as deleted before (`sharing._keep_trash_private` compares the two), and whoever
# she let in next restored it; a member's delete done before she was alone, stamped after,
# was taken from him. Each stamp now follows the namespace lock's order.
_STAMP_HELD = "statement_timestamp()"


def _over_quota(grow: str) -> str:
    """True when the SQL expression `grow` (bytes a write added to the namespace `ns`) is
    positive and the writer (`%(writer)s`) is now over their quota: the namespace's new
    `bytes_used`, whoever owns it, plus the writer's own other namespaces. Never the
    owner's usage: an editor checked against it could measure the owner's private files by
    the sizes they write. A user's quota holds what they own; writing into a folder shared
    with them needs room in it for that folder too, and nothing they cannot read.
    Writers in one namespace queue on its row; one writer's writes in two namespaces read
    each other's bytes only when they queued on `Store.lock_usage` before this statement
    (its snapshot is taken after the wait)."""
    return (
        f"({grow}) > 0 AND (SELECT quota_bytes FROM users WHERE user_id = %(writer)s)"
        " < ns.bytes_used + (SELECT COALESCE(sum(o.bytes_used), 0) FROM namespaces o"
        "  WHERE o.owner_id = %(writer)s AND o.ns_id <> %(ns)s)"
    )


def _version_result(grow: str) -> str:
    return (
        " SELECT ns.latest_seq, (SELECT server_time FROM v),"
        f" ARRAY(SELECT block_id FROM b WHERE fresh), {_over_quota(grow)},"
        f" ARRAY(SELECT block_id FROM b WHERE state = 'quarantined'), {_NOTIFY} FROM ns"
    )


# The bytes a new version of an existing file adds: its size, less the size of the version
# it supersedes when the file was live (the statement's snapshot still shows that one).
_GROW_BY_VERSION = (
    "%(size)s - COALESCE((SELECT fv.size FROM files f0 JOIN file_versions fv"
    " ON fv.ns_id = f0.ns_id AND fv.file_id = f0.file_id AND fv.rev = f0.latest_rev"
    " WHERE f0.ns_id = %(ns)s AND f0.file_id = %(fid)s AND NOT f0.is_deleted), 0)"
)

# A commit's writes in one statement: the journal CTEs, the version's rows, the file's rev.
_WRITE_VERSION_SQL = (
    f"WITH g AS (SELECT {_GROW_BY_VERSION} AS grow),"
    f" {_journal_ctes(grow='SELECT grow FROM g')},{_VERSION_CTES},"
    " f AS (UPDATE files SET latest_rev = %(rev)s, is_deleted = false, deleted_at = NULL,"
    "  deleted_by = NULL WHERE ns_id = %(ns)s AND file_id = %(fid)s)"
    + _version_result("SELECT grow FROM g")
)

# The same for a file that does not exist yet: its row is inserted first, and when a live
# entry already holds the path, the statement writes nothing and returns no row.
_WRITE_NEW_FILE_SQL = (
    "WITH nf AS (INSERT INTO files (ns_id, file_id, path_key, parent_key, path_display, kind,"
    "  latest_rev) VALUES (%(ns)s, %(fid)s, %(key)s, %(parent)s, %(pd)s, 'file', %(rev)s)"
    "  ON CONFLICT (ns_id, path_key) WHERE NOT is_deleted DO NOTHING RETURNING file_id),"
    f" {_journal_ctes('nf', grow='%(size)s')},{_VERSION_CTES}" + _version_result("%(size)s")
)

# The statements above without their NOTIFY (`Store.notify` off), column for column.
_QUIET = {
    sql: sql.replace(_NOTIFY, "NULL")
    for sql in (_JOURNAL_SQL, _WRITE_VERSION_SQL, _WRITE_NEW_FILE_SQL)
}

# The bytes of the live files among entries just changed (`d`: file_id, latest_rev, kind).
_LIVE_BYTES = (
    "SELECT COALESCE(sum(v.size), 0) FROM d JOIN file_versions v ON v.ns_id = %(ns)s"
    " AND v.file_id = d.file_id AND v.rev = d.latest_rev WHERE d.kind = 'file'"
)


def _journal_params(
    ns_id: int, rows: Sequence[NewJournal], kind: str, payload: dict[str, Any]
) -> dict[str, Any]:
    # Rows travel as one JSON document: far cheaper to encode than ten arrays.
    return {
        "n": len(rows),
        "ns": ns_id,
        "rows": Jsonb(
            [
                {
                    "o": i,
                    "f": r.file_id,
                    "r": r.rev,
                    "op": r.op,
                    "k": r.kind,
                    "pk": r.path_key,
                    "par": r.parent_key,
                    "pd": r.path_display,
                    "sz": r.size,
                    "ch": r.content_hash,
                    "mt": r.mtime.isoformat() if r.mtime else None,
                }
                for i, r in enumerate(rows, 1)
            ]
        ),
        "kind": kind,
        "payload": Jsonb(payload),
        "chan": NOTIFY_CHANNEL,
        "write": secrets.token_hex(6),
    }


def _journal_result(
    params: dict[str, Any], last: int, payload: dict[str, Any]
) -> tuple[list[int], ChangeEvent]:
    """The seqs and the event of a journal write made with `params` (`_journal_params`),
    whose last seq is `last`."""
    ns_id, n = params["ns"], params["n"]
    event_id = f"ns{ns_id}-{last}-{params['write']}"  # as _EVENT_ID
    full = {**payload, "ns_id": ns_id, "seq": last, "event_id": event_id}
    event = ChangeEvent(event_id, ns_id, last, params["kind"], full, announced=True)
    return list(range(last - n + 1, last + 1)), event


# One probe per (namespace, block): the newest-sorting row of the index
# version_blocks_by_block, where a verified row (staged_key NULL) comes first, so the cost
# does not grow with the number of versions naming the block (migrations 102, 105).
# Every lookup is a LATERAL subquery with LIMIT or OFFSET, which the planner cannot turn
# into a join: the plan stays one index probe per block whatever the statistics say. As
# joins, the generic plan psycopg prepares on a young, never-analyzed database scanned
# `blocks` (and `upload_blocks`) whole for every commit, and kept doing so as they grew:
# a 1,000-file sync into a fresh deployment read 8 M rows of `blocks`.
# A block a namespace holds only through an unverified staged copy (its probe's first row
# is staged: verified rows sort first) counts only for writes into that namespace. Any
# editor of a shared folder can commit garbage under a block id; counted everywhere, it
# would tie a member's commit into their own root to that copy, and dedup-verify would then
# quarantine the block under their version.
def _readable_sql(ns_ids: str = "%(ns_ids)s::bigint[]", target: str = "%(target)s::bigint") -> str:
    """The probe for the blocks `%(ids)s` in the namespaces of the SQL array `ns_ids`, for
    a write into the namespace `target`."""
    return (
        "SELECT DISTINCT ON (q.block_id) q.block_id, r.size, b.state, r.staged_key"
        f" FROM unnest({ns_ids}) AS n(ns_id)"
        " CROSS JOIN unnest(%(ids)s::text[]) AS q(block_id)"
        " CROSS JOIN LATERAL (SELECT b.state FROM blocks b WHERE b.block_id = q.block_id"
        "  AND b.state <> 'quarantined' LIMIT 1) AS b"
        " CROSS JOIN LATERAL (SELECT vb.size, vb.staged_key FROM version_blocks vb"
        "  WHERE vb.ns_id = n.ns_id AND vb.block_id = q.block_id"
        "  AND NOT EXISTS (SELECT 1 FROM upload_blocks ub WHERE ub.staged_key = vb.staged_key"
        "   AND ub.state = 'quarantined' OFFSET 0)"
        "  ORDER BY vb.staged_key DESC NULLS FIRST LIMIT 1) AS r"
        f" WHERE r.staged_key IS NULL OR n.ns_id = {target}"
        " ORDER BY q.block_id, (r.staged_key IS NULL) DESC"
    )


_READABLE_SQL = _readable_sql()


# A commit's reads, in one statement: take the namespace row (see `Store.lock_namespace`),
# and read the live entries at its parent keys and the blocks its view can read. Also the
# namespace's seq twice: as the statement's snapshot saw it, and as locked. Reads see the
# snapshot taken when the statement began, so when another writer committed in the
# namespace while this one waited for the lock, the two differ and the reads are redone.
def _lock_and_read_sql(ns: str = "%(ns)s", ns_ids: str = "%(ns_ids)s::bigint[]") -> str:
    """The statement for the namespace of the SQL expression `ns`, in a view whose
    namespaces are the SQL array `ns_ids`."""
    return (
        f"WITH lk AS (SELECT latest_seq FROM namespaces WHERE ns_id = {ns} FOR UPDATE),"
        f" r AS ({_readable_sql(ns_ids, ns)})"
        " SELECT (SELECT latest_seq FROM lk), seen.latest_seq, k.keys, k.kinds, k.displays,"
        "  rb.ids, rb.sizes, rb.states, rb.staged,"
        "  (SELECT membership_version FROM users WHERE user_id = %(user)s)"
        f" FROM (SELECT latest_seq FROM namespaces WHERE ns_id = {ns}) AS seen"
        " CROSS JOIN (SELECT array_agg(path_key) AS keys, array_agg(kind) AS kinds,"
        f"  array_agg(path_display) AS displays FROM files WHERE ns_id = {ns}"
        "  AND path_key = ANY(%(keys)s::text[]) AND NOT is_deleted) AS k"
        " CROSS JOIN (SELECT array_agg(block_id) AS ids, array_agg(size) AS sizes,"
        "  array_agg(state) AS states, array_agg(staged_key) AS staged FROM r) AS rb"
    )


_LOCK_AND_READ_SQL = _lock_and_read_sql()

# A user and their mounts, root first (`Store.user_view`).
_USER_VIEW_SQL = (
    "SELECT u.user_id, u.email, u.root_ns_id, u.quota_bytes, u.membership_version,"
    " m.ns_id, m.mount_path, m.mount_key, m.access, n.kind, n.name, n.owner_id"
    " FROM users u JOIN ns_members m ON m.user_id = u.user_id"
    " JOIN namespaces n ON n.ns_id = m.ns_id"
    " WHERE u.user_id = %(user)s AND u.root_ns_id IS NOT NULL"
)
# Unqualified: the names are unambiguous in the view query and in a CTE over it alike.
_USER_VIEW_ORDER = " ORDER BY (kind <> 'root'), mount_key"
_VIEW_COLUMNS = 12

# The view, and when it holds only the user's root namespace (no shared folder: any path is
# in the root), a commit's lock and reads on that namespace in the same statement.
_VIEW_LOCKING_ROOT_SQL = (
    f"WITH v AS ({_USER_VIEW_SQL}),"
    " solo AS (SELECT ns_id FROM v WHERE (SELECT count(*) FROM v) = 1)"
    " SELECT v.*, lr.* FROM v LEFT JOIN LATERAL ("
    + _lock_and_read_sql("(SELECT ns_id FROM solo)", "ARRAY(SELECT ns_id FROM solo)")
    + ") AS lr ON true"
    + _USER_VIEW_ORDER
)
_UPLOAD_SQL = (
    "SELECT upload_id, user_id, state, expires_at FROM upload_sessions"
    " WHERE upload_id = %s AND user_id = %s"
)
_UPLOAD_BLOCKS_SQL = (
    "SELECT block_id, size, key_version, stored_size, sha256, staged_key, state"
    " FROM upload_blocks WHERE upload_id = %s AND block_id = ANY(%s)"
)


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows of `width` values as columns, each a list (empty ones for no rows): the arrays
    an `unnest(...)` takes."""
    return [list(column) for column in zip(*rows, strict=True)] or [[] for _ in range(width)]


def _session_values(sent: tuple[Any, Any] | None) -> SessionReads:
    """The results of `Store._session_reads`'s cursors (None: no session asked for)."""
    if sent is None:
        return SessionReads(None, {})
    session_cur, expected_cur = sent
    session_row = session_cur.fetchone()
    expected = expected_cur.fetchall() if expected_cur is not None else []
    return SessionReads(
        session=UploadRow(*session_row) if session_row else None,
        expected={r[0]: UploadBlockRow(*r) for r in expected},
    )


class Store:
    """Data access inside one transaction (from `Database.transaction()`).

    With `notify` (the local cloud: its change feed listens), a journal write NOTIFYs
    `NOTIFY_CHANNEL`. Without (AWS: the feed is DynamoDB, and nothing listens), it does
    not: PostgreSQL serialises the commits of every transaction that sent a NOTIFY on one
    database-wide lock, for a wake-up no one was waiting for."""

    def __init__(self, conn: psycopg.Connection[Any], *, notify: bool = True) -> None:
        self.conn = conn
        self.notify = notify

    def _notifying(self, sql: str) -> str:
        """`sql` as it is, or without its NOTIFY (a NULL in its place) when not `notify`."""
        return sql if self.notify else _QUIET[sql]

    def _one(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        return self.conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        return self.conn.execute(sql, params).fetchall()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: an exception inside rolls back only what it did."""
        with self.conn.transaction():
            yield

    # -- users and views ------------------------------------------------------------------

    def get_user(self, user_id: str) -> UserRow | None:
        """The user, or None before their first request."""
        row = self._one(
            "SELECT user_id, email, root_ns_id, quota_bytes, membership_version"
            " FROM users WHERE user_id = %s",
            (user_id,),
        )
        return UserRow(*row) if row and row[2] is not None else None

    def user_by_email(self, email: str) -> UserRow | None:
        """The user with `email` (case-insensitive)."""
        row = self._one(
            "SELECT user_id, email, root_ns_id, quota_bytes, membership_version"
            " FROM users WHERE email_key = %s",
            (email.strip().lower(),),
        )
        return UserRow(*row) if row and row[2] is not None else None

    def create_user(self, user_id: str, email: str, quota_bytes: int) -> bool:
        """Provision a user with a root namespace; False if the user id or the email exists."""
        row = self._one(
            "INSERT INTO users (user_id, email, email_key, quota_bytes) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING user_id",
            (user_id, email, email.strip().lower(), quota_bytes),
        )
        if row is None:
            return False
        ns_id = self.create_namespace("root", user_id, "")
        self.add_member(ns_id, user_id, "owner", "/", "/")
        self.conn.execute("UPDATE users SET root_ns_id = %s WHERE user_id = %s", (ns_id, user_id))
        return True

    def user_view(self, user_id: str) -> tuple[UserRow, list[MountRow]] | None:
        """A user and their mounts (root first, then by mount key) in one query."""
        return _view(self._all(_USER_VIEW_SQL + _USER_VIEW_ORDER, {"user": user_id}))

    def view_for_commit(
        self,
        user_id: str,
        parent_keys: Sequence[str],
        *,
        block_ids: Sequence[str],
        upload_id: str | None,
    ) -> tuple[tuple[UserRow, list[MountRow]] | None, CommitReads | None]:
        """`user_view`, and when the user sees only their root namespace, `lock_for_commit`
        on it, for a commit at a root path with `parent_keys` — the lock and the reads in
        the view's own statement: one round trip less for every user without a shared
        folder. The reads are None when the user has shared folders (nothing is locked
        then: the commit resolves its path and calls `lock_for_commit`)."""
        ids = list(block_ids)
        params = {"user": user_id, "keys": list(parent_keys), "ids": ids}
        rows = self._all(_VIEW_LOCKING_ROOT_SQL, params)
        view = _view([r[:_VIEW_COLUMNS] for r in rows])
        if view is None or len(rows) != 1 or rows[0][_VIEW_COLUMNS] is None:
            return view, None
        root = view[0].root_ns_id
        rerun = {**params, "ns": root, "ns_ids": [root]}
        session = self.session_for_commits(upload_id, user_id, ids)
        return view, self._commit_reads(rows[0][_VIEW_COLUMNS:], rerun, session)

    def bump_membership(self, user_id: str) -> None:
        """Record that a user's set of mounts changed (their cursors notice)."""
        self.conn.execute(
            "UPDATE users SET membership_version = membership_version + 1 WHERE user_id = %s",
            (user_id,),
        )

    # -- namespaces and members -----------------------------------------------------------

    def create_namespace(self, kind: str, owner_id: str, name: str) -> int:
        """A new namespace; returns its id."""
        return int(
            self._one(
                "INSERT INTO namespaces (kind, owner_id, name) VALUES (%s, %s, %s) RETURNING ns_id",
                (kind, owner_id, name),
            )[0]
        )

    def add_member(
        self, ns_id: int, user_id: str, access: str, mount_path: str, mount_key: str
    ) -> None:
        """Add or update a member (an existing member keeps their mount point)."""
        self.conn.execute(
            "INSERT INTO ns_members (ns_id, user_id, access, mount_path, mount_key)"
            " VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (ns_id, user_id) DO UPDATE SET access = EXCLUDED.access",
            (ns_id, user_id, access, mount_path, mount_key),
        )

    def remove_member(self, ns_id: int, user_id: str) -> MemberRow | None:
        """Remove a member; returns the removed row."""
        row = self._one(
            "DELETE FROM ns_members m USING users u WHERE m.ns_id = %s AND m.user_id = %s"
            " AND u.user_id = m.user_id RETURNING m.user_id, u.email, m.access, m.mount_path",
            (ns_id, user_id),
        )
        return MemberRow(*row) if row else None

    def mark_alone(self, ns_id: int) -> None:
        """Note the moment a shared namespace's owner is left its only member (kept while
        she stays alone in it: the first moment counts). Called with the namespace held;
        stamped then (`_STAMP_HELD`), as `mark_deleted` stamps what it deletes."""
        self.conn.execute(
            f"UPDATE namespaces SET alone_since = {_STAMP_HELD} WHERE ns_id = %s"
            " AND alone_since IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM ns_members WHERE ns_id = %s AND access <> 'owner')",
            (ns_id, ns_id),
        )

    def end_alone(self, ns_id: int) -> datetime | None:
        """Forget when the owner was left alone in a namespace; when that was (None: she
        never was, or not since the column exists)."""
        row = self._one(
            "UPDATE namespaces n SET alone_since = NULL FROM namespaces o"
            " WHERE n.ns_id = %s AND o.ns_id = n.ns_id RETURNING o.alone_since",
            (ns_id,),
        )
        return row[0] if row else None

    def members(self, ns_id: int) -> list[MemberRow]:
        """Members of a namespace, owner first."""
        rows = self._all(
            "SELECT m.user_id, u.email, m.access, m.mount_path FROM ns_members m"
            " JOIN users u USING (user_id) WHERE m.ns_id = %s"
            " ORDER BY (m.access <> 'owner'), u.email_key",
            (ns_id,),
        )
        return [MemberRow(*r) for r in rows]

    # -- invitations (a share not yet accepted) -------------------------------------------

    def invite(self, ns_id: int, user_id: str, access: str) -> None:
        """Invite a user into a namespace, or change the access a pending invitation gives."""
        self.conn.execute(
            "INSERT INTO share_invites (ns_id, user_id, access) VALUES (%s, %s, %s)"
            " ON CONFLICT (ns_id, user_id) DO UPDATE SET access = EXCLUDED.access",
            (ns_id, user_id, access),
        )

    def remove_invite(self, ns_id: int, user_id: str) -> InviteRow | None:
        """Delete a pending invitation; returns it (None: there was none)."""
        row = self._one(
            "DELETE FROM share_invites i USING users u WHERE i.ns_id = %s AND i.user_id = %s"
            " AND u.user_id = i.user_id"
            " RETURNING i.ns_id, i.user_id, u.email, i.access, i.invited_at",
            (ns_id, user_id),
        )
        return InviteRow(*row) if row else None

    def remove_invites(self, ns_id: int) -> None:
        """Delete every pending invitation into a namespace."""
        self.conn.execute("DELETE FROM share_invites WHERE ns_id = %s", (ns_id,))

    def invitees(self, ns_id: int) -> list[InviteRow]:
        """The pending invitations into a namespace, by email."""
        rows = self._all(
            "SELECT i.ns_id, i.user_id, u.email, i.access, i.invited_at FROM share_invites i"
            " JOIN users u USING (user_id) WHERE i.ns_id = %s ORDER BY u.email_key",
            (ns_id,),
        )
        return [InviteRow(*r) for r in rows]

    def invitation_count(self, user_id: str, *, owner_id: str | None = None) -> int:
        """How many invitations wait for a user (from `owner_id`'s folders only, when given)."""
        row = self._one(
            "SELECT count(*) FROM share_invites i JOIN namespaces n USING (ns_id)"
            " WHERE i.user_id = %(user)s AND (%(owner)s::text IS NULL OR n.owner_id = %(owner)s)",
            {"user": user_id, "owner": owner_id},
        )
        return int(row[0]) if row else 0

    def alone_since(self, ns_id: int) -> datetime | None:
        """Since when a shared namespace's owner is its only member (None: others are in it,
        or she never was alone since the column exists)."""
        row = self._one("SELECT alone_since FROM namespaces WHERE ns_id = %s", (ns_id,))
        return row[0] if row else None

    def invitations(
        self, user_id: str, limit: int, *, ns_id: int | None = None, owner_email: str | None = None
    ) -> list[InvitationRow]:
        """A user's pending invitations (into `ns_id` only, or from the owner of that email
        only, when given), oldest first, at most `limit` of them."""
        rows = self._all(
            "SELECT i.ns_id, n.name, o.user_id, o.email, i.access, i.invited_at"
            " FROM share_invites i JOIN namespaces n USING (ns_id)"
            " JOIN users o ON o.user_id = n.owner_id"
            " WHERE i.user_id = %(user)s AND (%(ns)s::bigint IS NULL OR i.ns_id = %(ns)s)"
            " AND (%(owner)s::text IS NULL OR o.email_key = %(owner)s)"
            " ORDER BY i.invited_at, i.ns_id LIMIT %(limit)s",
            {
                "user": user_id,
                "ns": ns_id,
                "owner": None if owner_email is None else owner_email.strip().lower(),
                "limit": limit,
            },
        )
        return [InvitationRow(*r) for r in rows]

    def mount_keys(self, user_id: str) -> set[str]:
        """Every mount key of a user (to find a free mount point)."""
        rows = self._all("SELECT mount_key FROM ns_members WHERE user_id = %s", (user_id,))
        return {r[0] for r in rows}

    def lock_for_commit(
        self,
        ns_id: int,
        parent_keys: Sequence[str],
        *,
        ns_ids: Sequence[int],
        block_ids: Sequence[str],
        upload_id: str | None,
        user_id: str,
        session: SessionReads | None = None,
        lock_usage: bool = False,
    ) -> CommitReads:
        """Take the namespace row (`lock_namespace`), then read what a commit checks: the
        live entries at `parent_keys`, which of `block_ids` a version in `ns_ids` holds,
        and the caller's upload session (locked FOR SHARE) with its expected blocks, unless
        `session` holds them already (`session_for_commits`: a batch reads them once).

        The lock and the first two reads are one statement, where they were three round
        trips. Its reads come from the snapshot the statement began with; when another
        writer committed in the namespace while this one waited for the lock (the seq as
        locked is not the seq as seen), the statement runs again: with the lock held, its
        new snapshot is current.
        Every statement is sent before a result is read, so in a pipelined transaction (a
        batch) they all cost one round trip. `lock_usage`: first queue on the caller's
        usage (`Store.lock_usage`), in the same round trip."""
        ids = list(block_ids)
        params = {
            "ns": ns_id,
            "keys": list(parent_keys),
            "ns_ids": list(ns_ids),
            "ids": ids,
            "user": user_id,
        }
        # pipelined, the usage lock travels with the reads (nested in a batch's own: the same)
        with self.conn.pipeline() if lock_usage else nullcontext():
            if lock_usage:
                self.lock_usage(user_id)
            reads = self.conn.execute(_LOCK_AND_READ_SQL, params)
            sent = None if session else self._session_reads(upload_id, user_id, ids)
            return self._commit_reads(reads.fetchone(), params, session or _session_values(sent))

    def session_for_commits(
        self, upload_id: str | None, user_id: str, block_ids: Sequence[str]
    ) -> SessionReads:
        """The session reads of `lock_for_commit`, once for many commits of one session:
        its row (FOR SHARE) and its expected rows of `block_ids`.
        A batch's commits change none of what they check (staging a block only moves its
        row from expected to staged)."""
        return _session_values(self._session_reads(upload_id, user_id, list(block_ids)))

    def _session_reads(
        self, upload_id: str | None, user_id: str, block_ids: list[str]
    ) -> tuple[Any, Any] | None:
        """Send the reads of the caller's upload session (its row FOR SHARE, its expected
        blocks among `block_ids`, FOR KEY SHARE); their cursors, unread.

        A commit may name a copy an earlier commit of the session staged, and dedup-verify
        settles copies under the row's FOR UPDATE: with the row locked, this commit either
        lands first (and dedup repoints its version too) or reads the copy as dedup left
        it (`commits._check_blocks`), never one settled meanwhile. KEY SHARE, not SHARE:
        it must not hold back the plain UPDATEs of the rows (staging them, recording a
        URL's checksum), which a commit of the same session holding its namespace's lock
        may be waiting to make while this one waits for that lock."""
        if upload_id is None:
            return None
        session = self.conn.execute(_UPLOAD_SQL + " FOR SHARE", (upload_id, user_id))
        # sent with the session's read, before anyone looks at it: only the caller's own
        # (another user's upload_id had its rows locked, its staged copies asked about,
        # and rows made for its blocks, before the entry's 404)
        expected = (
            self.conn.execute(
                _UPLOAD_BLOCKS_SQL + " AND EXISTS (SELECT 1 FROM upload_sessions s"
                " WHERE s.upload_id = upload_blocks.upload_id AND s.user_id = %s)"
                " ORDER BY block_id FOR KEY SHARE",
                (upload_id, block_ids, user_id),
            )
            if block_ids
            else None
        )
        return session, expected

    def _commit_reads(
        self, row: Sequence[Any] | None, params: dict[str, Any], session: SessionReads
    ) -> CommitReads:
        """`CommitReads` from a row of `_lock_and_read_sql` (run again with `params` when
        stale) and the session's reads."""
        if row is not None and row[0] != row[1]:  # stale: run it again, the lock now held
            row = self._one(_LOCK_AND_READ_SQL, params)
        columns = [c or () for c in row[2:9]] if row else [()] * 7
        kinds = {k: (kind, display) for k, kind, display in zip(*columns[:3], strict=True)}
        readable = {b[0]: ReadableBlock(*b) for b in zip(*columns[3:], strict=True)}
        return CommitReads(
            kinds=kinds,
            readable=readable,
            session=session.session,
            expected=session.expected,
            membership_version=row[9] if row else None,
        )

    def bump_seq(self, ns_id: int) -> None:
        """Move a namespace's seq on without a journal row, so a commit that read the
        namespace before waiting for its lock reads again once it has it (`_commit_reads`),
        and sees the membership change made under that lock: a seq is all it compares.
        Cursors and long-polls take a gap in the seqs as nothing to list."""
        self.conn.execute(
            "UPDATE namespaces SET latest_seq = latest_seq + 1 WHERE ns_id = %s", (ns_id,)
        )

    def lock_namespace(self, ns_id: int) -> None:
        """Take the namespace row until the transaction ends.

        Lock order: every write takes its namespace row before any file row (each write
        bumps the namespace's seq, so writes in one namespace serialize on it anyway), so
        two writers never hold each other's next lock."""
        # Not fetched: in pipeline mode the lock travels with the caller's next query.
        self.conn.execute("SELECT 1 FROM namespaces WHERE ns_id = %s FOR UPDATE", (ns_id,))

    def lock_usage(self, user_id: str) -> None:
        """Queue behind every other write of this user that adds to their usage, until the
        transaction ends: a transaction-scoped advisory lock on the user.

        A write checks its writer's quota against the namespace written and the writer's
        own others (`_over_quota`), but it locks only the namespace written: two writes of
        one user in two namespaces (her root, a shared folder) each saw room for one more
        file and both committed, past the quota. Taken before the namespace (lock order:
        usage, namespace, file rows); a holder then only waits for rows, never for another
        usage lock, so a writer waiting here holds nothing a holder needs. A round trip of
        its own outside pipeline mode."""
        # Not fetched: in pipeline mode the lock travels with the caller's next query.
        self.conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LockClass.USAGE, user_id)
        )

    def latest_seqs(self, ns_ids: Sequence[int]) -> dict[int, int]:
        """The latest journal seq of each namespace."""
        rows = self._all(
            "SELECT ns_id, latest_seq FROM namespaces WHERE ns_id = ANY(%s)", (list(ns_ids),)
        )
        return {r[0]: r[1] for r in rows}

    # -- files ----------------------------------------------------------------------------

    def file_by_path(self, ns_id: int, key: str, *, lock: bool = False) -> FileRow | None:
        """The live file or folder at `key`, with its latest version; `lock` takes the row."""
        sql = (
            f"SELECT {_FILE_COLS}, {_VERSION_COLS} FROM files f"
            " LEFT JOIN file_versions v ON v.ns_id = f.ns_id AND v.file_id = f.file_id"
            " AND v.rev = f.latest_rev"
            " WHERE f.ns_id = %s AND f.path_key = %s AND NOT f.is_deleted"
        )
        row = self._one(sql + (" FOR UPDATE OF f" if lock else ""), (ns_id, key))
        return _file(row) if row else None

    def deleted_by_path(self, ns_id: int, key: str) -> FileRow | None:
        """The most recently deleted file or folder that was at `key`."""
        row = self._one(
            f"SELECT {_FILE_COLS}, {_VERSION_COLS} FROM files f"
            " LEFT JOIN file_versions v ON v.ns_id = f.ns_id AND v.file_id = f.file_id"
            " AND v.rev = f.latest_rev"
            " WHERE f.ns_id = %s AND f.path_key = %s AND f.is_deleted"
            " ORDER BY f.deleted_at DESC LIMIT 1",
            (ns_id, key),
        )
        return _file(row) if row else None

    def file_by_id(self, file_id: str, *, lock: bool = False) -> FileRow | None:
        """The file or folder with `file_id` (live or deleted), in whatever namespace."""
        sql = (
            f"SELECT {_FILE_COLS}, {_VERSION_COLS} FROM files f"
            " LEFT JOIN file_versions v ON v.ns_id = f.ns_id AND v.file_id = f.file_id"
            " AND v.rev = f.latest_rev WHERE f.file_id = %s"
        )
        row = self._one(sql + (" FOR UPDATE OF f" if lock else ""), (file_id,))
        return _file(row) if row else None

    def kinds_at(self, ns_id: int, keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """path_key → (kind, path_display) of the live entries among `keys`."""
        rows = self._all(
            "SELECT path_key, kind, path_display FROM files WHERE ns_id = %s"
            " AND path_key = ANY(%s) AND NOT is_deleted",
            (ns_id, list(keys)),
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    def live_sizes(self, ns_id: int, keys: Sequence[str]) -> dict[str, int]:
        """path_key → size of the latest version of the live files among `keys`."""
        rows = self._all(
            "SELECT f.path_key, v.size FROM files f JOIN file_versions v ON v.ns_id = f.ns_id"
            " AND v.file_id = f.file_id AND v.rev = f.latest_rev"
            " WHERE f.ns_id = %s AND f.path_key = ANY(%s) AND NOT f.is_deleted",
            (ns_id, list(keys)),
        )
        return {r[0]: r[1] for r in rows}

    def insert_file(
        self,
        ns_id: int,
        file_id: str,
        key: str,
        parent_key: str,
        display: str,
        kind: str,
        rev: int = 0,
    ) -> bool:
        """Create a live entry; False when a live entry already holds the path."""
        row = self._one(
            "INSERT INTO files (ns_id, file_id, path_key, parent_key, path_display, kind,"
            " latest_rev) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (ns_id, path_key) WHERE NOT is_deleted DO NOTHING RETURNING file_id",
            (ns_id, file_id, key, parent_key, display, kind, rev),
        )
        return row is not None

    def live_path_taken(self, ns_id: int, key: str) -> bool:
        """True when a live entry holds `key`."""
        return (
            self._one(
                "SELECT 1 FROM files WHERE ns_id = %s AND path_key = %s AND NOT is_deleted",
                (ns_id, key),
            )
            is not None
        )

    def holds_trash(self, ns_id: int, key: str, lo: str, hi: str) -> bool:
        """True when a deleted entry holds `key` or lies in the key range below it [lo, hi)
        (`paths.subtree_range(key)`; index `files_deleted_path`)."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM files WHERE ns_id = %s AND is_deleted"
            " AND (path_key = %s OR (path_key >= %s AND path_key < %s)))",
            (ns_id, key, lo, hi),
        ).fetchone()
        return bool(row and row[0])

    def subtree(self, ns_id: int, lo: str, hi: str, *, deleted: bool = False) -> list[FileRow]:
        """Entries strictly below a folder (key range from `paths.subtree_range`), by key.

        `deleted` selects the deleted entries instead of the live ones.
        """
        # The state is spelled out, not a parameter: each has its own partial index, and a
        # generic plan for `is_deleted = $4` could use neither.
        state = "f.is_deleted" if deleted else "NOT f.is_deleted"
        return self._subtree_rows(ns_id, lo, hi, state, ())

    def deleted_along(self, ns_id: int, lo: str, hi: str, deleted_at: datetime) -> list[FileRow]:
        """The deleted entries of a key range that were deleted at `deleted_at` (with their
        folder) and whose path no live entry holds since: what undeleting the folder brings
        back, by key. One query, where the domain asked about each entry in a round trip of its
        own."""
        return self._subtree_rows(
            ns_id,
            lo,
            hi,
            "f.is_deleted AND f.deleted_at = %s AND NOT EXISTS (SELECT 1 FROM files l"
            " WHERE l.ns_id = f.ns_id AND l.path_key = f.path_key AND NOT l.is_deleted)",
            (deleted_at,),
        )

    def drop_merged_folders(
        self, ns_id: int, key: str, lo: str, hi: str, deleted_at: datetime
    ) -> None:
        """Remove the deleted folders at `key` and in the key range below it [lo, hi) that
        were deleted at `deleted_at` and whose path a live folder holds: an undelete merged
        them into it, and they leave the trash (they hold no versions)."""
        self.conn.execute(
            "DELETE FROM files f WHERE f.ns_id = %s AND f.is_deleted AND f.kind = 'folder'"
            " AND f.deleted_at = %s AND (f.path_key = %s OR (f.path_key >= %s AND f.path_key < %s))"
            " AND EXISTS (SELECT 1 FROM files l WHERE l.ns_id = f.ns_id"
            " AND l.path_key = f.path_key AND NOT l.is_deleted AND l.kind = 'folder')",
            (ns_id, deleted_at, key, lo, hi),
        )

    def _subtree_rows(
        self, ns_id: int, lo: str, hi: str, where: str, params: Sequence[Any]
    ) -> list[FileRow]:
        rows = self._all(
            f"SELECT {_FILE_COLS}, {_VERSION_COLS} FROM files f"
            " LEFT JOIN file_versions v ON v.ns_id = f.ns_id AND v.file_id = f.file_id"
            " AND v.rev = f.latest_rev"
            f" WHERE f.ns_id = %s AND f.path_key >= %s AND f.path_key < %s AND {where}"
            " ORDER BY f.path_key",
            (ns_id, lo, hi, *params),
        )
        return [_file(r) for r in rows]

    def holds_entries(self, ns_id: int, lo: str, hi: str) -> bool:
        """Whether any live entry lies in the key range [lo, hi) of a namespace."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM files WHERE ns_id = %s AND path_key >= %s"
            " AND path_key < %s AND NOT is_deleted)",
            (ns_id, lo, hi),
        ).fetchone()
        return bool(row and row[0])

    def list_page(
        self, ns_id: int, scope: KeyScope, *, after_key: str, limit: int
    ) -> list[FileRow]:
        """Live entries in `scope` (children, or the whole subtree) after `after_key`."""
        where, params = scope.sql("f")
        rows = self._all(
            f"SELECT {_FILE_COLS}, {_VERSION_COLS} FROM files f"
            " LEFT JOIN file_versions v ON v.ns_id = f.ns_id AND v.file_id = f.file_id"
            " AND v.rev = f.latest_rev"
            f" WHERE f.ns_id = %s AND {where} AND NOT f.is_deleted AND f.path_key > %s"
            " ORDER BY f.path_key LIMIT %s",
            [ns_id, *params, after_key, limit],
        )
        return [_file(r) for r in rows]

    def mark_deleted(self, ns_id: int, file_ids: Sequence[str], user_id: str) -> None:
        """Soft-delete live entries (they go to the trash, which counts for no quota), with
        their namespace held: stamped then (`_STAMP_HELD`), all with one `deleted_at`."""
        self.conn.execute(
            f"WITH d AS (UPDATE files SET is_deleted = true, deleted_at = {_STAMP_HELD},"
            " deleted_by = %(user)s WHERE ns_id = %(ns)s AND file_id = ANY(%(ids)s)"
            " AND NOT is_deleted RETURNING file_id, latest_rev, kind)"
            f" UPDATE namespaces SET bytes_used = bytes_used - ({_LIVE_BYTES})"
            " WHERE ns_id = %(ns)s",
            {"user": user_id, "ns": ns_id, "ids": list(file_ids)},
        )

    def undelete(self, ns_id: int, file_ids: Sequence[str], user_id: str) -> tuple[set[str], bool]:
        """Make deleted entries live again, for `user_id`: (the ids that came back, whether
        that took the user over their quota, see `write_version`). An entry gc purged since
        it was read is not among them."""
        # joined, not `file_id = ANY(ids)`: under generic plans (migration 111) PostgreSQL
        # took the trash index and tested each of its rows against the whole array, not a
        # hash of it (a hash is only built for a constant array): 2.2 s for 20,000 entries.
        row = self._one(
            "WITH d AS (UPDATE files f SET is_deleted = false, deleted_at = NULL,"
            " deleted_by = NULL FROM unnest(%(ids)s::text[]) AS i(file_id)"
            " WHERE f.ns_id = %(ns)s AND f.file_id = i.file_id AND f.is_deleted"
            " RETURNING f.file_id, f.latest_rev, f.kind),"
            f" g AS ({_LIVE_BYTES}),"
            " ns AS (UPDATE namespaces SET bytes_used = bytes_used + (SELECT * FROM g)"
            "  WHERE ns_id = %(ns)s RETURNING bytes_used)"
            f" SELECT (SELECT array_agg(file_id) FROM d), {_over_quota('SELECT * FROM g')}"
            " FROM ns",
            {"ns": ns_id, "ids": list(file_ids), "writer": user_id},
        )
        if row is None:
            return set(), False
        return set(row[0] or ()), bool(row[1])

    def rename(self, ns_id: int, renames: Sequence[tuple[str, str, str, str]]) -> None:
        """Change entries' paths (a move keeps file_id and history): (file_id, path_key,
        parent_key, path_display) each, in one statement, where a statement per entry took
        2 s to move a folder of 20,000. No entry may take a path another of them leaves
        (unique index on the live paths, checked row by row): a move's never do."""
        self.conn.execute(
            "UPDATE files f SET path_key = r.key, parent_key = r.parent, path_display = r.display"
            " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
            " AS r(file_id, key, parent, display)"
            " WHERE f.ns_id = %s AND f.file_id = r.file_id",
            (*_columns(renames, 4), ns_id),
        )

    def move_to_namespace(
        self,
        from_ns: int,
        to_ns: int,
        file_ids: Sequence[str],
        key_chars: int,
        depth: int,
        *,
        under: tuple[str, str] = ("", ""),
    ) -> None:
        """Move entries (with their versions and block lists) to another namespace, cutting
        the folder that becomes the new namespace's root off their paths: its `key_chars`
        characters off their path keys, its `depth` components off their display paths (an
        entry deleted before the folder was renamed may spell it differently, even in
        length: case folding turns "ß" into "ss"). `under` (key, display path of a folder)
        puts them below that folder instead: a namespace's root turning back into a folder."""
        ids = list(file_ids)
        under_key, under_display = under
        self.conn.execute(
            "UPDATE files SET ns_id = %(to)s, path_key = %(uk)s || substr(path_key, %(cut)s + 1),"
            " path_display = %(ud)s || '/'"
            "  || array_to_string((string_to_array(path_display, '/'))[%(depth)s:], '/'),"
            " parent_key = CASE WHEN length(parent_key) <= %(cut)s OR parent_key = '/'"
            "  THEN coalesce(nullif(%(uk)s, ''), '/')"
            "  ELSE %(uk)s || substr(parent_key, %(cut)s + 1) END"
            " WHERE ns_id = %(from)s AND file_id = ANY(%(ids)s)",
            {
                "to": to_ns,
                "uk": under_key,
                "ud": under_display,
                "cut": key_chars,
                "depth": depth + 2,  # 1-based, after the empty string before the leading "/"
                "from": from_ns,
                "ids": ids,
            },
        )
        self.conn.execute(
            "UPDATE file_versions SET ns_id = %s WHERE ns_id = %s AND file_id = ANY(%s)",
            (to_ns, from_ns, ids),
        )
        self.conn.execute(
            "UPDATE version_blocks SET ns_id = %s WHERE ns_id = %s AND file_id = ANY(%s)",
            (to_ns, from_ns, ids),
        )
        self.conn.execute(  # the live files' bytes go along
            "WITH d AS (SELECT file_id, latest_rev, kind FROM files WHERE ns_id = %(ns)s"
            f" AND file_id = ANY(%(ids)s) AND NOT is_deleted), moved AS ({_LIVE_BYTES})"
            " UPDATE namespaces SET bytes_used = bytes_used"
            " + CASE WHEN ns_id = %(ns)s THEN 1 ELSE -1 END * (SELECT * FROM moved)"
            " WHERE ns_id IN (%(ns)s, %(from)s)",
            {"ns": to_ns, "from": from_ns, "ids": ids},
        )

    def delete_entry(self, ns_id: int, file_id: str) -> None:
        """Remove a folder row outright (a folder turned into a mount point)."""
        self.conn.execute("DELETE FROM files WHERE ns_id = %s AND file_id = %s", (ns_id, file_id))

    def trash(self, scopes: Sequence[tuple[int, str, str]], limit: int) -> list[FileRow]:
        """The `limit` most recently deleted entries of all the scopes (ns_id, and a key
        range in it), newest first: each scope's newest by the trash index, then one sort."""
        rows = self._all(
            "SELECT t.* FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS s(ns, lo, hi)"
            " CROSS JOIN LATERAL ("
            f" SELECT {_FILE_COLS}, {_VERSION_COLS}, f.deleted_at AS at, f.path_key AS k"
            " FROM files f LEFT JOIN file_versions v ON v.ns_id = f.ns_id"
            " AND v.file_id = f.file_id AND v.rev = f.latest_rev"
            " WHERE f.ns_id = s.ns AND f.is_deleted AND f.path_key >= s.lo AND f.path_key < s.hi"
            " ORDER BY f.deleted_at DESC, f.path_key LIMIT %s) AS t"
            " ORDER BY t.at DESC, t.k LIMIT %s",
            (*_columns(scopes, 3), limit, limit),
        )
        return [_file(r[:-2]) for r in rows]

    # -- versions and blocks --------------------------------------------------------------

    def version(self, ns_id: int, file_id: str, rev: int) -> VersionRow | None:
        """One version of a file."""
        row = self._one(
            "SELECT ns_id, file_id, rev, size, content_hash, mtime, server_time, path_display"
            " FROM file_versions WHERE ns_id = %s AND file_id = %s AND rev = %s",
            (ns_id, file_id, rev),
        )
        return VersionRow(*row) if row else None

    def versions(self, ns_id: int, file_id: str, limit: int) -> list[VersionRow]:
        """Versions of a file, newest first."""
        rows = self._all(
            "SELECT ns_id, file_id, rev, size, content_hash, mtime, server_time, path_display"
            " FROM file_versions WHERE ns_id = %s AND file_id = %s ORDER BY rev DESC LIMIT %s",
            (ns_id, file_id, limit),
        )
        return [VersionRow(*r) for r in rows]

    def version_blocks(
        self,
        ns_id: int,
        file_id: str,
        rev: int,
        first: int = 0,
        limit: int | None = None,
        *,
        block_id: str | None = None,
    ) -> list[VersionBlockRow]:
        """The ordered blocks of a version (from block number `first`, at most `limit`;
        only those of `block_id` if given) with their state and key versions: a verified
        (promoted or dropped) staged copy is served as the canonical block, so with the
        block's key version, not the copy's (they differ after a key rotation)."""
        rows = self._all(
            "SELECT vb.ordinal, vb.block_id, vb.size, vb.staged_key, b.state,"
            " CASE WHEN ub.state IN ('promoted', 'dropped') THEN b.key_version"
            " ELSE COALESCE(ub.key_version, b.key_version) END, ub.state"
            " FROM version_blocks vb JOIN blocks b USING (block_id)"
            " LEFT JOIN upload_blocks ub ON ub.staged_key = vb.staged_key"
            " AND ub.block_id = vb.block_id"
            " WHERE vb.ns_id = %(ns)s AND vb.file_id = %(fid)s AND vb.rev = %(rev)s"
            " AND vb.ordinal >= %(first)s"
            " AND (%(limit)s::int IS NULL OR vb.ordinal < %(first)s + %(limit)s)"
            " AND (%(bid)s::text IS NULL OR vb.block_id = %(bid)s)"
            " ORDER BY vb.ordinal",
            {
                "ns": ns_id,
                "fid": file_id,
                "rev": rev,
                "first": first,
                "limit": limit,
                "bid": block_id,
            },
        )
        return [VersionBlockRow(*r) for r in rows]

    def version_offset(self, ns_id: int, file_id: str, rev: int, ordinal: int) -> int:
        """Where block number `ordinal` of a version begins: the bytes of the blocks before."""
        row = self._one(
            "SELECT COALESCE(sum(size), 0) FROM version_blocks"
            " WHERE ns_id = %s AND file_id = %s AND rev = %s AND ordinal < %s",
            (ns_id, file_id, rev, ordinal),
        )
        return int(row[0])

    def readable_blocks(
        self, ns_ids: Sequence[int], block_ids: Sequence[str], *, target: int
    ) -> dict[str, ReadableBlock]:
        """Which of `block_ids` a version in one of `ns_ids` holds (the (ns_id, block_id)
        index) for a write into namespace `target`, with the block's state; quarantined
        blocks are left out, and so are those held only through an unverified staged copy
        of a namespace other than `target`."""
        if not block_ids:
            return {}
        params = {"ns_ids": list(ns_ids), "ids": list(block_ids), "target": target}
        rows = self._all(_READABLE_SQL, params)
        return {r[0]: ReadableBlock(*r) for r in rows}

    def write_version(
        self,
        ns_id: int,
        file_id: str,
        rev: int,
        *,
        size: int,
        content_hash: str,
        author_id: str,
        mtime: datetime | None,
        path_display: str,
        blocks: Sequence[tuple[str, int, str | None]],
        refs: Sequence[tuple[str, int, int, int]],
        journal: Sequence[NewJournal],
        payload: dict[str, Any],
        create: tuple[str, str] | None = None,
    ) -> WrittenVersion | None:
        """Version `rev` of a file, in one statement: the journal rows (+ outbox, NOTIFY, as
        `append_journal`), the version, its ordered block list (id, size, staged_key),
        refcounts bumped by `refs` (block_id, size, key_version, count; new blocks start
        staged; rows touched in block-id order so commits never deadlock), and the file's
        latest rev.

        `create` = (path_key, parent_key) inserts the file row too (a new file in one
        round trip); then None means a live entry already holds the path and nothing was
        written. Otherwise returns the version's server time, the block ids whose `blocks`
        row was created now (gc may have deleted a block meanwhile), the change event, and
        whether the version took its author over their quota (the namespace's `bytes_used`
        moves by what the version adds).
        """
        params = _journal_params(ns_id, journal, "file", payload)
        params.update(
            fid=file_id,
            rev=rev,
            size=size,
            hash=content_hash,
            author=author_id,
            writer=author_id,  # the author pays (`_over_quota`)
            mtime=mtime,
            pd=path_display,
            vblocks=Jsonb(
                [{"o": i, "b": b[0], "s": b[1], "k": b[2]} for i, b in enumerate(blocks)]
            ),
            refs=Jsonb([{"b": r[0], "s": r[1], "k": r[2], "c": r[3]} for r in sorted(refs)]),
        )
        if create is not None:
            params.update(key=create[0], parent=create[1])
        row = self._one(
            self._notifying(_WRITE_NEW_FILE_SQL if create else _WRITE_VERSION_SQL), params
        )
        if row is None:
            return None
        _, event = _journal_result(params, int(row[0]), payload)
        return WrittenVersion(row[1], set(row[2]), event, bool(row[3]), set(row[4]))

    def lock_blocks(
        self, block_ids: Iterable[str], *, create: Iterable[tuple[str, int, int]] = ()
    ) -> None:
        """Lock the `blocks` rows of these ids that exist, in id order, until the
        transaction ends: as a batch's entries each bump their own blocks' refcounts,
        two batches sharing blocks took them in their entries' order, not the ids', and
        could each hold a row the other wanted next (a deadlock: one failed, 503).
        FOR NO KEY UPDATE, the lock a refcount bump takes.

        First the rows of `create` (block_id, size, key_version: blocks a batch's sessions
        staged) that do not exist are made, in id order, at refcount 0: an insert waits for
        another transaction's insert of the same id, so new blocks deadlocked the same way.
        A row no entry takes up after all stays at refcount 0 until gc reclaims it. No entry
        can take one for a canonical block it reuses (the case `write_version`'s "no longer
        stored" check guards): a version naming the block would have had to commit its
        refcount bump, which waits for this insert."""
        rows = sorted(set(create))
        if rows:
            self.conn.execute(
                "INSERT INTO blocks (block_id, size, key_version, refcount, state)"
                " SELECT t.b, t.s, t.k, 0, 'staged'"
                " FROM unnest(%s::text[], %s::int[], %s::int[]) AS t(b, s, k)"
                " ORDER BY t.b ON CONFLICT (block_id) DO NOTHING",
                _columns(rows, 3),
            )
        ids = sorted(set(block_ids))
        if ids:
            # Not fetched: in pipeline mode the lock travels with the caller's next query.
            self.conn.execute(
                "SELECT 1 FROM blocks WHERE block_id = ANY(%s) ORDER BY block_id FOR NO KEY UPDATE",
                (ids,),
            )

    def mark_restoring(self, block_ids: Sequence[str]) -> None:
        """cold → restoring, when a download has asked the store to restore the blocks.

        Only a cold (or restoring) row: the download read the state without its lock, and
        scrub may have quarantined the block since; overwritten, `restoring` would become
        `live` once restored, and downloads would stop refusing the damaged block."""
        self.conn.execute(
            "UPDATE blocks SET state = 'restoring', updated_at = now()"
            " WHERE block_id = ANY(%s) AND state IN ('cold', 'restoring')",
            (list(block_ids),),
        )

    def touch_blocks(self, block_ids: Sequence[str]) -> dict[str, str]:
        """Record reads for access analytics (at most one write per block per hour); the
        state of each row written, read once its lock was held (after a cold-storage move
        that held it: `maintenance.cold`)."""
        rows = self._all(
            "UPDATE blocks SET last_access = now() WHERE block_id = ANY(%s)"
            " AND (last_access IS NULL OR last_access < now() - interval '1 hour')"
            " RETURNING block_id, state",
            (list(block_ids),),
        )
        return {r[0]: r[1] for r in rows}

    # -- block reports --------------------------------------------------------------------

    def report_block(
        self,
        block_id: str,
        version: tuple[int, str, int],
        *,
        reason: str,
        user_id: str,
        recheck_s: int,
        resend_s: int,
    ) -> BlockReport:
        """Queue a check of a stored block read for `version` (ns_id, file_id, rev) in
        `block_reports`, unless `user_id`'s last report of it was checked less than
        `recheck_s` ago, or is still queued and was made less than `resend_s` ago; that
        report as it now stands (`new`: the caller announces it). A queued report older
        than that has lost what was to wake its check: it is made anew, its claim kept."""
        queued = self._one(
            "INSERT INTO block_reports AS r (block_id, reported_by, ns_id, file_id, rev, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (block_id, reported_by) DO UPDATE SET ns_id = EXCLUDED.ns_id,"
            " file_id = EXCLUDED.file_id, rev = EXCLUDED.rev, reason = EXCLUDED.reason,"
            " reported_at = now(), checked_at = NULL,"
            " claimed_until = CASE WHEN r.checked_at IS NULL THEN r.claimed_until END"
            " WHERE r.checked_at < now() - make_interval(secs => %s)"
            " OR (r.checked_at IS NULL AND r.reported_at < now() - make_interval(secs => %s))"
            " RETURNING reported_at",
            (block_id, user_id, *version, reason, recheck_s, resend_s),
        )
        if queued is not None:
            return BlockReport(queued[0], None, new=True)
        row = self._one(
            "SELECT reported_at, checked_at FROM block_reports"
            " WHERE block_id = %s AND reported_by = %s",
            (block_id, user_id),
        )
        return BlockReport(row[0], row[1], new=False)

    def recent_reports(self, user_id: str, within_s: int) -> tuple[int, float]:
        """How many checks `user_id`'s reports queued in the last `within_s` seconds, and
        the seconds until the oldest of them leaves that window (0 when none). The user's
        other reports wait until this transaction ends (an advisory lock): counted at once,
        a burst of them each saw room under the budget, and all went past it."""
        self.conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LockClass.REPORTS, user_id)
        )
        count, wait = self._one(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM min(reported_at)"
            " + make_interval(secs => %s) - now()), 0) FROM block_reports"
            " WHERE reported_by = %s AND reported_at > now() - make_interval(secs => %s)",
            (within_s, user_id, within_s),
        )
        return int(count), max(float(wait), 0.0)

    def queue_event(self, event: ChangeEvent) -> None:
        """Write an event that is no journal change (`changes.side_event`) to the outbox:
        the relay delivers it if the publication after the commit fails."""
        self.conn.execute(
            "INSERT INTO outbox (ns_id, seq, event_id, kind, payload) VALUES (%s, %s, %s, %s, %s)",
            (event.ns_id, event.seq, event.event_id, event.kind, Jsonb(event.payload)),
        )

    # -- journal, outbox, notify ----------------------------------------------------------

    def append_journal(
        self, ns_id: int, rows: Sequence[NewJournal], *, kind: str, payload: dict[str, Any]
    ) -> tuple[list[int], ChangeEvent]:
        """Append rows to a namespace's journal with fresh seqs, write the outbox row and
        notify listeners (delivered at commit), in one round trip. Returns the seqs, in
        order, and the event to publish on the change feed once the transaction committed.

        Takes the namespace row lock: call it late in the transaction.
        """
        params = _journal_params(ns_id, rows, kind, payload)
        row = self._one(self._notifying(_JOURNAL_SQL), params)
        return _journal_result(params, int(row[0]), payload)

    def journal_after(
        self, ns_id: int, after_seq: int, scope: KeyScope, *, limit: int
    ) -> list[JournalRow]:
        """Journal rows after `after_seq` that concern a listing: entries in `scope`, the
        listed folder itself, and deletions of any of its ancestors."""
        where, params = scope.sql("j")
        selves = [*scope.ancestors, scope.folder_key] if scope.folder_key != "/" else []
        rows = self._all(
            "SELECT j.ns_id, j.seq, j.file_id, j.rev, j.op, j.kind, j.path_key, j.path_display,"
            " j.size, j.content_hash, j.mtime, j.created_at FROM journal j"
            f" WHERE j.ns_id = %s AND j.seq > %s AND ({where}"
            " OR (j.path_key = ANY(%s) AND (j.op = 'delete' OR j.path_key = %s)))"
            " ORDER BY j.seq LIMIT %s",
            [ns_id, after_seq, *params, selves, scope.folder_key, limit],
        )
        return [JournalRow(*r) for r in rows]

    def deleted_since(self, ns_id: int, after_seq: int, file_ids: Sequence[str]) -> set[str]:
        """Which of `file_ids` a namespace's journal logged a delete of after `after_seq`."""
        rows = self._all(
            "SELECT DISTINCT file_id FROM journal WHERE ns_id = %s AND seq > %s"
            " AND op = 'delete' AND file_id = ANY(%s)",
            (ns_id, after_seq, list(file_ids)),
        )
        return {r[0] for r in rows}

    # -- upload sessions ------------------------------------------------------------------

    def create_upload(
        self,
        upload_id: str,
        user_id: str,
        expires_at: datetime,
        blocks: Sequence[tuple[str, int, int, str]],
        files_in_parts: Sequence[tuple[str, int, str]] = (),
    ) -> None:
        """A session expecting blocks (block_id, size, key_version, staged_key), and files
        whose block list comes in parts (path_key, size, content_hash)."""
        self.conn.execute(
            "INSERT INTO upload_sessions (upload_id, user_id, expires_at) VALUES (%s, %s, %s)",
            (upload_id, user_id, expires_at),
        )
        self._expect_blocks(upload_id, blocks)
        if files_in_parts:
            keys, sizes, hashes = _columns(files_in_parts, 3)
            self.conn.execute(
                "INSERT INTO upload_files (upload_id, path_key, path_hash, size, content_hash)"
                " SELECT %s, k, kh, s, h"
                " FROM unnest(%s::text[], %s::bytea[], %s::bigint[], %s::text[]) AS t(k, kh, s, h)",
                (upload_id, keys, [_path_hash(k) for k in keys], sizes, hashes),
            )

    def _expect_blocks(self, upload_id: str, blocks: Sequence[tuple[str, int, int, str]]) -> None:
        """Add blocks (block_id, size, key_version, staged_key) a session expects; one it
        expects already keeps its row."""
        if blocks:
            self.conn.execute(
                "INSERT INTO upload_blocks (upload_id, block_id, size, key_version, staged_key)"
                " SELECT %s, b, s, k, sk"
                " FROM unnest(%s::text[], %s::int[], %s::int[], %s::text[]) AS t(b, s, k, sk)"
                " ON CONFLICT (upload_id, block_id) DO NOTHING",
                (upload_id, *_columns(blocks, 4)),
            )

    def lock_upload_file(self, upload_id: str, user_id: str, path_key: str) -> UploadFileRow | None:
        """A file of the caller's session declared without its block list, locked until
        the transaction ends (its parts are appended one at a time), and the session's row
        before it: the staged keys a part adds are numbered on from the session's count,
        and two parts of two files at once took the same numbers (a commit's listing of
        its run of keys then missed its own). Another user's session: None, nothing locked."""
        session = self._one(
            "SELECT 1 FROM upload_sessions WHERE upload_id = %s AND user_id = %s FOR NO KEY UPDATE",
            (upload_id, user_id),
        )
        if session is None:
            return None
        row = self._one(
            "SELECT size, content_hash, block_count, block_bytes FROM upload_files"
            " WHERE upload_id = %s AND path_hash = %s FOR UPDATE",
            (upload_id, _path_hash(path_key)),
        )
        return UploadFileRow(*row) if row else None

    def upload_file_blocks(
        self, upload_id: str, path_key: str, first: int = 0, count: int | None = None
    ) -> list[tuple[str, int]]:
        """(block_id, size) of a file's appended list from index `first`, in order."""
        rows = self._all(
            "SELECT block_id, size FROM upload_file_blocks"
            " WHERE upload_id = %s AND path_hash = %s AND ordinal >= %s"
            " AND (%s::int IS NULL OR ordinal < %s + %s) ORDER BY ordinal",
            (upload_id, _path_hash(path_key), first, count, first, count),
        )
        return [(r[0], r[1]) for r in rows]

    def session_file_blocks(
        self, upload_id: str, user_id: str, path_key: str
    ) -> list[tuple[str, int]] | None:
        """The whole appended list of a file of the caller's session; None when the session
        (or another user's) declared no such file."""
        if not self._one(
            "SELECT 1 FROM upload_files f JOIN upload_sessions s USING (upload_id)"
            " WHERE f.upload_id = %s AND s.user_id = %s AND f.path_hash = %s",
            (upload_id, user_id, _path_hash(path_key)),
        ):
            return None
        return self.upload_file_blocks(upload_id, path_key)

    def append_upload_file_blocks(
        self,
        upload_id: str,
        path_key: str,
        first: int,
        blocks: Sequence[tuple[str, int]],
        expect: Sequence[tuple[str, int, int, str]],
    ) -> None:
        """Append blocks (block_id, size) at index `first` of a file's list (locked by
        `lock_upload_file`), and the blocks the session now expects for them."""
        self.conn.execute(
            "INSERT INTO upload_file_blocks (upload_id, path_hash, ordinal, block_id, size)"
            " SELECT %s, %s, %s + t.n - 1, t.b, t.s"
            " FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS t(b, s, n)",
            (upload_id, _path_hash(path_key), first, *_columns(blocks, 2)),
        )
        self.conn.execute(
            # never back: a late copy of an earlier part (its answer lost, sent again after
            # the next) appends nothing, and must not make the list look shorter
            "UPDATE upload_files SET block_count = GREATEST(block_count, %s),"
            " block_bytes = block_bytes + %s WHERE upload_id = %s AND path_hash = %s",
            (first + len(blocks), sum(b[1] for b in blocks), upload_id, _path_hash(path_key)),
        )
        self._expect_blocks(upload_id, expect)

    def key_fingerprints(self, *, lock: bool = True) -> dict[int, tuple[bytes, datetime]]:
        """Every recorded key version's fingerprint: version → (fingerprint, recorded at).
        With `lock`, checks that may record read and record one at a time, until the
        transaction ends: row locks hold no version not recorded yet, and two starts with
        different secrets both recorded theirs, the last one winning."""
        if lock:
            self._one("SELECT pg_advisory_xact_lock(%s, 0)::text", (LockClass.KEY_CHECK,))
        rows = self._all("SELECT key_version, fingerprint, recorded_at FROM key_fingerprints")
        return {int(v): (bytes(fp), at) for v, fp, at in rows}

    def set_key_fingerprints(self, found: Mapping[int, bytes]) -> None:
        """Record these versions' fingerprints (a version recorded before is replaced)."""
        self.conn.cursor().executemany(
            "INSERT INTO key_fingerprints (key_version, fingerprint) VALUES (%s, %s)"
            " ON CONFLICT (key_version) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,"
            " recorded_at = now()",
            list(found.items()),
        )

    def forget_key_fingerprints(self, versions: Sequence[int]) -> None:
        """Forget the fingerprints of these versions (no statement when there are none:
        every start asks)."""
        if versions:
            self.conn.execute(
                "DELETE FROM key_fingerprints WHERE key_version = ANY(%s)", (list(versions),)
            )

    def key_version_in_use(self, version: int) -> bool:
        """Whether any block, or any upload's block, is stored under key `version` (asked
        only of a version whose secret changed: without an index, it may read the tables)."""
        row = self._one(
            "SELECT EXISTS (SELECT 1 FROM blocks WHERE key_version = %(v)s)"
            " OR EXISTS (SELECT 1 FROM upload_blocks WHERE key_version = %(v)s)",
            {"v": version},
        )
        return bool(row[0])

    def stored_block_count(self) -> int:
        """How many blocks the database holds rows for (any state)."""
        row = self._one("SELECT count(*) FROM blocks", ())
        return int(row[0]) if row else 0

    def expected_block_count(self, upload_id: str) -> int:
        """How many blocks the session expects or expected (the next staged key's ordinal)."""
        row = self._one("SELECT count(*) FROM upload_blocks WHERE upload_id = %s", (upload_id,))
        return int(row[0])

    def get_upload(self, upload_id: str, user_id: str) -> UploadRow | None:
        """The caller's open session (another user's is None, like a missing one)."""
        row = self._one(_UPLOAD_SQL, (upload_id, user_id))
        return UploadRow(*row) if row else None

    def lock_pending_uploads(self, user_id: str) -> None:
        """Queue behind the user's other requests that add to their uploads in progress,
        until the transaction ends (a transaction-scoped advisory lock): two that read the
        sum at once each saw room under the cap, and both went past it. Taken once the
        request holds what it locks before (an `append_blocks` its session's file row)."""
        self.conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
            (LockClass.PENDING_UPLOADS, user_id),
        )

    def pending_uploads(
        self, user_id: str, now: datetime, more: Sequence[tuple[str, int]] = ()
    ) -> tuple[int, int]:
        """Bytes and count of the blocks the user's open sessions expect and no commit has
        staged yet, with `more` (block_id, size) counted in. A block two sessions expect
        counts twice: each session has a staged object of its own for it, which holds bytes
        until a commit checks them, so counted once, the same made-up block list declared
        in any number of sessions held that many times the cap."""
        row = self._one(
            "SELECT COALESCE(sum(size), 0), count(*) FROM ("
            " SELECT b.size FROM upload_sessions s JOIN upload_blocks b"
            "  USING (upload_id) WHERE s.user_id = %s AND s.state = 'open'"
            "  AND s.expires_at > %s AND b.state = 'expected'"
            " UNION ALL SELECT * FROM unnest(%s::int[])) AS t(size)",
            (user_id, now, [size for _, size in more]),
        )
        return int(row[0]), int(row[1])

    def extend_upload(
        self, upload_id: str, until: datetime, max_lifetime: timedelta
    ) -> datetime | None:
        """Move an open session's expiry on to `until` (never back, never past
        `max_lifetime` from its start); its expiry, None when it is no longer open."""
        row = self._one(
            "UPDATE upload_sessions SET expires_at = GREATEST(expires_at,"
            " LEAST(%s, created_at + %s)) WHERE upload_id = %s AND state = 'open'"
            " RETURNING expires_at",
            (until, max_lifetime, upload_id),
        )
        return row[0] if row else None

    def upload_blocks(self, upload_id: str, block_ids: Sequence[str]) -> dict[str, UploadBlockRow]:
        """The session's expected blocks among `block_ids`."""
        rows = self._all(_UPLOAD_BLOCKS_SQL, (upload_id, list(block_ids)))
        return {r[0]: UploadBlockRow(*r) for r in rows}

    def set_upload_blocks_stored(
        self, upload_id: str, issued: Sequence[tuple[str, int, str]]
    ) -> set[str]:
        """Record the encoded size and checksum PUT URLs were issued for: (block_id,
        stored_size, sha256) each, in one statement (rows taken in block-id order). A copy a
        commit has taken keeps its checksum unless it is the same; the ids recorded."""
        rows = sorted(issued)
        # The guard is in the UPDATE, not only in the caller's earlier read: a commit of the
        # same session may take the copy in between, and this UPDATE then waits for it and
        # re-checks the row as that commit left it.
        recorded = self._all(
            "UPDATE upload_blocks u SET stored_size = t.size, sha256 = t.sha, updated_at = now()"
            " FROM unnest(%(ids)s::text[], %(sizes)s::bigint[], %(shas)s::text[])"
            "  AS t(block_id, size, sha)"
            " WHERE u.upload_id = %(upload)s AND u.block_id = t.block_id"
            " AND (u.state = 'expected' OR (u.stored_size = t.size AND u.sha256 = t.sha))"
            " RETURNING u.block_id",
            {
                "upload": upload_id,
                "ids": [r[0] for r in rows],
                "sizes": [r[1] for r in rows],
                "shas": [r[2] for r in rows],
            },
        )
        return {r[0] for r in recorded}

    def pin_staged_copies(self, ns_id: int, block_ids: Sequence[str]) -> None:
        """Lock FOR SHARE, as `lock_staged_copies` does, every staged copy through which a
        version in `ns_id` holds one of `block_ids`: those a batch's entries into `ns_id`
        may carry forward (a copy counts only in its own namespace: `readable_blocks`), and
        perhaps a few more, pinned before the batch locks its blocks. A commit and
        dedup-verify take a copy, then its block; a batch that took its blocks first and
        its copies entry by entry held what dedup wanted next while it waited for the copy
        dedup held (a deadlock: the batch answered 503, or the dedup run failed). One index
        probe per block (`version_blocks_by_block`)."""
        if not block_ids:
            return
        # Not fetched: in pipeline mode the lock travels with the caller's next query.
        self.conn.execute(
            "SELECT 1 FROM upload_blocks WHERE staged_key IN (SELECT vb.staged_key"
            " FROM unnest(%s::text[]) AS q(block_id) JOIN version_blocks vb"
            " ON vb.block_id = q.block_id AND vb.ns_id = %s AND vb.staged_key IS NOT NULL)"
            " ORDER BY upload_id, block_id FOR SHARE",
            (list(block_ids), ns_id),
        )

    def lock_staged_copies(self, staged_keys: Sequence[str]) -> dict[str, str]:
        """Lock staged copies FOR SHARE (dedup-verify cannot settle them until this
        transaction ends); staged_key → state. Copies gc already removed are absent."""
        rows = self._all(
            "SELECT staged_key, state FROM upload_blocks WHERE staged_key = ANY(%s)"
            " ORDER BY upload_id, block_id FOR SHARE",
            (list(staged_keys),),
        )
        return {r[0]: r[1] for r in rows}

    def mark_staged(self, upload_id: str, block_ids: Sequence[str]) -> None:
        """Staged copies now referenced by a committed version (dedup-verify picks them up)."""
        self.conn.execute(
            "UPDATE upload_blocks SET state = 'staged', updated_at = now()"
            " WHERE upload_id = %s AND block_id = ANY(%s) AND state = 'expected'",
            (upload_id, list(block_ids)),
        )

    # -- idempotency ----------------------------------------------------------------------

    def claim_idempotency_keys(
        self, user_id: str, claims: Mapping[str, str]
    ) -> dict[str, tuple[str, dict[str, Any] | None]]:
        """Claim every key of `claims` (key -> request hash) for its request, in key order
        (waiting for a concurrent claimer's transaction to end); for the keys claimed
        earlier, the first request's (hash, stored response)."""
        earlier: dict[str, tuple[str, dict[str, Any] | None]] = {}
        keys = sorted(claims)
        while keys:
            claimed = self._all(
                "INSERT INTO idempotency_keys (user_id, key, request_hash)"
                " SELECT %s, c.key, c.hash FROM unnest(%s::text[], %s::text[]) AS c(key, hash)"
                " ORDER BY c.key ON CONFLICT (user_id, key) DO NOTHING RETURNING key",
                (user_id, keys, [claims[k] for k in keys]),
            )
            taken = sorted(set(keys) - {r[0] for r in claimed})
            if not taken:
                break
            # a statement of its own: the INSERT's snapshot predates a claim it waited for
            rows = self._all(
                "SELECT key, request_hash, response FROM idempotency_keys"
                " WHERE user_id = %s AND key = ANY(%s)",
                (user_id, taken),
            )
            earlier |= {r[0]: (r[1], r[2]) for r in rows}
            # DO NOTHING locks no row: gc may delete a key past its retention between the
            # two statements. That key is free again, and is claimed in the next round, so
            # this request's answer is kept for its own retries.
            keys = sorted(set(taken) - earlier.keys())
        return earlier

    def release_idempotency_keys(self, user_id: str, keys: Sequence[str]) -> None:
        """Give up claims this transaction made and did not use (no response stored)."""
        self.conn.execute(
            "DELETE FROM idempotency_keys WHERE user_id = %s AND key = ANY(%s)"
            " AND response IS NULL",
            (user_id, list(keys)),
        )

    def store_idempotent_responses(
        self, user_id: str, responses: Mapping[str, tuple[str | None, Any]]
    ) -> None:
        """The response a retry with each key of `responses` (key -> (request hash or None
        to keep the claimed one, response)) gets; the keys are claimed already."""
        self.conn.execute(
            "UPDATE idempotency_keys k SET response = r.value->'response',"
            " request_hash = COALESCE(r.value->>'hash', k.request_hash)"
            " FROM jsonb_each(%s) AS r WHERE k.user_id = %s AND k.key = r.key",
            (Jsonb({k: {"hash": h, "response": r} for k, (h, r) in responses.items()}), user_id),
        )

    # -- account --------------------------------------------------------------------------

    def usage(self, user_id: str) -> int:
        """Bytes of the latest versions of live files in the namespaces the user owns."""
        row = self._one(
            "SELECT COALESCE(sum(bytes_used), 0) FROM namespaces WHERE owner_id = %s", (user_id,)
        )
        return int(row[0])

    def bytes_used(self, ns_ids: Iterable[int]) -> dict[int, int]:
        """Each namespace's `bytes_used` (the live files' latest versions)."""
        rows = self._all(
            "SELECT ns_id, bytes_used FROM namespaces WHERE ns_id = ANY(%s)", (list(ns_ids),)
        )
        return {r[0]: r[1] for r in rows}
