"""The outbox relay keeps up with the write rate: a sweep drains a backlog for as long as
its time budget lasts, not a fixed number of batches."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from tessera.domain.services import Services
from tessera.metadata.outbox import pending_count, relay_outbox
from tessera.ports import ChangeEvent, ChangeFeed, Principal

from .conftest import put_file


class CountingFeed(ChangeFeed):
    """A change feed that only counts what reaches it."""

    def __init__(self) -> None:
        self.published = 0

    def publish(self, event: ChangeEvent) -> None:
        self.published += 1

    def publish_many(self, events: Sequence[ChangeEvent]) -> None:
        self.published += len(events)

    def wait(self, cursors: Mapping[int, int], timeout: float) -> bool:
        return False


def backlog(services: Services, alice: Principal, rows: int) -> None:
    """`rows` outbox rows a minute old: one commit's, copied (cheaper than `rows` commits)."""
    put_file(services, alice, "/seed.txt", b"seed")
    with services.db.transaction() as store:
        store.conn.execute(
            "INSERT INTO outbox (ns_id, seq, event_id, kind, payload, created_at)"
            " SELECT o.ns_id, o.seq + g, o.event_id || '-' || g, o.kind, o.payload, o.created_at"
            " FROM outbox o, generate_series(1, %s) g",
            (rows - 1,),
        )
        store.conn.execute("UPDATE outbox SET created_at = now() - interval '1 minute'")


def pending(services: Services) -> int:
    with services.db.transaction() as store:
        return pending_count(store.conn)


def test_one_sweep_drains_more_than_fifty_batches(services: Services, alice: Principal) -> None:
    """50 batches of 100 a sweep, once a minute on AWS, fell behind for good above 83
    writes/s."""
    backlog(services, alice, 6_000)
    feed = CountingFeed()
    result = relay_outbox(services.db, feed)
    assert (result.relayed, feed.published, result.lag_s) == (6_000, 6_000, 0.0)
    assert pending(services) == 0


def test_a_sweep_stops_when_its_budget_is_spent(services: Services, alice: Principal) -> None:
    backlog(services, alice, 1_000)
    ticks = itertools.count()  # each look at the clock: a second later
    result = relay_outbox(
        services.db, CountingFeed(), budget_s=2.5, clock=lambda: float(next(ticks))
    )
    assert result.relayed == 300  # the batches begun at 0, 1 and 2 s; then out of time
    assert pending(services) == 700 and result.lag_s >= 60
