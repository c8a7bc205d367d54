"""The outbox relay sweep (DESIGN §6): outbox rows → the change feed, then deleted.

The commit transaction writes the outbox row; the API publishes the event right after the
commit (fast path) and this sweep guarantees delivery when that failed. Rows are claimed
with `FOR UPDATE SKIP LOCKED`, so concurrent sweeps share the work instead of repeating
it; `ChangeFeed.publish` is idempotent on event_id, so a row published twice (fast path +
sweep, or a sweep that died before its commit) still lands once. At-least-once, no dupes.

The outbox is a queue (migration 106): a delivered row is deleted in the transaction that
claimed it, so the table holds only what is pending and needs no index to find it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tessera.metadata.db import Database
from tessera.ports import ChangeEvent, ChangeFeed

log = logging.getLogger(__name__)


def claim_pending(
    conn: psycopg.Connection[Any], *, limit: int, min_age_s: float = 0.0
) -> list[ChangeEvent]:
    """Lock up to `limit` pending rows older than `min_age_s`, oldest first, skipping
    rows another sweep holds. The locks last until the transaction ends."""
    rows = conn.execute(
        "SELECT ns_id, seq, event_id, kind, payload FROM outbox"
        " WHERE created_at <= now() - make_interval(secs => %s)"
        " ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED",
        (min_age_s, limit),
    ).fetchall()
    return [
        ChangeEvent(event_id=str(e), ns_id=int(ns), seq=int(seq), kind=str(k), payload=p or {})
        for ns, seq, e, k, p in rows
    ]


def remove_relayed(conn: psycopg.Connection[Any], events: list[ChangeEvent]) -> None:
    """Delete the rows of `events`, which reached the change feed."""
    if events:
        conn.execute(
            "DELETE FROM outbox o USING unnest(%s::bigint[], %s::bigint[]) AS r(ns_id, seq)"
            " WHERE o.ns_id = r.ns_id AND o.seq = r.seq",
            ([e.ns_id for e in events], [e.seq for e in events]),
        )


def pending_count(conn: psycopg.Connection[Any]) -> int:
    """How many outbox rows are still to relay (a metric and a test probe)."""
    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])  # type: ignore[index]


def oldest_pending_age_s(conn: psycopg.Connection[Any]) -> float:
    """Seconds since the oldest row still to relay was written, 0 when none: the relay lag
    (metric `RelayLagSeconds`). A scan of the pending rows, which are all the table holds."""
    row = conn.execute(
        "SELECT extract(epoch FROM clock_timestamp() - min(created_at)) FROM outbox"
    ).fetchone()
    return max(0.0, float(row[0])) if row and row[0] is not None else 0.0


@dataclass
class RelayResult:
    """What one sweep did, and the lag it left behind."""

    relayed: int = 0
    failed: list[str] = field(default_factory=list)  # event_ids left for the next sweep
    lag_s: float = 0.0  # age of the oldest row still pending after the sweep


def relay_outbox(
    db: Database,
    feed: ChangeFeed,
    *,
    batch: int = 100,
    max_batches: int = 50,
    min_age_s: float = 0.0,
) -> RelayResult:
    """Publish pending outbox rows to `feed` in batches of `batch`, one transaction each.

    Each batch goes to the feed at once (`publish_many`: on DynamoDB, one BatchGetItem to
    skip what the fast path already delivered, then BatchWriteItem for the rest). A batch that fails
    stays pending and the sweep stops there: the next sweep retries it, and a feed outage
    costs one batch, not fifty. Then one query measures the lag left (`RelayResult.lag_s`).
    """
    result = RelayResult()
    for _ in range(max_batches):
        with db.transaction() as store:
            claimed = claim_pending(store.conn, limit=batch, min_age_s=min_age_s)
            if not claimed:
                break
            try:
                feed.publish_many(claimed)
            except Exception:  # they stay pending: the next sweep retries them
                log.warning("relay of %d events failed", len(claimed), exc_info=True)
                result.failed += [event.event_id for event in claimed]
                break
            remove_relayed(store.conn, claimed)
        result.relayed += len(claimed)
        if len(claimed) < batch:
            break
    with db.transaction() as store:
        result.lag_s = oldest_pending_age_s(store.conn)
    return result
