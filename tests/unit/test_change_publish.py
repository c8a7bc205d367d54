"""The fast path of change publication (tessera.domain.changes.publish), without I/O."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pytest

from tessera.domain.changes import publish
from tessera.ports import ChangeEvent, ChangeFeed


class ListFeed(ChangeFeed):
    """A feed that keeps what it is given, or fails when told to."""

    def __init__(self, fail: bool = False) -> None:
        self.published: list[ChangeEvent] = []
        self.fail = fail

    def publish(self, event: ChangeEvent) -> None:
        if self.fail:
            raise ConnectionError("the changes table is unreachable")
        self.published.append(event)

    def wait(self, cursors: Mapping[int, int], timeout: float) -> bool:
        return any(e.seq > cursors.get(e.ns_id, e.seq) for e in self.published)


def _event(ns: int, seq: int) -> ChangeEvent:
    return ChangeEvent(f"ev-{ns}-{seq}", ns, seq, "file")


def test_only_the_newest_event_of_each_namespace_is_published() -> None:
    feed = ListFeed()
    batch = [_event(1, 5), _event(2, 9), None, _event(1, 7), _event(1, 6), _event(2, 8)]
    publish(feed, batch)
    assert sorted(feed.published, key=lambda e: e.ns_id) == [_event(1, 7), _event(2, 9)]
    assert feed.wait({1: 6}, timeout=0) and not feed.wait({1: 7, 2: 9}, timeout=0)


def test_nothing_to_publish_calls_nothing() -> None:
    feed = ListFeed(fail=True)  # would raise (and log) if called
    publish(feed, [None, None])
    assert feed.published == []


def test_a_failing_feed_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tessera.domain.changes"):
        publish(ListFeed(fail=True), [_event(3, 1), _event(3, 2)])
    assert "ev-3-2" in caplog.text and "outbox relay will retry" in caplog.text
    assert "ev-3-1" not in caplog.text  # only the newest was attempted
