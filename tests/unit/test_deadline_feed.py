"""`DeadlineFeed`: a long-poll's wait ends by its own request's deadline."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from tessera.adapters.aws.changes import DeadlineFeed
from tessera.ports import ChangeEvent, ChangeFeed


class RecordingFeed(ChangeFeed):
    """Answers at once, remembering the timeout each thread's wait was given."""

    def __init__(self) -> None:
        self.timeouts: dict[str, float] = {}

    def publish(self, event: ChangeEvent) -> None:
        raise AssertionError("not published to")

    def wait(self, cursors: Mapping[int, int], timeout: float) -> bool:
        self.timeouts[threading.current_thread().name] = timeout
        return False


def test_a_wait_ends_by_its_requests_deadline() -> None:
    inner = RecordingFeed()
    feed = DeadlineFeed(inner, clock=lambda: 1000.0)
    assert feed.wait({1: 1}, 30) is False and inner.timeouts["MainThread"] == 30  # none set
    feed.deadline = 1010.0
    feed.wait({1: 1}, 30)
    assert inner.timeouts["MainThread"] == 10


def test_requests_on_threads_at_once_keep_their_own_deadlines() -> None:
    """The local gateway's AWS mode serves long-polls on many threads through one
    function: the deadline one request set was the one every other wait then ended by."""
    inner = RecordingFeed()
    feed = DeadlineFeed(inner, clock=lambda: 1000.0)
    both_set = threading.Barrier(2)

    def request(deadline: float) -> None:
        feed.deadline = deadline
        both_set.wait()  # the other request has set its own by now
        feed.wait({1: 1}, 30)

    threads = [
        threading.Thread(target=request, args=(1000.0 + s,), name=f"ends in {s}") for s in (5, 20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert inner.timeouts == {"ends in 5": 5, "ends in 20": 20}
