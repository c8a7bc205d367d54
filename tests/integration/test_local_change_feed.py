"""The Postgres change feed beyond the port contract: the async waiters the gateway uses,
the commit transaction's NOTIFY format, and surviving a lost listener connection."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence

import psycopg
import pytest

from tessera.adapters.local import PostgresChangeFeed
from tessera.domain.errors import Unavailable
from tessera.domain.services import Services
from tessera.metadata import NOTIFY_CHANNEL
from tessera.ports import ChangeEvent, ChangeFeed, Principal
from tests.integration.conftest import put_file


@pytest.fixture
def feed(database_url: str) -> Iterator[PostgresChangeFeed]:
    f = PostgresChangeFeed(database_url)
    try:
        yield f
    finally:
        f.close()


class _Recording(ChangeFeed):
    """Keeps every event the domain hands the feed, then passes it on."""

    def __init__(self, inner: ChangeFeed, handed: list[ChangeEvent]) -> None:
        self.inner, self.handed = inner, handed

    def publish(self, event: ChangeEvent) -> None:
        self.publish_many([event])

    def publish_many(self, events: Sequence[ChangeEvent]) -> None:
        self.handed.extend(events)
        self.inner.publish_many(events)

    def wait(self, cursors: Mapping[int, int], timeout: float) -> bool:
        return self.inner.wait(cursors, timeout)


def _event(ns: int, seq: int) -> ChangeEvent:
    return ChangeEvent(event_id=uuid.uuid4().hex, ns_id=ns, seq=seq, kind="file")


def test_one_publish_wakes_many_async_waiters(feed: PostgresChangeFeed) -> None:
    async def scenario() -> list[bool]:
        waits = [asyncio.create_task(feed.wait_async({1: 0}, 20)) for _ in range(200)]
        others = [asyncio.create_task(feed.wait_async({2: 0}, 1.0)) for _ in range(5)]
        while feed.waiting() < 205:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(feed.publish, _event(1, 1))
        woken = await asyncio.wait_for(asyncio.gather(*waits), 10)
        return [*woken, *await asyncio.gather(*others)]

    results = asyncio.run(scenario())
    assert results == [True] * 200 + [False] * 5
    assert feed.waiting() == 0


def test_async_wait_returns_at_once_and_times_out(feed: PostgresChangeFeed) -> None:
    feed.publish(_event(3, 4))

    async def scenario() -> tuple[bool, bool, float]:
        started = time.monotonic()
        already = await feed.wait_async({3: 3}, 10)
        fast = time.monotonic() - started
        return already, await feed.wait_async({3: 4}, 0.3), fast

    already, timed_out, fast = asyncio.run(scenario())
    assert (already, timed_out) == (True, False)
    assert fast < 2


def test_a_commit_transactions_notify_wakes_waiters(
    feed: PostgresChangeFeed, database_url: str
) -> None:
    """The server core NOTIFYs inside its commit transaction with a JSON payload."""
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(feed.wait({9: 4}, 20)))
    waiter.start()
    while feed.waiting() < 1:
        time.sleep(0.01)
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute(
            "SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, json.dumps({"ns_id": 9, "seq": 5}))
        )
    waiter.join(10)
    assert results == [True]


def test_notifications_for_older_seqs_or_garbage_do_not_wake(
    feed: PostgresChangeFeed, database_url: str
) -> None:
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(feed.wait({10: 7}, 1.5)))
    waiter.start()
    while feed.waiting() < 1:
        time.sleep(0.01)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, "not json"))
        conn.execute(
            "SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, json.dumps({"ns_id": 10, "seq": 7}))
        )
    waiter.join(10)
    assert results == [False]


def test_waiters_survive_a_lost_listener_connection(
    feed: PostgresChangeFeed, database_url: str
) -> None:
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(feed.wait({11: 0}, 20)))
    waiter.start()
    while feed.waiting() < 1:
        time.sleep(0.01)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%%' AND datname = current_database()"
        )
        # published while the listener is down: its NOTIFY is lost, the head is not
        conn.execute("INSERT INTO local_change_heads (ns_id, seq) VALUES (11, 1)")
    waiter.join(15)
    assert results == [True]


def test_publishing_what_a_commit_already_announced_writes_nothing(
    feed: PostgresChangeFeed, database_url: str
) -> None:
    """A commit moves `namespaces.latest_seq` and NOTIFYs in its own transaction, so the
    domain's publish right after it must not cost a second write transaction (and its WAL
    flush); an event ahead of the head still moves the head and wakes waiters."""
    from tessera.metadata import Database

    with Database(database_url) as db:
        with db.transaction() as store:
            store.create_user("u-feed", "feed@example.com", 1 << 30)
        with db.transaction() as store:
            ns = store.user_view("u-feed")[1][0].ns_id  # type: ignore[index]
            store.conn.execute("UPDATE namespaces SET latest_seq = 7 WHERE ns_id = %s", (ns,))

    def head_rows() -> list[tuple[int]]:
        with psycopg.connect(database_url) as conn:
            return conn.execute(
                "SELECT seq FROM local_change_heads WHERE ns_id = %s", (ns,)
            ).fetchall()

    feed.publish(_event(ns, 7))
    feed.publish_many([_event(ns, 6), _event(ns, 7)])
    assert head_rows() == []  # nothing written
    assert feed.wait({ns: 6}, timeout=5) is True
    assert feed.wait({ns: 7}, timeout=0.3) is False

    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(feed.wait({ns: 7}, 20)))
    waiter.start()
    while feed.waiting() < 1:
        time.sleep(0.01)
    feed.publish_many([_event(ns, 8), _event(ns, 9)])  # ahead of the head: recorded, wakes
    waiter.join(10)
    assert results == [True]
    assert head_rows() == [(9,)]


def test_an_event_its_transaction_announced_costs_the_feed_nothing(
    feed: PostgresChangeFeed, database_url: str
) -> None:
    """The commit path's events come `announced` (their transaction moved the head and
    NOTIFYed): publishing them asks nothing of PostgreSQL, while the same event unannounced
    is recorded."""
    announced = ChangeEvent("ev-announced", 12, 5, "file", announced=True)
    feed.publish_many([announced])
    feed.publish(announced)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT seq FROM local_change_heads WHERE ns_id = 12").fetchall()
    assert rows == []
    feed.publish(ChangeEvent("ev-plain", 12, 5, "file"))
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT seq FROM local_change_heads WHERE ns_id = 12").fetchall()
    assert rows == [(5,)]


def test_a_commits_event_is_announced_and_still_wakes_a_long_poll(
    services: Services, alice: Principal
) -> None:
    """What makes skipping sound: the event a commit hands the feed is marked announced,
    and a waiter on the namespace wakes from the commit's own NOTIFY."""
    handed: list[ChangeEvent] = []
    recording = dataclasses.replace(services, feed=_Recording(services.feed, handed))
    put_file(recording, alice, "/warm.txt", b"warm")  # provisions alice's namespace
    ns = handed[-1].ns_id
    results: list[bool] = []
    waiter = threading.Thread(
        target=lambda: results.append(services.feed.wait({ns: handed[-1].seq}, 20))
    )
    waiter.start()
    while services.feed.waiting() < 1:  # type: ignore[attr-defined]
        time.sleep(0.01)
    put_file(recording, alice, "/a.txt", b"hello")
    waiter.join(10)
    assert results == [True]
    assert len(handed) == 2 and all(e.announced for e in handed)


def test_a_database_outage_is_unavailable_not_a_crash() -> None:
    """The long-poll's wait met a database that is down with a bare OperationalError (or
    RuntimeError from the listener): 500 with a traceback, where every other request says
    503 + Retry-After."""
    down = PostgresChangeFeed("postgresql://tessera@127.0.0.1:1/none?connect_timeout=1")
    try:
        with pytest.raises(Unavailable) as waited:
            asyncio.run(down.wait_async({1: 0}, 1.0))
        assert waited.value.status == 503 and waited.value.retry_after == 2
        # the driver's message (host, port, socket path, user) stays in the log
        assert "127.0.0.1" not in str(waited.value) and "tessera" not in str(waited.value)
        with pytest.raises(Unavailable):
            down.wait({1: 0}, 1.0)
    finally:
        down.close()
