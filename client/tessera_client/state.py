"""The client's state database: SQLite in WAL mode, under the device's home.

Tables:
- `base`: the synced tree — what both sides agreed on (path, file_id, rev, content hash,
  size, mtime, inode, block list). The planner's third tree.
- `remote`: the server's tree as last listed (kept current from the cursor).
- `meta`: the cursor and other single values.
- `pending`: work in flight (upload sessions), so a killed client resumes instead of
  starting over; `pending_sent`: the blocks each has sent so far, a row per block (a
  file's whole list rewritten after every window cost O(blocks²) on a huge file).
- `conflicts`: conflicted copies and local-only copies the user should look at.

One connection, guarded by a lock: the executor's transfer threads never write here;
only the sync loop does, so contention is nil.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tessera_client.fs import DiskFullError, racily_clean
from tessera_client.paths import path_key
from tessera_client.planner import Entry, EntryKind
from tessera_client.reporting import SyncError

# A row's kind by its stored value: `EntryKind(value)` took a fifth of loading a 20,000-entry
# tree, which every sync round does twice.
_KINDS = {kind.value: kind for kind in EntryKind}
# The note that this device left `FOLDER_MARKER` in its folder: a folder without it is then
# not this one (an unmounted drive's mount point, another drive)
MARKED_META = "folder_marked"

SCHEMA = """
CREATE TABLE IF NOT EXISTS base (
    key TEXT PRIMARY KEY, path TEXT NOT NULL, kind TEXT NOT NULL, file_id TEXT NOT NULL,
    rev INTEGER NOT NULL, content_hash TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, blocks TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS remote (
    key TEXT PRIMARY KEY, path TEXT NOT NULL, kind TEXT NOT NULL, file_id TEXT NOT NULL,
    rev INTEGER NOT NULL, content_hash TEXT NOT NULL, size INTEGER NOT NULL,
    access TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    kind TEXT NOT NULL, key TEXT NOT NULL, payload TEXT NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS session_expiry (
    upload_id TEXT PRIMARY KEY, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_sent (
    kind TEXT NOT NULL, key TEXT NOT NULL, block_id TEXT NOT NULL,
    PRIMARY KEY (kind, key, block_id)
);
CREATE TABLE IF NOT EXISTS conflicts (
    path TEXT PRIMARY KEY, original TEXT NOT NULL, reason TEXT NOT NULL,
    local_only INTEGER NOT NULL, created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class ConflictRecord:
    """A conflicted copy the user should look at."""

    path: str
    original: str
    reason: str
    local_only: bool
    created_at: float


_BASE_ENTRY = "path, kind, file_id, rev, content_hash, size, mtime_ns, inode"


def _base_entry(row: Any) -> Entry:
    """The Entry of a base row's `_BASE_ENTRY` columns."""
    path, kind, file_id, rev, content_hash, size, mtime_ns, inode = row
    return Entry(path, _KINDS[kind], content_hash, size, file_id, rev, mtime_ns, inode)


def _disk_full(error: sqlite3.OperationalError) -> bool:
    """SQLite's "database or disk is full" (its own page limit, or the disk's)."""
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


class StateDB:
    """The state database of one device."""

    def __init__(self, path: Path | str) -> None:
        self._path = path
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        except sqlite3.OperationalError as e:
            # SQLite opens no database whose path is over 512 bytes, far below PATH_MAX
            raise SyncError(
                f"cannot open this device's state database {str(path)!r}: {e}; check that "
                "its folder exists and is writable, or set TESSERA_HOME to a shorter path"
            ) from None
        self._db.execute("PRAGMA busy_timeout=5000")  # first: WAL's switch may wait too
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic transaction (nested calls join the outer one)."""
        with self._lock:
            if self._db.in_transaction:
                yield self._db
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as e:
                # a COMMIT that failed (the disk filled up as the WAL grew) leaves the
                # transaction open, and every later one would have joined it as "nested"
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError) and _disk_full(e):
                    raise DiskFullError(
                        errno.ENOSPC,
                        f"the disk is full: the state database {self._path} cannot be written",
                    ) from e
                raise

    # -- synced base --------------------------------------------------------------------

    def base_tree(self) -> dict[str, Entry]:
        """The synced tree, keyed by path key."""
        with self._lock:
            rows = self._db.execute(f"SELECT key, {_BASE_ENTRY} FROM base").fetchall()
        return {r[0]: _base_entry(r[1:]) for r in rows}

    def has_base(self) -> bool:
        """Whether anything was ever synced (the base holds an entry)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM base LIMIT 1").fetchone() is not None

    def base_entry(self, path: str) -> Entry | None:
        """The synced entry at `path` (any spelling), or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_BASE_ENTRY} FROM base WHERE key = ?", (path_key(path),)
            ).fetchone()
        return _base_entry(row) if row else None

    def base_blocks(self, path: str) -> list[str]:
        """The block ids of a synced file (empty when unknown)."""
        with self._lock:
            row = self._db.execute(
                "SELECT blocks FROM base WHERE key = ?", (path_key(path),)
            ).fetchone()
        return list(json.loads(row[0])) if row else []

    def put_base(
        self, entry: Entry, blocks: list[str] | None = None, *, seen_ns: int | None = None
    ) -> None:
        """Record that both sides agree on `entry`.

        `seen_ns` is when the content that `entry.content_hash` names was read from the file
        (a scan's `hashed_ns`); by default now, for content this client has just written and
        checked. A stat that a second write within the mtime granularity of that moment
        could have kept (`fs.racily_clean`) is stored with mtime 0, so the next scan hashes
        the file instead of trusting it. Judged against the time of recording instead, a
        save made while a slow upload ran was recorded as the uploaded content."""
        seen = time.time_ns() if seen_ns is None else seen_ns
        if entry.mtime_ns and racily_clean(entry.mtime_ns, seen):
            entry = replace(entry, mtime_ns=0)
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO base VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    path_key(entry.path),
                    entry.path,
                    entry.kind.value,
                    entry.file_id,
                    entry.rev,
                    entry.content_hash,
                    entry.size,
                    entry.mtime_ns,
                    entry.inode,
                    json.dumps(blocks or []),
                ),
            )

    def delete_base(self, path: str, *, recursive: bool = False) -> None:
        """Forget a synced path (and, with `recursive`, everything below it)."""
        key = path_key(path)
        with self.transaction() as db:
            db.execute("DELETE FROM base WHERE key = ?", (key,))
            if recursive:
                db.execute(
                    "DELETE FROM base WHERE substr(key, 1, ?) = ?", (len(key) + 1, key + "/")
                )

    def has_base_below(self, path: str) -> bool:
        """Whether anything below folder `path` is recorded synced."""
        key = path_key(path)
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM base WHERE substr(key, 1, ?) = ? LIMIT 1", (len(key) + 1, key + "/")
            ).fetchone()
        return row is not None

    # -- remote mirror ------------------------------------------------------------------

    def remote_tree(self) -> dict[str, Entry]:
        """The server's tree as last listed, keyed by path key."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, path, kind, file_id, rev, content_hash, size FROM remote"
            ).fetchall()
        return {r[0]: Entry(r[1], _KINDS[r[2]], r[5], r[6], r[3], r[4]) for r in rows}

    def has_remote(self, path: str) -> bool:
        """Whether the server's tree, as last listed, holds anything at `path`."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM remote WHERE key = ?", (path_key(path),)
            ).fetchone()
        return row is not None

    def shared_mounts(self) -> dict[str, tuple[str, str]]:
        """The mount points of shared folders in the mirror: path key → (path, the
        caller's access)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, path, access FROM remote WHERE access IS NOT NULL"
            ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def put_remote(self, entry: Entry, access: str | None = None) -> None:
        """Record a file or folder listed by the server."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO remote VALUES (?,?,?,?,?,?,?,?)",
                (
                    path_key(entry.path),
                    entry.path,
                    entry.kind.value,
                    entry.file_id,
                    entry.rev,
                    entry.content_hash,
                    entry.size,
                    access,
                ),
            )

    def delete_remote(self, path: str) -> None:
        """The server deleted `path` and everything below it."""
        key = path_key(path)
        with self.transaction() as db:
            db.execute("DELETE FROM remote WHERE key = ?", (key,))
            db.execute("DELETE FROM remote WHERE substr(key, 1, ?) = ?", (len(key) + 1, key + "/"))

    def clear_remote(self) -> None:
        """Drop the remote mirror (before a full re-list)."""
        with self.transaction() as db:
            db.execute("DELETE FROM remote")

    def forget_sync(self) -> None:
        """Forget what this device knows of the server: the remote mirror, the cursor, the
        synced base and the work in flight. The next round compares a fresh listing with
        the disk as a first sync does: equal files are recorded, different ones kept as
        conflicted copies, and nothing is taken for deleted on either side."""
        with self.transaction() as db:
            for table in ("remote", "base", "pending", "pending_sent"):
                db.execute(f"DELETE FROM {table}")
            db.execute("DELETE FROM meta WHERE key = 'cursor'")

    def forget_folder(self) -> None:
        """`forget_sync`, and what else the device knew of its folder: the conflicted copies
        in it, its marker, a mass delete paused in it and its last status line (`tessera
        sync --instead`; `tessera status` had shown the old folder's until a round ran)."""
        self.forget_sync()
        with self.transaction() as db:
            db.execute("DELETE FROM conflicts")
            for key in (MARKED_META, "paused_deletes", "recent_deletes", "status"):
                db.execute("DELETE FROM meta WHERE key = ?", (key,))

    # -- meta ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """A stored single value."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        """Store (or with None, delete) a single value."""
        with self.transaction() as db:
            if value is None:
                db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def cursor(self) -> str | None:
        """The list_folder cursor the remote mirror is current to."""
        return self.get_meta("cursor")

    # -- pending work -------------------------------------------------------------------

    def get_pending(self, kind: str, key: str) -> dict[str, Any] | None:
        """A piece of work in flight."""
        with self._lock:
            row = self._db.execute(
                "SELECT payload FROM pending WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        return dict(json.loads(row[0])) if row else None

    def put_pending(self, kind: str, key: str, payload: dict[str, Any]) -> None:
        """Record a piece of work in flight, with nothing sent for it yet."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO pending VALUES (?,?,?,?)",
                (kind, key, json.dumps(payload), time.time()),
            )
            db.execute("DELETE FROM pending_sent WHERE kind = ? AND key = ?", (kind, key))

    def merge_pending(self, kind: str, changes: Mapping[str, Mapping[str, Any]]) -> None:
        """Add fields to works in flight (by key; what is sent for them is kept)."""
        with self.transaction() as db:
            for key, fields in changes.items():
                row = db.execute(
                    "SELECT payload FROM pending WHERE kind = ? AND key = ?", (kind, key)
                ).fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE pending SET payload = ? WHERE kind = ? AND key = ?",
                        (json.dumps({**json.loads(row[0]), **fields}), kind, key),
                    )

    def extend_session(self, upload_id: str, expires_at: float) -> None:
        """The server moved an upload session's expiry on (its own row: rewriting the
        records of the session's files, a 10 GiB file's list of blocks among them, after
        every window was the O(blocks²) of old again). Long-expired rows go."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO session_expiry VALUES (?, ?)", (upload_id, expires_at)
            )
            db.execute("DELETE FROM session_expiry WHERE expires_at < ?", (time.time() - 86_400,))

    def session_expiry(self, record: Mapping[str, Any]) -> float:
        """When the upload session of a work in flight expires: as its start said, or as the
        server moved it on since."""
        with self._lock:
            row = self._db.execute(
                "SELECT expires_at FROM session_expiry WHERE upload_id = ?",
                (record.get("upload_id"),),
            ).fetchone()
        return max(float(record.get("expires_at", 0.0)), row[0] if row else 0.0)

    def add_pending_sent(self, kind: str, key: str, block_ids: list[str]) -> None:
        """Blocks the work in flight has sent."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO pending_sent VALUES (?,?,?)",
                [(kind, key, block) for block in block_ids],
            )

    def pending_sent(self, kind: str, key: str) -> set[str]:
        """The blocks the work in flight has sent so far."""
        with self._lock:
            rows = self._db.execute(
                "SELECT block_id FROM pending_sent WHERE kind = ? AND key = ?", (kind, key)
            ).fetchall()
        return {r[0] for r in rows}

    def drop_pending(self, kind: str, key: str) -> None:
        """The work is done (or abandoned)."""
        with self.transaction() as db:
            db.execute("DELETE FROM pending WHERE kind = ? AND key = ?", (kind, key))
            db.execute("DELETE FROM pending_sent WHERE kind = ? AND key = ?", (kind, key))

    def list_pending(self, kind: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """All work in flight (optionally of one kind)."""
        sql = "SELECT kind, key, payload FROM pending"
        args: tuple[str, ...] = ()
        if kind is not None:
            sql, args = sql + " WHERE kind = ?", (kind,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY kind, key", args).fetchall()
        return [(r[0], r[1], dict(json.loads(r[2]))) for r in rows]

    # -- conflicts ----------------------------------------------------------------------

    def add_conflict(self, path: str, original: str, reason: str, *, local_only: bool) -> None:
        """Remember a conflicted copy for `tessera conflicts`."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO conflicts VALUES (?,?,?,?,?)",
                (path, original, reason, int(local_only), time.time()),
            )

    def let_conflict_sync(self, path: str) -> None:
        """A local-only conflicted copy may sync now, as any file of the user's."""
        with self.transaction() as db:
            db.execute("UPDATE conflicts SET local_only = 0 WHERE path = ?", (path,))

    def conflicts(self) -> list[ConflictRecord]:
        """Every recorded conflicted copy, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, original, reason, local_only, created_at FROM conflicts"
                " ORDER BY created_at"
            ).fetchall()
        return [ConflictRecord(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]

    def drop_conflict(self, path: str) -> None:
        """Forget a conflicted copy (it was resolved or deleted)."""
        with self.transaction() as db:
            db.execute("DELETE FROM conflicts WHERE path = ?", (path,))
