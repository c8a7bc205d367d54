"""The SQL of the maintenance workflows (`tessera.maintenance`), one method per query.

Locking protocol (why gc can never delete a block a commit is starting to use):

- A commit bumps `blocks.refcount` with a row-locking upsert and refuses when it had to
  create the row of a block it meant to reuse; gc deletes a block row only while holding
  that same row lock (`FOR UPDATE SKIP LOCKED`), after re-checking `refcount = 0` and that
  no version and no open or pending upload names the block. So either the commit's bump
  lands first (gc's re-check sees refcount 1 and skips the block) or gc's delete lands
  first (the commit finds no row and refuses; its client uploads the block again).
- The stored object goes only after the row's deletion has committed, in a second
  transaction holding the per-block advisory lock `block_lock`, and only if no row has
  appeared again meanwhile. Every step that writes the canonical object `blocks/<hex>`
  (promotion, repair, tier moves) takes that lock too, so a promotion can never interleave
  with the delete of the same block. The row's deletion leaves a tombstone in
  `block_deletions`, removed with the object, so a run that dies between the two leaves
  the next run an object to delete, never a row without its object nor an object forever.
- Transactions are short batches with a `lock_timeout`, so maintenance never queues behind
  (or ahead of) user traffic for long.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tessera.metadata.db import Database
from tessera.metadata.locks import LockClass

#: A maintenance transaction waited past its `lock_timeout` (a commit or a download held
#: what it needed): the step is left for the next run.
LockTimeout = psycopg.errors.LockNotAvailable

# How far past `limit` blocks reported longest ago a claim looks for ones no run holds.
CLAIM_LOOKAHEAD = 4

# The bytes of the live files' latest versions in namespace `n` (what `bytes_used` keeps).
_LIVE_BYTES_OF_NS = (
    "SELECT COALESCE(sum(v.size), 0) FROM files f JOIN file_versions v ON v.ns_id = f.ns_id"
    " AND v.file_id = f.file_id AND v.rev = f.latest_rev"
    " WHERE f.ns_id = n.ns_id AND NOT f.is_deleted AND f.kind = 'file'"
)
# The columns of a `StagedCopy`, in its order.
_STAGED_COPY_SQL = (
    "SELECT upload_id, block_id, staged_key, size, stored_size, key_version FROM upload_blocks"
)


@dataclass(frozen=True)
class StagedCopy:
    """One staged copy of a block, uploaded in a session and awaiting dedup-verify."""

    upload_id: str
    block_id: str
    staged_key: str
    size: int  # declared plaintext bytes
    stored_size: int | None
    key_version: int  # the version whose key the uploader was given: it existed then


@dataclass(frozen=True)
class BlockRow:
    """A row of `blocks`."""

    block_id: str
    size: int
    stored_size: int | None
    key_version: int
    refcount: int
    state: str


@dataclass(frozen=True)
class ReportedBlock:
    """A block a client reported unreadable, and the version it read it for (ns_id,
    file_id, rev)."""

    block: BlockRow
    version: tuple[int, str, int]


@dataclass(frozen=True)
class DamageNotice:
    """A damaged version whose namespace has not yet been told (see `damaged_versions`)."""

    ns_id: int
    file_id: str
    rev: int
    block_id: str
    staged_key: str
    reason: str
    path: str


_BLOCK_COLS = "block_id, size, stored_size, key_version, refcount, state"
_BLOCK_COLS_OF_B = ", ".join("b." + c for c in _BLOCK_COLS.split(", "))  # (`blocks b`)


def _block(row: Sequence[Any]) -> BlockRow:
    return BlockRow(row[0], row[1], row[2], row[3], row[4], row[5])


class MaintenanceTx:
    """The maintenance queries inside one open transaction."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def _all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        return self.conn.execute(sql.encode(), params).fetchall()

    def _count(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        return self.conn.execute(sql.encode(), params).rowcount

    # -- per-block advisory lock ----------------------------------------------------------

    def block_lock(self, block_id: str, *, wait: bool = True) -> bool:
        """Take the per-block maintenance lock until the transaction ends.

        With `wait=False`, returns False instead of waiting when another step holds it.
        """
        fn = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
        row = self._all(f"SELECT {fn}(%s, hashtext(%s))::text", (LockClass.BLOCK, block_id))[0]
        return wait or row[0] == "true"

    def lock_absent_blocks(self, block_ids: Sequence[str]) -> set[str]:
        """Take the maintenance locks of `block_ids` (waiting, in id order: no deadlocks);
        the ids that have no row once the locks are held.

        Two statements: a statement reads the snapshot it began with, so a check in the
        statement that waited for the locks missed a row committed meanwhile (a block
        uploaded again and promoted under its lock), and gc deleted a named object."""
        ids = sorted(block_ids)
        self._all(
            "SELECT pg_advisory_xact_lock(%s, hashtext(b))::text FROM unnest(%s::text[]) AS b"
            " ORDER BY b",
            (LockClass.BLOCK, ids),
        )
        rows = self._all(
            "SELECT b FROM unnest(%s::text[]) AS b"
            " WHERE NOT EXISTS (SELECT 1 FROM blocks WHERE block_id = b)",
            (ids,),
        )
        return {r[0] for r in rows}

    # -- blocks ---------------------------------------------------------------------------

    def block(self, block_id: str, *, for_update: bool = False) -> BlockRow | None:
        """The block's row (row-locked with `for_update`), or None."""
        lock = " FOR UPDATE" if for_update else ""
        rows = self._all(f"SELECT {_BLOCK_COLS} FROM blocks WHERE block_id = %s{lock}", (block_id,))
        return _block(rows[0]) if rows else None

    def mark_live(self, block_id: str, *, size: int, stored_size: int, key_version: int) -> None:
        """Record a verified canonical copy: state live, hot, its verified size, stored size
        and key version.

        Creates the row (refcount 0, so gc reclaims it unless a version comes to use it)
        when no commit made one. The size is the verified one: the row was made with the
        size the first commit naming the block declared, and a wrong one kept made scrub
        take the intact block for damaged.
        """
        self._count(
            "INSERT INTO blocks (block_id, size, stored_size, key_version, state, storage_class)"
            " VALUES (%s, %s, %s, %s, 'live', 'hot')"
            " ON CONFLICT (block_id) DO UPDATE SET state = 'live', storage_class = 'hot',"
            " size = EXCLUDED.size, stored_size = EXCLUDED.stored_size,"
            " key_version = EXCLUDED.key_version, updated_at = now()",
            (block_id, size, stored_size, key_version),
        )

    def clear_damage(self, block_id: str) -> int:
        """Forget damage recorded against the canonical block (it was just repaired)."""
        return self._count(
            "DELETE FROM damaged_versions WHERE block_id = %s AND staged_key = ''", (block_id,)
        )

    def set_state(self, block_id: str, state: str, *, from_states: Iterable[str]) -> bool:
        """Move the block to `state` if it is in one of `from_states`."""
        cls = "cold" if state in ("cold", "restoring") else "hot"
        return (
            self._count(
                "UPDATE blocks SET state = %s, storage_class = %s, updated_at = now()"
                " WHERE block_id = %s AND state = ANY(%s)",
                (state, cls, block_id, list(from_states)),
            )
            == 1
        )

    # -- staged copies (dedup-verify) -----------------------------------------------------

    def lock_staged_copy(self, upload_id: str, block_id: str) -> StagedCopy | None:
        """Row-lock the copy if it still awaits verification (state `staged`)."""
        rows = self._all(
            _STAGED_COPY_SQL
            + " WHERE upload_id = %s AND block_id = %s AND state = 'staged' FOR UPDATE",
            (upload_id, block_id),
        )
        return StagedCopy(*rows[0]) if rows else None

    def settle_copy(self, copy: StagedCopy, state: str) -> None:
        """Record what became of a staged copy: promoted, dropped or quarantined."""
        self._count(
            "UPDATE upload_blocks SET state = %s, updated_at = now()"
            " WHERE upload_id = %s AND block_id = %s",
            (state, copy.upload_id, copy.block_id),
        )

    def copy_in_use(self, staged_key: str) -> bool:
        """Whether some version names this staged copy."""
        return bool(
            self._all("SELECT 1 FROM version_blocks WHERE staged_key = %s LIMIT 1", (staged_key,))
        )

    def repoint_versions(self, staged_key: str) -> int:
        """Point versions that name a verified staged copy at the canonical block."""
        return self._count(
            "UPDATE version_blocks SET staged_key = NULL WHERE staged_key = %s", (staged_key,)
        )

    def other_pending_copies(self, block_id: str, staged_key: str) -> int:
        """Staged copies of `block_id`, other than `staged_key`, still awaiting verification."""
        rows = self._all(
            "SELECT count(*) FROM upload_blocks"
            " WHERE block_id = %s AND state = 'staged' AND staged_key <> %s",
            (block_id, staged_key),
        )
        return int(rows[0][0])

    def duplicate_copies(self, block_id: str) -> list[str]:
        """Staging keys of copies of `block_id` that may still be stored (scrub repair):
        those awaiting dedup, and those it settled whose objects gc has yet to delete (a
        dropped duplicate was verified, and is kept `settled_copy_grace_s`)."""
        rows = self._all(
            "SELECT staged_key FROM upload_blocks WHERE block_id = %s"
            " AND (state IN ('staged', 'expected')"
            " OR (state IN ('dropped', 'promoted') AND NOT object_gone))"
            " ORDER BY updated_at DESC",
            (block_id,),
        )
        return [r[0] for r in rows]

    # -- damage ---------------------------------------------------------------------------

    def record_damage(
        self, block_id: str, *, staged_key: str | None, reason: str, at: datetime
    ) -> int:
        """Mark every version naming the damaged copy (or canonical block) damaged."""
        if staged_key is not None:
            where, params = "staged_key = %s", [staged_key]
        else:
            where, params = "block_id = %s AND staged_key IS NULL", [block_id]
        return self._count(
            "INSERT INTO damaged_versions"
            " (ns_id, file_id, rev, block_id, staged_key, reason, detected_at)"
            " SELECT ns_id, file_id, rev, block_id, COALESCE(staged_key, ''), %s, %s"
            f" FROM version_blocks WHERE {where}"
            " ON CONFLICT DO NOTHING",
            [reason, at, *params],
        )

    # -- block reports (scrub's `reported` step) -------------------------------------------

    def claim_reports(
        self, limit: int, only: Sequence[str] | None = None, *, hold_s: float
    ) -> list[ReportedBlock]:
        """Claim the pending reports of up to `limit` blocks, oldest report first (of blocks
        among `only`, if given), for `hold_s` seconds: each block with every pending report
        of it, so two runs never check one block for two users. Reports another run holds
        are skipped. One per block, whatever its state: a check of a block moved on settles
        its reports too.

        Every writer of a block's reports (but a new report's insert) takes the block's
        reports lock first (`_lock_reports_of`); a claim skips a block whose lock is held
        rather than wait, looking on among the `CLAIM_LOOKAHEAD` times `limit` blocks
        reported longest ago (a run that met only held blocks found nothing, and stopped;
        pending reports are few: each user's are held to an hourly budget). Locking the
        reports themselves (`SKIP LOCKED` on the oldest, then the block's others) let two
        claims each lock one report of a block and wait for the other's: a deadlock, and
        one scrub run failed. The locks are tried in age order, and no more than taken."""
        among = " AND block_id = ANY(%(only)s)" if only is not None else ""
        free = "{t}checked_at IS NULL AND ({t}claimed_until IS NULL OR {t}claimed_until < now())"
        rows = self._all(
            # blocks, not reports: one lost block many users reported filled the window
            "WITH oldest AS MATERIALIZED (SELECT block_id, min(reported_at) AS first"
            f"  FROM block_reports WHERE {free.format(t='')}{among}"
            "  GROUP BY block_id ORDER BY first LIMIT %(look)s),"
            # the lock's filter over the sorted rows, not under the sort: tried in order,
            # and only until `limit` are taken (a volatile filter is not pushed down)
            " picked AS MATERIALIZED (SELECT block_id FROM (SELECT block_id FROM oldest"
            "  ORDER BY first) s WHERE pg_try_advisory_xact_lock(%(lock)s, hashtext(block_id))"
            "  LIMIT %(limit)s)"
            " UPDATE block_reports r SET claimed_until = now() + make_interval(secs => %(hold)s)"
            " FROM blocks b WHERE r.block_id IN (SELECT block_id FROM picked)"
            f" AND {free.format(t='r.')} AND b.block_id = r.block_id"
            f" RETURNING {_BLOCK_COLS_OF_B}, r.ns_id, r.file_id, r.rev, r.reported_at",
            {
                "only": list(only or ()),
                "limit": limit,
                "look": limit * CLAIM_LOOKAHEAD,
                "hold": hold_s,
                "lock": LockClass.BLOCK_REPORTS,
            },
        )
        blocks: dict[str, ReportedBlock] = {}
        for r in sorted(rows, key=lambda r: r[9]):  # the oldest report's version first
            blocks.setdefault(r[0], ReportedBlock(_block(r), (r[6], r[7], r[8])))
        return list(blocks.values())

    def _lock_reports_of(self, block_id: str) -> None:
        """Take a block's reports lock (waiting) before writing its reports, as
        `claim_reports` does: a claim whose hold ran out may be claiming them again, row by
        row in its own order."""
        self._all(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))::text",
            (LockClass.BLOCK_REPORTS, block_id),
        )

    def put_off_reports(self, block_id: str, seconds: float) -> None:
        """Let a block's pending reports be claimed again in `seconds` (0: at once)."""
        self._lock_reports_of(block_id)
        self._count(
            "UPDATE block_reports SET claimed_until = now() + make_interval(secs => %s)"
            " WHERE block_id = %s AND checked_at IS NULL",
            (seconds, block_id),
        )

    def mark_block_checked(self, block_id: str) -> None:
        """Record every pending report of a block checked now: one check serves them all."""
        self._lock_reports_of(block_id)
        self._count(
            "UPDATE block_reports SET checked_at = now()"
            " WHERE block_id = %s AND checked_at IS NULL",
            (block_id,),
        )

    def version_stored_blocks(
        self, version: tuple[int, str, int], after: str, limit: int
    ) -> list[BlockRow]:
        """The next `limit` live or cold blocks of a version (ns_id, file_id, rev) after
        block id `after`, each once, in id order."""
        rows = self._all(
            f"SELECT {_BLOCK_COLS} FROM blocks WHERE block_id IN (SELECT block_id"
            " FROM version_blocks WHERE ns_id = %s AND file_id = %s AND rev = %s)"
            " AND state IN ('live', 'cold') AND block_id > %s ORDER BY block_id LIMIT %s",
            (*version, after, limit),
        )
        return [_block(r) for r in rows]

    def unnotified_damage(self, limit: int) -> list[DamageNotice]:
        """Damaged versions whose namespace has not been told yet, oldest first."""
        rows = self._all(
            "SELECT d.ns_id, d.file_id, d.rev, d.block_id, d.staged_key, d.reason,"
            " COALESCE(v.path_display, '')"
            " FROM damaged_versions d JOIN namespaces n ON n.ns_id = d.ns_id"
            " LEFT JOIN file_versions v"
            "   ON v.ns_id = d.ns_id AND v.file_id = d.file_id AND v.rev = d.rev"
            " WHERE d.notified_at IS NULL ORDER BY d.detected_at LIMIT %s"
            " FOR UPDATE OF d SKIP LOCKED",
            (limit,),
        )
        return [DamageNotice(*r) for r in rows]

    def mark_notified(self, notices: Sequence[DamageNotice], at: datetime) -> None:
        """Record that the change feed carried these notices."""
        for n in notices:
            self._count(
                "UPDATE damaged_versions SET notified_at = %s WHERE ns_id = %s AND file_id = %s"
                " AND rev = %s AND block_id = %s AND staged_key = %s",
                (at, n.ns_id, n.file_id, n.rev, n.block_id, n.staged_key),
            )

    # -- gc: trash and version retention --------------------------------------------------

    def lock_trashed_files(self, cutoff: datetime, limit: int) -> list[tuple[int, str]]:
        """Row-lock files deleted before `cutoff` (skipping rows a user is touching), a
        folder's entries before the folder: they share its `deleted_at`, and a run that
        stopped between batches left /A/B/c with /A/B purged, and undeleting /A then
        restored c with no folder to hold it."""
        rows = self._all(
            "SELECT ns_id, file_id FROM files WHERE is_deleted AND deleted_at < %s"
            " ORDER BY deleted_at, path_key DESC LIMIT %s FOR UPDATE SKIP LOCKED",
            (cutoff, limit),
        )
        return [(r[0], r[1]) for r in rows]

    def purge_files(self, files: Sequence[tuple[int, str]]) -> tuple[int, dict[str, int]]:
        """Delete locked files with all their versions; (versions deleted, block refs freed)."""
        ns, ids = [f[0] for f in files], [f[1] for f in files]
        sel = "(ns_id, file_id) IN (SELECT * FROM unnest(%s::bigint[], %s::text[]))"
        freed = self._freed(f"DELETE FROM version_blocks WHERE {sel} RETURNING block_id", ns, ids)
        self._count(f"DELETE FROM damaged_versions WHERE {sel}", (ns, ids))
        versions = self._count(f"DELETE FROM file_versions WHERE {sel}", (ns, ids))
        self._count(f"DELETE FROM files WHERE {sel}", (ns, ids))
        return versions, freed

    def lock_expired_versions(
        self, cutoff: datetime, limit: int, *, after: tuple[int, str, int] = (0, "", 0)
    ) -> list[tuple[int, str, int]]:
        """Versions superseded before `cutoff` (never a file's latest), their files locked,
        in key order from `after` (a walk of the primary key, no sort).

        A version is kept while it was current at some time after `cutoff`, so any point of
        the retention window can be restored.
        """
        rows = self._all(
            "SELECT v.ns_id, v.file_id, v.rev FROM file_versions v"
            " JOIN files f ON f.ns_id = v.ns_id AND f.file_id = v.file_id"
            " WHERE (v.ns_id, v.file_id, v.rev) > (%(ns)s, %(file)s, %(rev)s)"
            "   AND v.server_time < %(cutoff)s AND v.rev < f.latest_rev"
            "   AND (SELECT n.server_time FROM file_versions n"
            "        WHERE n.ns_id = v.ns_id AND n.file_id = v.file_id AND n.rev > v.rev"
            "        ORDER BY n.rev LIMIT 1) < %(cutoff)s"
            " ORDER BY v.ns_id, v.file_id, v.rev LIMIT %(limit)s"
            " FOR UPDATE OF f SKIP LOCKED",
            {"cutoff": cutoff, "limit": limit, "ns": after[0], "file": after[1], "rev": after[2]},
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def purge_versions(self, versions: Sequence[tuple[int, str, int]]) -> dict[str, int]:
        """Delete the given versions and their block lists; the block refs they freed."""
        cols = (
            [v[0] for v in versions],
            [v[1] for v in versions],
            [v[2] for v in versions],
        )
        sel = (
            "(ns_id, file_id, rev) IN"
            " (SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[]))"
        )
        freed = self._freed(f"DELETE FROM version_blocks WHERE {sel} RETURNING block_id", *cols)
        self._count(f"DELETE FROM damaged_versions WHERE {sel}", cols)
        self._count(f"DELETE FROM file_versions WHERE {sel}", cols)
        return freed

    def _freed(self, sql: str, *params: object) -> dict[str, int]:
        freed: dict[str, int] = {}
        for (bid,) in self._all(sql, params):
            freed[bid] = freed.get(bid, 0) + 1
        return freed

    def release_refs(self, freed: dict[str, int], at: datetime) -> int:
        """Decrement refcounts (rows locked in block-id order); blocks reaching 0 note `at`,
        or now if `at` is past: a run as of last week (`--as-of`) releases them now, and
        noting last week had the next ordinary run delete them without their grace.

        Returns how many blocks reached refcount 0.
        """
        if not freed:
            return 0
        ids = sorted(freed)
        self._all(
            "SELECT 1 FROM blocks WHERE block_id = ANY(%s) ORDER BY block_id FOR UPDATE", (ids,)
        )
        rows = self._all(
            "UPDATE blocks b SET refcount = GREATEST(b.refcount - d.n, 0),"
            " zero_since = CASE WHEN b.refcount - d.n <= 0"
            "   THEN GREATEST(%s::timestamptz, now()) ELSE b.zero_since END,"
            " updated_at = now()"
            " FROM unnest(%s::text[], %s::bigint[]) AS d(block_id, n)"
            " WHERE b.block_id = d.block_id RETURNING b.refcount",
            (at, ids, [freed[i] for i in ids]),
        )
        return sum(1 for r in rows if r[0] == 0)

    # -- gc: upload sessions --------------------------------------------------------------

    def expire_sessions(self, cutoff: datetime, limit: int) -> int:
        """Mark open sessions that expired before `cutoff` as expired."""
        return self._count(
            "UPDATE upload_sessions SET state = 'expired' WHERE upload_id IN"
            " (SELECT upload_id FROM upload_sessions WHERE state = 'open' AND expires_at < %s"
            "  ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED)",
            (cutoff, limit),
        )

    def lock_abandoned_copies(
        self, limit: int, settled_before: datetime
    ) -> list[tuple[str, str, str, int]]:
        """Row-lock copies of expired sessions that no version names and no step awaits
        (promoted/dropped ones only once settled before `settled_before`: URLs issued for
        them may still be in use).

        Returns (upload_id, block_id, staged_key, stored_size or 0).
        """
        rows = self._all(
            "SELECT u.upload_id, u.block_id, u.staged_key, COALESCE(u.stored_size, 0)"
            " FROM upload_blocks u JOIN upload_sessions s ON s.upload_id = u.upload_id"
            " WHERE s.state = 'expired'"
            "   AND (u.state IN ('expected', 'staged') OR (u.state IN ('promoted', 'dropped')"
            "        AND (u.object_gone OR u.updated_at < %s)))"
            "   AND NOT EXISTS (SELECT 1 FROM version_blocks v WHERE v.staged_key = u.staged_key)"
            " LIMIT %s FOR UPDATE OF u SKIP LOCKED",
            (settled_before, limit),
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def lock_settled_copies(
        self, settled_before: datetime, limit: int
    ) -> list[tuple[str, str, str]]:
        """Row-lock promoted/dropped copies settled before `settled_before` whose objects are
        still stored and that no version names. Returns (upload_id, block_id, staged_key)."""
        rows = self._all(
            "SELECT u.upload_id, u.block_id, u.staged_key FROM upload_blocks u"
            " WHERE u.state IN ('promoted', 'dropped') AND NOT u.object_gone"
            "   AND u.updated_at < %s"
            "   AND NOT EXISTS (SELECT 1 FROM version_blocks v WHERE v.staged_key = u.staged_key)"
            " ORDER BY u.updated_at LIMIT %s FOR UPDATE OF u SKIP LOCKED",
            (settled_before, limit),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def lock_quarantined_copies(
        self, quarantined_before: datetime, limit: int
    ) -> list[tuple[str, str, str]]:
        """Row-lock quarantined copies settled before `quarantined_before` whose objects are
        still kept. Versions may name them: nothing ever serves a quarantined copy, so they
        do not keep its object. Returns (upload_id, block_id, staged_key)."""
        rows = self._all(
            "SELECT upload_id, block_id, staged_key FROM upload_blocks"
            " WHERE state = 'quarantined' AND NOT object_gone AND updated_at < %s"
            " ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (quarantined_before, limit),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def mark_objects_gone(self, copies: Sequence[tuple[str, str]]) -> None:
        """Record that the objects of (upload_id, block_id) copies are deleted."""
        self._count(
            "UPDATE upload_blocks SET object_gone = true WHERE (upload_id, block_id) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[]))",
            ([c[0] for c in copies], [c[1] for c in copies]),
        )

    def delete_abandoned_copies(
        self, copies: Sequence[tuple[str, str, str, int]]
    ) -> list[tuple[str, str, str, int]]:
        """Forget the locked copies (as `lock_abandoned_copies` returns them) that a version
        still does not name; those deleted, whose objects the caller then deletes.

        The re-check is a statement of its own, run once the rows are locked: the locking
        statement judged "no version names it" from a snapshot taken before it locked. A
        commit carrying the copy (`commits.settled`) locks its row FOR SHARE, so one that
        commits from now on waits for this transaction, and one that committed in between
        is seen here.
        """
        rows = self._all(
            "DELETE FROM upload_blocks u WHERE (u.upload_id, u.block_id) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[]))"
            "   AND NOT EXISTS (SELECT 1 FROM version_blocks v WHERE v.staged_key = u.staged_key)"
            " RETURNING u.upload_id, u.block_id, u.staged_key, COALESCE(u.stored_size, 0)",
            ([c[0] for c in copies], [c[1] for c in copies]),
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def delete_empty_sessions(self, limit: int) -> int:
        """Delete expired sessions with no copies left."""
        return self._count(
            "DELETE FROM upload_sessions WHERE upload_id IN"
            " (SELECT s.upload_id FROM upload_sessions s WHERE s.state = 'expired'"
            "  AND NOT EXISTS (SELECT 1 FROM upload_blocks u WHERE u.upload_id = s.upload_id)"
            "  LIMIT %s FOR UPDATE SKIP LOCKED)",
            (limit,),
        )

    # -- gc: idempotency keys -------------------------------------------------------------

    def expire_idempotency_keys(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` idempotency keys claimed before `cutoff`, oldest first (a
        key a request is claiming right now is skipped, not waited for)."""
        return self._count(
            "DELETE FROM idempotency_keys WHERE (user_id, key) IN"
            " (SELECT user_id, key FROM idempotency_keys WHERE created_at < %s"
            "  ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED)",
            (cutoff, limit),
        )

    def expire_runs(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` records of step runs that finished before `cutoff`, oldest
        first (by id: the primary key's order, which is the order they were written)."""
        return self._count(
            "DELETE FROM maintenance_runs WHERE run_id IN (SELECT run_id FROM maintenance_runs"
            " WHERE finished_at < %s ORDER BY run_id LIMIT %s)",
            (cutoff, limit),
        )

    # -- gc: unreferenced blocks ----------------------------------------------------------

    def lock_unreferenced_blocks(
        self, cutoff: datetime, limit: int, *, after: str = ""
    ) -> list[str]:
        """Row-lock blocks at refcount 0 since before `cutoff`, in block-id order from `after`."""
        rows = self._all(
            "SELECT block_id FROM blocks"
            " WHERE refcount = 0 AND block_id > %s AND COALESCE(zero_since, updated_at) < %s"
            " ORDER BY block_id LIMIT %s FOR UPDATE SKIP LOCKED",
            (after, cutoff, limit),
        )
        return [r[0] for r in rows]

    def delete_unreferenced(self, block_ids: Sequence[str]) -> list[tuple[str, int]]:
        """Delete the locked rows that the re-check still finds unreferenced, leaving a
        tombstone for each (`block_deletions`) until its object is gone.

        Re-check: refcount 0, no version names the block, and no open session or pending
        (staged, unverified) copy names it. Returns (block_id, stored bytes) deleted.
        """
        rows = self._all(
            "WITH gone AS (DELETE FROM blocks b WHERE b.block_id = ANY(%s) AND b.refcount = 0"
            " AND NOT EXISTS (SELECT 1 FROM version_blocks v WHERE v.block_id = b.block_id)"
            " AND NOT EXISTS (SELECT 1 FROM upload_blocks u"
            "   JOIN upload_sessions s ON s.upload_id = u.upload_id"
            "   WHERE u.block_id = b.block_id AND (s.state = 'open' OR u.state = 'staged'))"
            " RETURNING b.block_id, COALESCE(b.stored_size, 0) AS stored_size)"
            " INSERT INTO block_deletions (block_id, stored_size) SELECT * FROM gone"
            " ON CONFLICT (block_id) DO UPDATE SET stored_size = EXCLUDED.stored_size,"
            " deleted_at = now()"
            " RETURNING block_id, stored_size",
            (list(block_ids),),
        )
        return [(r[0], r[1]) for r in rows]

    def usage_drift(self, after: int, limit: int) -> tuple[int, list[tuple[int, int]]]:
        """For the `limit` namespaces after `after` (by id): the last id looked at, and
        (ns_id, drift) of those whose `bytes_used` is off by `drift` from what their live
        files hold. One statement, so one snapshot: a write moves the counter and the files
        in one transaction, so a drift read here stays the same whatever commits next."""
        rows = self._all(
            "WITH n AS (SELECT ns_id, bytes_used FROM namespaces WHERE ns_id > %s"
            " ORDER BY ns_id LIMIT %s)"
            f" SELECT n.ns_id, n.bytes_used - ({_LIVE_BYTES_OF_NS}) FROM n ORDER BY n.ns_id",
            (after, limit),
        )
        last = rows[-1][0] if rows else after
        return last, [(r[0], r[1]) for r in rows if r[1] != 0]

    def correct_usage(self, ns_id: int, drift: int) -> bool:
        """Take `drift` off the namespace's `bytes_used`, unless a writer holds its row (then
        the next run does it); True when corrected. Relative, so no count under the lock."""
        return bool(
            self._count(
                "UPDATE namespaces SET bytes_used = bytes_used - %s WHERE ns_id ="
                " (SELECT ns_id FROM namespaces WHERE ns_id = %s FOR UPDATE SKIP LOCKED)",
                (drift, ns_id),
            )
        )

    def claim_deletions(
        self, limit: int, *, block_ids: Sequence[str] | None = None
    ) -> list[tuple[str, int]]:
        """Row-lock up to `limit` tombstones (of `block_ids` only, when given) that another
        transaction does not hold: (block_id, stored bytes) of objects whose rows were
        deleted, by this run or by one that may have died. Taken before the blocks'
        maintenance locks, by every caller: one lock order, no deadlock."""
        only = " WHERE block_id = ANY(%s)" if block_ids is not None else ""
        params: list[Any] = [list(block_ids)] if block_ids is not None else []
        rows = self._all(
            f"SELECT block_id, stored_size FROM block_deletions{only}"
            " ORDER BY block_id LIMIT %s FOR UPDATE SKIP LOCKED",
            [*params, limit],
        )
        return [(r[0], r[1]) for r in rows]

    def forget_deletions(self, block_ids: Sequence[str]) -> None:
        """Drop the tombstones of `block_ids`: their objects are gone, or a row owns them
        again."""
        self.conn.execute(
            "DELETE FROM block_deletions WHERE block_id = ANY(%s)", (list(block_ids),)
        )

    # -- cold storage ------------------------------------------------------------------

    def cold_candidates(self, cutoff: datetime, limit: int) -> list[BlockRow]:
        """Live blocks not read since before `cutoff`, least recently read first."""
        rows = self._all(
            f"SELECT {_BLOCK_COLS} FROM blocks WHERE state = 'live'"
            " AND COALESCE(last_access, created_at) < %s"
            " ORDER BY COALESCE(last_access, created_at) LIMIT %s",
            (cutoff, limit),
        )
        return [_block(r) for r in rows]

    def unmoved_cold(self, limit: int) -> list[BlockRow]:
        """Blocks marked cold whose object is not recorded as moved (`storage_class` still
        hot): a run died between `mark_cold` and the move. Walks the cold rows
        (`blocks_state`), once per run."""
        rows = self._all(
            f"SELECT {_BLOCK_COLS} FROM blocks WHERE state = 'cold' AND storage_class = 'hot'"
            " LIMIT %s",
            (limit,),
        )
        return [_block(r) for r in rows]

    def mark_cold(self, block_id: str, cutoff: datetime) -> bool:
        """live → cold, the object still hot (`storage_class`), if the block is still live
        and unread since `cutoff` once its row is locked; a row another transaction holds
        (a download recording a read, a commit reusing the block) is left live."""
        return (
            self._count(
                "UPDATE blocks SET state = 'cold', storage_class = 'hot', updated_at = now()"
                " WHERE block_id = (SELECT block_id FROM blocks WHERE block_id = %s"
                "  AND state = 'live' AND COALESCE(last_access, created_at) < %s"
                "  FOR UPDATE SKIP LOCKED)",
                (block_id, cutoff),
            )
            == 1
        )

    def lock_unmoved(self, block_id: str, cutoff: datetime) -> bool | None:
        """Row-lock a block marked cold whose object has not moved yet: whether it is still
        unread since `cutoff`; None when it is no longer such a block or another
        transaction holds its row."""
        rows = self._all(
            "SELECT COALESCE(last_access, created_at) < %s FROM blocks WHERE block_id = %s"
            " AND state = 'cold' AND storage_class = 'hot' FOR UPDATE SKIP LOCKED",
            (cutoff, block_id),
        )
        return bool(rows[0][0]) if rows else None

    def mark_moved(self, block_id: str) -> None:
        """Record that a block marked cold has its object in the cold tier now."""
        self._count(
            "UPDATE blocks SET storage_class = 'cold', updated_at = now()"
            " WHERE block_id = %s AND state = 'cold'",
            (block_id,),
        )

    def restoring_blocks(self, limit: int, *, checked_before: datetime) -> list[BlockRow]:
        """Blocks a download asked to restore from the cold tier and not checked since
        `checked_before` (see `requeue_restoring`), the longest unchecked first."""
        rows = self._all(
            f"SELECT {_BLOCK_COLS} FROM blocks WHERE state = 'restoring' AND updated_at < %s"
            " ORDER BY updated_at LIMIT %s",
            (checked_before, limit),
        )
        return [_block(r) for r in rows]

    def restoring_among(self, block_ids: Sequence[str]) -> list[BlockRow]:
        """Those of `block_ids` still restoring, in id order."""
        rows = self._all(
            f"SELECT {_BLOCK_COLS} FROM blocks JOIN unnest(%s::text[]) AS t(id)"
            " ON block_id = t.id WHERE state = 'restoring' ORDER BY block_id",
            (list(block_ids),),
        )
        return [_block(r) for r in rows]

    def requeue_restoring(self, block_ids: Sequence[str]) -> None:
        """Record blocks still restoring as checked now (the back of the queue)."""
        if block_ids:
            self._count(
                "UPDATE blocks SET updated_at = now() WHERE block_id = ANY(%s)"
                " AND state = 'restoring'",
                (list(block_ids),),
            )

    def mark_restored(self, block_id: str, at: datetime) -> bool:
        """restoring → live (hot), counting the restore as a read at `at`."""
        return (
            self._count(
                "UPDATE blocks SET state = 'live', storage_class = 'hot', updated_at = now(),"
                " last_access = GREATEST(COALESCE(last_access, %s), %s)"
                " WHERE block_id = %s AND state = 'restoring'",
                (at, at, block_id),
            )
            == 1
        )

    # -- scrub ----------------------------------------------------------------------------

    def sample_stored(self, start: str, limit: int) -> list[BlockRow]:
        """Up to `limit` live or cold blocks from block id `start` on, wrapping around."""
        rows = self._stored(">=", start, limit)
        if len(rows) < limit:
            rows += self._stored("<", start, limit - len(rows))
        return rows

    def stored_after(self, after: str, limit: int) -> list[BlockRow]:
        """The next `limit` live or cold blocks after block id `after`, in id order."""
        return self._stored(">", after, limit)

    def _stored(self, op: str, bound: str, limit: int) -> list[BlockRow]:
        rows = self._all(
            f"SELECT {_BLOCK_COLS} FROM blocks WHERE state IN ('live', 'cold')"
            f" AND block_id {op} %s ORDER BY block_id LIMIT %s",
            (bound, limit),
        )
        return [_block(r) for r in rows]

    # -- resumable passes -----------------------------------------------------------------

    def lock_pass(self, step: str) -> None:
        """Wait for any other run's chunk of `step`'s pass, until the transaction ends: two
        runs at once read the same position, and both applied its chunk (a correction
        taken off twice). Each statement after it reads what the other committed."""
        self._all("SELECT pg_advisory_xact_lock(%s, hashtext(%s))::text", (LockClass.PASS, step))

    def pass_position(self, step: str) -> str | None:
        """Where the last call of `step` stopped its pass (None: start from the beginning)."""
        rows = self._all("SELECT position FROM maintenance_cursors WHERE step = %s", (step,))
        return str(rows[0][0]) if rows else None

    def pass_started(self, step: str) -> datetime:
        """When `step`'s pass under way began; now (the database's clock) if none is."""
        rows = self._all(
            "INSERT INTO maintenance_cursors (step, position) VALUES (%s, now()::text)"
            " ON CONFLICT (step) DO UPDATE SET position = maintenance_cursors.position"
            " RETURNING position::timestamptz",
            (step,),
        )
        started: datetime = rows[0][0]
        return started

    def set_pass_position(self, step: str, position: str | None) -> None:
        """Record where `step`'s pass stopped; None once it has reached the end."""
        if position is None:
            self._count("DELETE FROM maintenance_cursors WHERE step = %s", (step,))
            return
        self._count(
            "INSERT INTO maintenance_cursors (step, position) VALUES (%s, %s)"
            " ON CONFLICT (step) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
            (step, position),
        )

    # -- run log --------------------------------------------------------------------------

    def record_run(
        self,
        workflow: str,
        step: str,
        *,
        as_of: datetime,
        started_at: datetime,
        result: dict[str, Any],
    ) -> None:
        """Log one step run and its result."""
        self._count(
            "INSERT INTO maintenance_runs (workflow, step, as_of, started_at, result)"
            " VALUES (%s, %s, %s, %s, %s)",
            (workflow, step, as_of, started_at, Jsonb(result)),
        )


class MaintenanceRepository:
    """Opens short maintenance transactions on the metadata database's pool."""

    def __init__(self, db: Database, *, lock_timeout_ms: int = 2000) -> None:
        self.db = db
        self.lock_timeout_ms = lock_timeout_ms

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[MaintenanceTx]:
        """One transaction, committed on exit; waits for a lock at most `lock_timeout_ms`.

        `durable=False` skips waiting for the WAL flush at commit: only for work whose loss
        in a crash is harmless because the next run redoes it (and nothing outside the
        database acts on it having committed).
        """
        with self.db.pool.connection() as conn:
            conn.execute(f"SET LOCAL lock_timeout = '{int(self.lock_timeout_ms)}ms'".encode())
            if not durable:
                conn.execute(b"SET LOCAL synchronous_commit = off")
            yield MaintenanceTx(conn)

    def staged_copies(
        self,
        limit: int,
        *,
        after: tuple[str, str] = ("", ""),
        upload_ids: Sequence[str] | None = None,
    ) -> list[StagedCopy]:
        """Copies awaiting verification after (upload_id, block_id) `after`, in key order."""
        only = " AND upload_id = ANY(%s)" if upload_ids is not None else ""
        params: list[Any] = [after[0], after[1]]
        if upload_ids is not None:
            params.append(list(upload_ids))
        params.append(limit)
        with self.transaction() as tx:
            rows = tx._all(
                _STAGED_COPY_SQL
                + f" WHERE state = 'staged' AND (upload_id, block_id) > (%s, %s){only}"
                " ORDER BY upload_id, block_id LIMIT %s",
                params,
            )
        return [StagedCopy(*r) for r in rows]

    def live_blocks(self, block_ids: Sequence[str]) -> set[str]:
        """Those of `block_ids` whose row is live: a canonical object should hold them."""
        with self.transaction() as tx:
            rows = tx._all(
                "SELECT block_id FROM blocks WHERE block_id = ANY(%s) AND state = 'live'",
                (list(block_ids),),
            )
        return {r[0] for r in rows}


__all__ = [
    "BlockRow",
    "DamageNotice",
    "LockTimeout",
    "MaintenanceRepository",
    "MaintenanceTx",
    "StagedCopy",
]
