"""The ChangeFeed contract: publish -> wait wakes; duplicates are harmless (Postgres, DynamoDB)."""

from __future__ import annotations

import threading
import time
import uuid

from tessera.ports import ChangeEvent

from .harnesses import ChangeFeedHarness


def _event(ns: int, seq: int, event_id: str | None = None) -> ChangeEvent:
    return ChangeEvent(event_id=event_id or uuid.uuid4().hex, ns_id=ns, seq=seq, kind="file")


def test_wait_returns_at_once_when_a_change_is_there(
    change_feed_harness: ChangeFeedHarness,
) -> None:
    feed = change_feed_harness.feed
    feed.publish(_event(101, 5))
    started = time.monotonic()
    assert feed.wait({101: 4}, timeout=10) is True
    assert time.monotonic() - started < 5


def test_wait_times_out_without_a_change(change_feed_harness: ChangeFeedHarness) -> None:
    feed = change_feed_harness.feed
    feed.publish(_event(102, 3))
    started = time.monotonic()
    assert feed.wait({102: 3, 103: 0}, timeout=0.5) is False
    assert time.monotonic() - started >= 0.45


def test_publish_wakes_a_waiter(change_feed_harness: ChangeFeedHarness) -> None:
    feed = change_feed_harness.feed
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(feed.wait({104: 0, 105: 7}, 20)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.3)
    feed.publish(_event(105, 8))
    waiter.join(20)
    assert results == [True]
    assert time.monotonic() - started < 10


def test_a_change_to_another_namespace_does_not_wake(
    change_feed_harness: ChangeFeedHarness,
) -> None:
    feed = change_feed_harness.feed
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(feed.wait({106: 0}, 1.5)))
    waiter.start()
    time.sleep(0.2)
    feed.publish(_event(107, 1))
    waiter.join(10)
    assert results == [False]


def test_publishing_twice_is_harmless(change_feed_harness: ChangeFeedHarness) -> None:
    feed = change_feed_harness.feed
    event = _event(108, 2, event_id="dup-1")
    feed.publish(event)
    feed.publish(event)
    assert feed.wait({108: 1}, timeout=5) is True
    assert feed.wait({108: 2}, timeout=0.3) is False
    # an older seq published late never moves the namespace backwards
    feed.publish(_event(108, 1))
    assert feed.wait({108: 2}, timeout=0.3) is False


def test_the_same_event_twice_in_one_batch_is_delivered_once(
    change_feed_harness: ChangeFeedHarness,
) -> None:
    feed = change_feed_harness.feed
    first, second = _event(109, 1, event_id="twice-1"), _event(109, 2, event_id="twice-2")
    feed.publish_many([first, second, second, first])
    assert feed.wait({109: 1}, timeout=5) is True
    assert feed.wait({109: 2}, timeout=0.3) is False
