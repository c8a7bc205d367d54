"""An outbox row the change feed refuses for good (ChangeConflictError) is moved to
`outbox_dead`; the rows behind it are still delivered, and a feed outage still leaves every
row undelivered pending."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from tessera.domain.services import Services
from tessera.metadata.outbox import relay_outbox
from tessera.ports import ChangeConflictError, ChangeEvent, ChangeFeed, Principal

from .conftest import put_file


class RefusingFeed(ChangeFeed):
    """The local feed, refusing `conflicts` for good and failing at `down` (an outage that
    starts at that event); records what it delivered."""

    def __init__(
        self, inner: ChangeFeed, conflicts: Iterable[str] = (), down: str | None = None
    ) -> None:
        self.inner = inner
        self.conflicts = set(conflicts)
        self.down = down
        self.delivered: list[str] = []

    def publish(self, event: ChangeEvent) -> None:
        if event.event_id == self.down:
            raise ConnectionError("the feed is unreachable")
        if event.event_id in self.conflicts:
            raise ChangeConflictError(f"seq {event.seq} holds another event")
        self.inner.publish(event)
        self.delivered.append(event.event_id)

    def publish_many(self, events: Sequence[ChangeEvent]) -> None:
        # as DynamoChangeFeed: a conflict anywhere refuses the batch before writing any
        if any(e.event_id in self.conflicts for e in events):
            raise ChangeConflictError("a key holds another event")
        for event in events:
            self.publish(event)

    def wait(self, cursors: Mapping[int, int], timeout: float) -> bool:
        return self.inner.wait(cursors, timeout)


def _outbox(services: Services, table: str = "outbox") -> list[tuple[str, ...]]:
    with services.db.transaction() as store:
        rows = store.conn.execute(f"SELECT event_id FROM {table} ORDER BY created_at, seq")
        return [tuple(r) for r in rows.fetchall()]


def _queue(services: Services, alice: Principal, files: int) -> list[str]:
    for i in range(files):
        put_file(services, alice, f"/q{i}.txt", b"q" * (i + 1))
    return [e for (e,) in _outbox(services)]


def test_a_refused_event_is_dead_lettered_and_the_rest_delivered(
    services: Services, alice: Principal
) -> None:
    events = _queue(services, alice, 5)
    poison = events[1]
    feed = RefusingFeed(services.feed, conflicts={poison})
    result = relay_outbox(services.db, feed, batch=3)
    assert result.dead == [poison] and result.failed == []
    assert result.relayed == 4 and sorted(feed.delivered) == sorted(set(events) - {poison})
    assert _outbox(services) == []
    with services.db.transaction() as store:
        dead = store.conn.execute(
            "SELECT event_id, error, kind, payload ? 'path' FROM outbox_dead"
        ).fetchall()
    assert len(dead) == 1 and dead[0][0] == poison
    assert "holds another event" in dead[0][1] and dead[0][2:] == ("file", True)
    again = relay_outbox(services.db, feed)
    assert (again.relayed, again.dead, again.failed) == (0, [], [])


def test_an_outage_while_sending_one_by_one_keeps_the_rest_pending(
    services: Services, alice: Principal
) -> None:
    events = _queue(services, alice, 4)
    feed = RefusingFeed(services.feed, conflicts={events[0]}, down=events[2])
    result = relay_outbox(services.db, feed)
    assert result.dead == [events[0]] and feed.delivered == [events[1]]
    assert result.failed == events[2:] and result.relayed == 1
    assert [e for (e,) in _outbox(services)] == events[2:]  # pending, for the next sweep
    feed.down = None
    assert relay_outbox(services.db, feed).relayed == 2
    assert _outbox(services) == [] and _outbox(services, "outbox_dead") == [(events[0],)]
