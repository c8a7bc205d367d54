"""Running one callable on several threads at once, for race tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_at_once(
    fn: Callable[[], T], threads: int, timeout: float = 60
) -> tuple[list[T], list[BaseException]]:
    """Start `threads` threads that call `fn` together (behind a barrier, so they really
    race); return what the calls returned and what they raised."""
    barrier = threading.Barrier(threads)
    results: list[T] = []
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            results.append(fn())
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout)
    return results, errors


def wait_for_a_lock_waiter(conninfo: str, timeout: float = 10) -> None:
    """Return once some session of this database waits for a lock (a race test's other
    side is blocked where the test means it to be), or fail after `timeout` seconds: a
    sleep in its place let a slow machine run the race in another order, and pass."""
    import time

    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while time.monotonic() < deadline:
            # by session, not `pg_locks`: a wait for a row's lock is on its transaction id,
            # a lock that names no database
            waiting = conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database() LIMIT 1"
            ).fetchone()
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError(f"no session waited for a lock within {timeout} s")
