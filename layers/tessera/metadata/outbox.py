"""The outbox relay sweep (DESIGN §6): outbox rows → the change feed, then deleted.

The commit transaction writes the outbox row; the API publishes the event right after the
commit (fast path) and this sweep guarantees delivery when that failed. Rows are claimed
with `FOR UPDATE SKIP LOCKED`, so concurrent sweeps share the work instead of repeating
it; `ChangeFeed.publish` is idempotent on event_id, so a row published twice (fast path +
sweep, or a sweep that died before its commit) still lands once. At-least-once, no dupes.
A row the feed refuses for good (ChangeRefusedError: its key holds another event, or it
breaks a limit of the feed) goes to `outbox_dead` instead of holding back every row
behind it.

The outbox is a queue (migration 106): a delivered row is deleted in the transaction that
claimed it, so the table holds only what is pending and needs no index to find it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tessera.metadata.db import Database
from tessera.ports import ChangeEvent, ChangeFeed, ChangeRefusedError

log = logging.getLogger(__name__)


# The relay's statements (the `_SQL` names: `tests/integration/test_metadata_plans.py` checks
# their plans). Oldest first by the `outbox_by_age` index (migration 119): without it every
# claim sorted the whole table, and a backlog drained in time quadratic in its length.
_CLAIM_SQL = (
    "SELECT ns_id, seq, event_id, kind, payload FROM outbox"
    " WHERE created_at <= now() - make_interval(secs => %s)"
    " ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED"
)
_REMOVE_SQL = (
    "DELETE FROM outbox o USING unnest(%s::bigint[], %s::bigint[]) AS r(ns_id, seq)"
    " WHERE o.ns_id = r.ns_id AND o.seq = r.seq"
)
_DEAD_LETTER_SQL = (
    "WITH gone AS (DELETE FROM outbox o"
    " USING unnest(%s::bigint[], %s::bigint[], %s::text[]) AS r(ns_id, seq, error)"
    " WHERE o.ns_id = r.ns_id AND o.seq = r.seq"
    " RETURNING o.ns_id, o.seq, o.event_id, o.kind, o.payload, o.created_at, r.error)"
    " INSERT INTO outbox_dead (ns_id, seq, event_id, kind, payload, created_at, error)"
    " SELECT * FROM gone ON CONFLICT (ns_id, seq) DO UPDATE SET event_id ="
    " EXCLUDED.event_id, kind = EXCLUDED.kind, payload = EXCLUDED.payload,"
    " created_at = EXCLUDED.created_at, dead_at = now(), error = EXCLUDED.error"
)
_OLDEST_AGE_SQL = "SELECT extract(epoch FROM clock_timestamp() - min(created_at)) FROM outbox"


def claim_pending(
    conn: psycopg.Connection[Any], *, limit: int, min_age_s: float = 0.0
) -> list[ChangeEvent]:
    """Lock up to `limit` pending rows older than `min_age_s`, oldest first, skipping
    rows another sweep holds. The locks last until the transaction ends."""
    rows = conn.execute(_CLAIM_SQL, (min_age_s, limit)).fetchall()
    return [
        ChangeEvent(event_id=str(e), ns_id=int(ns), seq=int(seq), kind=str(k), payload=p or {})
        for ns, seq, e, k, p in rows
    ]


def remove_relayed(conn: psycopg.Connection[Any], events: list[ChangeEvent]) -> None:
    """Delete the rows of `events`, which reached the change feed."""
    if events:
        conn.execute(_REMOVE_SQL, ([e.ns_id for e in events], [e.seq for e in events]))


def dead_letter(conn: psycopg.Connection[Any], refused: list[tuple[ChangeEvent, str]]) -> None:
    """Move the rows of `refused` (event, why the feed refused it) to `outbox_dead`."""
    if refused:
        conn.execute(
            _DEAD_LETTER_SQL,
            (
                [e.ns_id for e, _ in refused],
                [e.seq for e, _ in refused],
                [why for _, why in refused],
            ),
        )


def pending_count(conn: psycopg.Connection[Any]) -> int:
    """How many outbox rows are still to relay (a metric and a test probe)."""
    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])  # type: ignore[index]


def oldest_pending_age_s(conn: psycopg.Connection[Any]) -> float:
    """Seconds since the oldest row still to relay was written, 0 when none: the relay lag
    (metric `RelayLagSeconds`): the first entry of `outbox_by_age`."""
    row = conn.execute(_OLDEST_AGE_SQL).fetchone()
    return max(0.0, float(row[0])) if row and row[0] is not None else 0.0


@dataclass
class RelayResult:
    """What one sweep did, and the lag it left behind."""

    relayed: int = 0
    failed: list[str] = field(default_factory=list)  # event_ids left for the next sweep
    dead: list[str] = field(default_factory=list)  # event_ids moved to outbox_dead
    lag_s: float = 0.0  # age of the oldest row still pending after the sweep


def relay_outbox(
    db: Database,
    feed: ChangeFeed,
    *,
    batch: int = 100,
    budget_s: float = 20.0,
    min_age_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> RelayResult:
    """Publish pending outbox rows to `feed` in batches of `batch`, one transaction each,
    until none is left or `budget_s` seconds have passed (a batch begun is finished).

    Every write leaves a row that only this sweep deletes (the fast path publishes the
    newest event of a namespace, not the rows), so the sweep must keep up with the write
    rate: a fixed 50 batches a sweep, 5,000 rows a minute on AWS (83 writes/s), fell
    behind for good at a fraction of the 700 to 2,000 commits/s the API takes.

    Each batch goes to the feed at once (`publish_many`: on DynamoDB, one BatchGetItem to
    skip what the fast path already delivered, then BatchWriteItem for the rest). A batch
    that fails stays pending and the sweep stops there: the next sweep retries it, and a
    feed outage costs one batch, not fifty. A batch the feed refuses for good (a conflict,
    an event over its size limit) is sent again event by event, and the events refused are
    moved to `outbox_dead`
    (`RelayResult.dead`). Then one query measures the lag left (`RelayResult.lag_s`).
    """
    result = RelayResult()
    deadline = clock() + budget_s
    while True:
        with db.transaction() as store:
            claimed = claim_pending(store.conn, limit=batch, min_age_s=min_age_s)
            if not claimed:
                break
            delivered, refused, left = _publish(feed, claimed)
            remove_relayed(store.conn, delivered)
            dead_letter(store.conn, refused)
        result.relayed += len(delivered)
        result.dead += [event.event_id for event, _ in refused]
        if left:  # they stay pending: the next sweep retries them
            result.failed += [event.event_id for event in left]
            break
        if len(claimed) < batch or clock() >= deadline:
            break
    with db.transaction() as store:
        result.lag_s = oldest_pending_age_s(store.conn)
    return result


def _publish(
    feed: ChangeFeed, events: list[ChangeEvent]
) -> tuple[list[ChangeEvent], list[tuple[ChangeEvent, str]], list[ChangeEvent]]:
    """(delivered, refused for good with the reason, not delivered for now) of `events`."""
    try:
        feed.publish_many(events)
        return events, [], []
    except ChangeRefusedError:
        pass  # which of them? each alone below
    except Exception:
        log.warning("relay of %d events failed", len(events), exc_info=True)
        return [], [], events
    delivered: list[ChangeEvent] = []
    refused: list[tuple[ChangeEvent, str]] = []
    for n, event in enumerate(events):
        try:
            feed.publish(event)
        except ChangeRefusedError as exc:
            log.error(
                "the change feed refuses event %s for good (%s); moved to outbox_dead"
                ' (see docs/deploy.md, "Dead-lettered events")',
                event.event_id,
                exc,
            )
            refused.append((event, str(exc)))
        except Exception:
            log.warning("relay of event %s failed", event.event_id, exc_info=True)
            return delivered, refused, events[n:]
        else:
            delivered.append(event)
    return delivered, refused, []
