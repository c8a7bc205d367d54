"""SQL behind the local change feed (PostgreSQL LISTEN/NOTIFY), owned by the local cloud.

A long-poll first reads the namespaces' heads and returns at once when a change happened
before it started, then waits for a NOTIFY. Commits move `namespaces.latest_seq` and NOTIFY
inside their own transaction (`tessera.metadata.store`), so the domain's `ChangeFeed.publish`
after a commit finds the head already there and writes nothing. Only an event ahead of the
namespace's head (published by something other than a commit: the port contract, a relay)
moves `local_change_heads` (migration 051, the local twin of the DynamoDB `changes` table)
and NOTIFYs, without waiting for the WAL flush: it is a wake-up hint, the outbox is the
guarantee. PostgreSQL delivers a NOTIFY only at commit, so a waiter never wakes for a change
it cannot yet read.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

import psycopg

from tessera.metadata.store import NOTIFY_CHANNEL

#: The NOTIFY channel the commit transaction uses; payload `{"ns_id": N, "seq": S}`.
CHANNEL = NOTIFY_CHANNEL


def payload(ns_id: int, seq: int) -> str:
    """The NOTIFY payload for "namespace `ns_id` reached `seq`"."""
    return json.dumps({"ns_id": ns_id, "seq": seq})


def parse_payload(text: str) -> tuple[int, int] | None:
    """(ns_id, seq) of a payload, or None when it is not one of ours."""
    try:
        data = json.loads(text)
        return int(data["ns_id"]), int(data["seq"])
    except (ValueError, TypeError, KeyError):
        return None


def publish_heads(conn: psycopg.Connection[Any], heads: Mapping[int, int]) -> int:
    """Record that each namespace reached its seq in `heads` and NOTIFY, for the namespaces
    whose head is not there yet; returns how many that was. `conn` is in autocommit mode.

    The common case — a commit already moved `namespaces.latest_seq` and NOTIFYed in its
    own transaction — costs one read and no write. Otherwise one transaction with
    `synchronous_commit = off` (no WAL flush wait). Idempotent: heads only move forward, and
    a repeated NOTIFY only makes waiters compare seqs again.
    """
    known = latest_seqs(conn, heads.keys())
    behind = {ns: seq for ns, seq in heads.items() if known.get(ns, -1) < seq}
    if not behind:
        return 0
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = off")
        for ns_id, seq in behind.items():
            conn.execute(
                "INSERT INTO local_change_heads (ns_id, seq) VALUES (%s, %s) ON CONFLICT (ns_id)"
                " DO UPDATE SET seq = GREATEST(local_change_heads.seq, EXCLUDED.seq)",
                (ns_id, seq),
            )
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload(ns_id, seq)))
    return len(behind)


def latest_seqs(conn: psycopg.Connection[Any], ns_ids: Collection[int]) -> dict[int, int]:
    """The latest seq of each namespace in `ns_ids` (unknown ones omitted).

    A commit moves `namespaces.latest_seq` in its own transaction; `publish_heads` moves
    `local_change_heads` for events ahead of it. Either counts.
    """
    ids = list(ns_ids)
    rows = conn.execute(
        "SELECT ns_id, max(seq) FROM ("
        " SELECT ns_id, latest_seq AS seq FROM namespaces WHERE ns_id = ANY(%s)"
        " UNION ALL SELECT ns_id, seq FROM local_change_heads WHERE ns_id = ANY(%s)"
        ") AS heads GROUP BY ns_id",
        (ids, ids),
    ).fetchall()
    return {int(ns): int(seq) for ns, seq in rows}
