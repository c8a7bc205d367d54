"""DynamoChangeFeed against moto: idempotent publish, TTL, waits, stream records."""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pynamodb.connection.base
import pytest

from tessera.adapters.aws import (
    AwsClients,
    AwsSettings,
    ChangeConflictError,
    ChangeRecordBase,
    DynamoChangeFeed,
    changes_model,
    stream_image_to_event,
)
from tessera.domain import changes
from tessera.maintenance.damage import damage_event
from tessera.metadata.maintenance import DamageNotice
from tessera.ports import ChangeEvent
from tests.concurrency import run_at_once

pytestmark = pytest.mark.aws


@pytest.fixture(scope="module")
def model(aws_settings: AwsSettings) -> type[ChangeRecordBase]:
    return changes_model(
        aws_settings.changes_table, region=aws_settings.region, host=aws_settings.endpoint_url
    )


@pytest.fixture
def feed(model: type[ChangeRecordBase]) -> DynamoChangeFeed:
    return DynamoChangeFeed(model, min_interval=0.02, max_interval=0.1)


def _ns() -> int:
    return random.randrange(1, 2**53)


def test_publish_is_idempotent_on_event_id(
    feed: DynamoChangeFeed, model: type[ChangeRecordBase]
) -> None:
    ns = _ns()
    event = ChangeEvent("ev-1", ns, 1, "file", {"path": "/a.txt", "rev": 1})
    feed.publish(event)
    feed.publish(event)  # a retry, or the relay after the fast path: no second item
    assert feed.changes_after(ns, 0) == [event]
    item = model.get(ns, 1)
    assert item.expires_at is not None and item.expires_at.timestamp() > time.time() + 86_400
    with pytest.raises(ChangeConflictError):
        feed.publish(ChangeEvent("ev-other", ns, 1, "file"))


def test_publish_many_stays_idempotent(feed: DynamoChangeFeed) -> None:
    ns = _ns()
    events = [ChangeEvent(f"batch-{ns}-{i}", ns, i, "file", {"i": i}) for i in range(1, 151)]
    feed.publish(events[120])  # the relay got there first for one of them
    feed.publish_many(events[:130])  # 100 concurrent puts, then 30 with a duplicate
    feed.publish_many(events)  # a full retry: only the last 20 are new
    assert feed.changes_after(ns, 0, limit=1000) == events
    with pytest.raises(ChangeConflictError):
        feed.publish_many([ChangeEvent("other", ns, 5, "file"), ChangeEvent("x", ns, 500, "file")])


def test_the_fast_path_publishes_with_one_call_and_the_relay_reads_first(
    feed: DynamoChangeFeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit's one fresh event is one conditional PutItem; the relay sending it again
    (it usually finds it there) reads and writes nothing, and another event at the same
    key is still refused."""
    calls: list[str] = []
    real = pynamodb.connection.base.Connection._make_api_call

    def recording(self: Any, operation_name: str, operation_kwargs: dict[str, Any]) -> Any:
        calls.append(operation_name)
        return real(self, operation_name, operation_kwargs)

    monkeypatch.setattr(pynamodb.connection.base.Connection, "_make_api_call", recording)
    ns = _ns()
    event = ChangeEvent(f"one-{ns}", ns, 1, "file")
    changes.publish(feed, [None, event])
    assert calls == ["PutItem"]
    feed.publish_many([event])
    assert calls[1:] == ["BatchGetItem"]
    with pytest.raises(ChangeConflictError):
        feed.publish_many([ChangeEvent("another", ns, 1, "file")])
    assert feed.changes_after(ns, 0) == [event]


def test_a_damage_notice_keeps_clear_of_the_journal(feed: DynamoChangeFeed) -> None:
    """A `block_damaged` notice published once the namespace's newest journal event is on
    the table (and before it: the relay must still deliver that event afterwards): no
    conflict either way, and a long-poll neither lists it nor wakes for it."""
    ns = _ns()
    journal = ChangeEvent(f"ns{ns}-7", ns, 7, "file", {"path": "/a"})
    notice = damage_event(DamageNotice(ns, "f1", 3, "b3:" + "0" * 64, "", "bad tag", "/a"))
    feed.publish(journal)
    feed.publish(notice)
    other = _ns()
    early = damage_event(DamageNotice(other, "f2", 1, "b3:" + "1" * 64, "", "bad tag", "/b"))
    feed.publish(early)
    relayed = [ChangeEvent(f"ns{other}-{n}", other, n, "file") for n in (1, 2)]
    feed.publish_many(relayed)  # the relay's sweep, after the notice
    assert feed.changes_after(ns, 0) == [journal]
    assert feed.wait({ns: 7}, timeout=0) is False
    assert feed.changes_after(other, 0) == relayed
    # a block report's event comes by the relay's sweep too, among journal events (twice:
    # the fast path and the sweep), and stays as clear of the journal
    bid = "b3:" + "2" * 64
    report = changes.side_event(other, "block_reported", bid, {"block_id": bid}, prefix="reported-")
    feed.publish_many([report, *relayed])
    feed.publish_many([report])
    assert feed.changes_after(other, 0) == relayed
    assert report in feed.changes_after(other, -(2**53))


def test_racing_publish_many_write_each_event_once(feed: DynamoChangeFeed) -> None:
    """Both callers see every key missing (BatchGetItem), then both batch-write: each item
    ends up holding its one event."""
    ns = _ns()
    events = [ChangeEvent(f"race-{ns}-{i}", ns, i, "file") for i in range(1, 41)]
    _, errors = run_at_once(lambda: feed.publish_many(events), 2)
    assert errors == []
    assert feed.changes_after(ns, 0, limit=1000) == events


def test_publish_many_writes_nothing_of_a_batch_that_holds_a_conflict(
    feed: DynamoChangeFeed,
) -> None:
    """A key holding a different event means the journal and the table disagree: refuse
    before writing anything (the relay then sends the batch event by event, and moves the
    one refused to outbox_dead: never an overwrite)."""
    ns = _ns()
    events = [ChangeEvent(f"part-{ns}-{i}", ns, i, "file") for i in range(1, 21)]
    intruder = ChangeEvent("intruder", ns, 7, "file")
    feed.publish(intruder)
    with pytest.raises(ChangeConflictError):
        feed.publish_many(events)
    assert feed.changes_after(ns, 0, limit=1000) == [intruder]


def test_wait_sees_past_and_future_changes(feed: DynamoChangeFeed) -> None:
    ns, other = _ns(), _ns()
    assert feed.wait({ns: 0, other: 0}, timeout=0.1) is False
    feed.publish(ChangeEvent(uuid.uuid4().hex, ns, 1, "file"))
    assert feed.wait({ns: 0}, timeout=0) is True  # a change before the call counts
    assert feed.wait({ns: 1}, timeout=0.1) is False

    timer = threading.Timer(0.3, feed.publish, [ChangeEvent(uuid.uuid4().hex, other, 5, "file")])
    timer.start()
    start = time.monotonic()
    assert feed.wait({ns: 1, other: 4}, timeout=5) is True
    woke = time.monotonic() - start
    timer.join()
    assert 0.25 < woke < 4  # woken by the change (at 0.3 s), not by the 5 s timeout


def _on_a_fake_clock(
    model: type[ChangeRecordBase], **options: float
) -> tuple[DynamoChangeFeed, list[float]]:
    """A feed whose clock is `now[0]`, moved on only by its sleeps (and by the caller)."""
    now = [0.0]
    feed = DynamoChangeFeed(
        model,
        sleep=lambda s: now.__setitem__(0, now[0] + s),
        clock=lambda: now[0],
        **options,  # type: ignore[arg-type]
    )
    return feed, now


def test_a_wait_over_many_namespaces_ends_by_its_timeout(
    model: type[ChangeRecordBase], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round looked at the clock only once it had asked every namespace: one begun near
    the end of the wait ran a whole round past it (400 shared folders at 10 ms a query:
    4 s; on Lambda, past the function's timeout). A fake clock: each query takes 1/64 s."""
    feed, now = _on_a_fake_clock(model, min_interval=0.5)
    asked: list[int] = []
    query = model.query

    def slow_query(ns_id: int, *args: Any, **kwargs: Any) -> Any:
        asked.append(ns_id)
        now[0] += 1 / 64  # a query's round trip (exact in binary: the sums are too)
        return query(ns_id, *args, **kwargs)

    monkeypatch.setattr(model, "query", slow_query)
    # the first round takes 4 s of a 4.5 s wait; the second begins at 4.5 s, at its end
    assert feed.wait({_ns(): 0 for _ in range(256)}, timeout=4.5) is False
    assert len(asked) == 256
    assert now[0] == 4.5
    # a first round longer than the wait ends with it too (it had asked them all: on AWS,
    # a first round of slow queries ran past API Gateway's 29 s)
    asked.clear()
    now[0] = 0.0
    assert feed.wait({_ns(): 0 for _ in range(256)}, timeout=2.0) is False
    assert len(asked) == 128 and now[0] == 2.0
    # and a wait with no time left still asks one: a change made before the call counts
    asked.clear()
    assert feed.wait({_ns(): 0 for _ in range(8)}, timeout=0) is False
    assert len(asked) == 1


def test_a_wait_over_many_namespaces_is_paced(
    model: type[ChangeRecordBase], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds came every 0.05-0.5 s whatever their size: a user given a thousand shared
    folders unasked made each of their devices 2,000 strongly consistent reads a second.
    Now a wait asks at most `max_queries_per_s` a second (a fake clock; queries take no
    time)."""
    feed, now = _on_a_fake_clock(model, max_queries_per_s=100)
    asked: list[int] = []

    def instant_query(ns_id: int, *args: Any, **kwargs: Any) -> Any:
        asked.append(ns_id)
        return iter(())

    monkeypatch.setattr(model, "query", instant_query)
    assert feed.wait({_ns(): 0 for _ in range(500)}, timeout=20.0) is False
    # rounds of 500 at 0, 5, 10, 15 s (and none at 20 s, the wait's end): 4
    assert len(asked) == 4 * 500
    assert now[0] == 20.0
    # a few namespaces are asked as often as before
    asked.clear()
    now[0] = 0.0
    assert feed.wait({_ns(): 0, _ns(): 0}, timeout=10.0) is False
    assert len(asked) > 2 * 19  # every 0.5 s at the slowest


def test_concurrent_publishers_write_once(feed: DynamoChangeFeed) -> None:
    ns = _ns()
    events = [ChangeEvent(f"ev-{i}", ns, i, "file") for i in range(1, 11)]

    def publish_all() -> None:
        for event in events:
            feed.publish(event)

    threads = [threading.Thread(target=publish_all) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert feed.changes_after(ns, 0) == events


def _stream_records(aws_settings: AwsSettings, ns: int) -> list[tuple[str, ChangeEvent]]:
    """(eventName, event) of every stream record of namespace `ns`, oldest first."""
    ddb = boto3.client(
        "dynamodb", region_name=aws_settings.region, endpoint_url=aws_settings.endpoint_url
    )
    streams = boto3.client(
        "dynamodbstreams", region_name=aws_settings.region, endpoint_url=aws_settings.endpoint_url
    )
    arn = ddb.describe_table(TableName=aws_settings.changes_table)["Table"]["LatestStreamArn"]
    mine = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        it = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while it:
            page = streams.get_records(ShardIterator=it, Limit=1000)
            for record in page["Records"]:
                image = record["dynamodb"].get("NewImage", {})
                if image.get("ns_id", {}).get("N") == str(ns):
                    mine.append((record["eventName"], stream_image_to_event(image)))
            it = page.get("NextShardIterator") if page["Records"] else None
    return mine


def test_stream_carries_each_event_once_as_an_insert(
    feed: DynamoChangeFeed, aws_settings: AwsSettings
) -> None:
    ns = _ns()
    event = ChangeEvent("ev-stream", ns, 7, "file", {"path": "/s.txt"})
    feed.publish(event)
    feed.publish(event)
    assert _stream_records(aws_settings, ns) == [("INSERT", event)]


def test_racing_batch_writes_insert_each_event_once(
    feed: DynamoChangeFeed, aws_settings: AwsSettings
) -> None:
    """Two relays racing may both write an event; the second write is a MODIFY, which the
    pipe drops, so the bus still gets each event once.

    moto decides INSERT vs MODIFY without a per-item lock, so now and then both racing writes
    of one new item are recorded as INSERT there (1 run in ~10 under load). DynamoDB writes
    an item atomically, so "exactly one INSERT" holds only on real AWS (README, moto gaps);
    here: every event arrives as an INSERT, with nothing else in it, and the table holds
    each event once."""
    ns = _ns()
    events = [ChangeEvent(f"streamed-{ns}-{i}", ns, i, "file") for i in range(1, 61)]
    _, errors = run_at_once(lambda: feed.publish_many(events), 2)
    assert errors == []
    records = _stream_records(aws_settings, ns)
    inserted = {e.event_id: e for kind, e in records if kind == "INSERT"}
    assert sorted(inserted.values(), key=lambda e: e.seq) == events
    assert {kind for kind, _ in records} <= {"INSERT", "MODIFY"}
    assert feed.changes_after(ns, 0, limit=1000) == events


def test_the_model_makes_its_client_on_the_session_it_is_given(
    aws_settings: AwsSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def own_session() -> None:
        raise AssertionError("PynamoDB made a botocore session of its own")

    monkeypatch.setattr(pynamodb.connection.base, "get_session", own_session)
    clients = AwsClients(aws_settings)
    made: list[str] = []

    class Recording:
        def create_client(self, service: str, region_name: str | None = None, **kw: Any) -> Any:
            made.append(service)
            return clients.create_client(service, region_name, **kw)

    model = changes_model(
        aws_settings.changes_table,
        region=aws_settings.region,
        host=aws_settings.endpoint_url,
        session=Recording(),
    )
    feed = DynamoChangeFeed(model, min_interval=0.02, max_interval=0.1)
    event = ChangeEvent("ev-shared", _ns(), 1, "file", {"path": "/s.txt"})
    # PynamoDB keeps a session per thread: the first call comes from a request's thread
    with ThreadPoolExecutor(1) as pool:
        pool.submit(feed.publish, event).result()
    assert feed.changes_after(event.ns_id, 0) == [event]
    assert made == ["dynamodb"]


def test_publish_many_sends_again_what_dynamodb_left_unprocessed(
    feed: DynamoChangeFeed, model: type[ChangeRecordBase], monkeypatch: pytest.MonkeyPatch
) -> None:
    # DynamoDB may write part of a BatchWriteItem and hand the rest back (a throttled
    # partition); moto never does. With one attempt PynamoDB gave up on them at once.
    ns = _ns()
    events = [ChangeEvent(f"ev-{i}", ns, i, "file", {"rev": i}) for i in range(1, 11)]
    connection = model._get_connection()
    real_write = connection.batch_write_item
    calls: list[int] = []

    def half_processed(*, put_items: Any, delete_items: Any = None, **kw: Any) -> Any:
        calls.append(len(put_items))
        if len(calls) > 1:
            return real_write(put_items=put_items, delete_items=delete_items, **kw)
        kept, left = put_items[:5], put_items[5:]
        real_write(put_items=kept, delete_items=delete_items, **kw)
        return {
            "UnprocessedItems": {model.Meta.table_name: [{"PutRequest": {"Item": i}} for i in left]}
        }

    monkeypatch.setattr(connection, "batch_write_item", half_processed)
    feed.publish_many(events)
    assert feed.changes_after(ns, 0, limit=1000) == events
    assert calls == [10, 5]  # only what was left went again
