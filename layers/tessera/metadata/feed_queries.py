"""SQL behind the local change feed (PostgreSQL LISTEN/NOTIFY), owned by the local cloud.

`local_change_heads` (migration 051) holds the latest seq published per namespace — the
local twin of the DynamoDB `changes` table — so a long-poll first checks it and returns at
once when a change happened before it started. The commit transaction may call
`notify_change` itself: PostgreSQL delivers a NOTIFY and makes the head visible only when the
transaction commits, so a waiter never wakes for a change it cannot yet read.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import psycopg

#: The NOTIFY channel; the payload is `"<ns_id>:<seq>"` ("namespace N reached seq S").
CHANNEL = "tessera_changes"


def payload(ns_id: int, seq: int) -> str:
    """The NOTIFY payload for "namespace `ns_id` reached `seq`"."""
    return f"{ns_id}:{seq}"


def parse_payload(text: str) -> tuple[int, int] | None:
    """(ns_id, seq) of a payload, or None when it is not one of ours."""
    ns, _, seq = text.partition(":")
    try:
        return int(ns), int(seq)
    except ValueError:
        return None


def notify_change(conn: psycopg.Connection[Any], ns_id: int, seq: int) -> None:
    """Record that `ns_id` reached `seq` and queue the NOTIFY (both land at commit).

    Idempotent: the head only moves forward, and a repeated NOTIFY only makes waiters
    compare seqs again.
    """
    conn.execute(
        "INSERT INTO local_change_heads (ns_id, seq) VALUES (%s, %s)"
        " ON CONFLICT (ns_id) DO UPDATE SET seq = GREATEST(local_change_heads.seq, EXCLUDED.seq)",
        (ns_id, seq),
    )
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload(ns_id, seq)))


def latest_seqs(conn: psycopg.Connection[Any], ns_ids: Collection[int]) -> dict[int, int]:
    """The latest published seq of each namespace in `ns_ids` (unknown ones omitted)."""
    rows = conn.execute(
        "SELECT ns_id, seq FROM local_change_heads WHERE ns_id = ANY(%s)", (list(ns_ids),)
    ).fetchall()
    return {int(ns): int(seq) for ns, seq in rows}
