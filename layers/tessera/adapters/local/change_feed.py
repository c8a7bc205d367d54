"""ChangeFeed on PostgreSQL LISTEN/NOTIFY.

One listener connection per process (a daemon thread) receives every NOTIFY on `CHANNEL`
and wakes the waiters whose cursors it moves past. Waiters are cheap: a `threading.Event`
for `wait`, an `asyncio.Event` for `wait_async` — so the gateway holds thousands of idle
long-polls on one event loop without a thread each.

A waiter registers BEFORE it reads the namespace heads, so a change committed between the
read and the wait still wakes it. When the listener loses its connection it reconnects and
asks every waiter to read the heads again, because notifications sent meanwhile are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from tessera.domain.errors import Unavailable
from tessera.metadata.db import RETRY_AFTER_S, unavailable_on_db_errors
from tessera.metadata.feed_queries import CHANNEL, latest_seqs, parse_payload, publish_heads
from tessera.ports import ChangeEvent, ChangeFeed

__all__ = ["CHANNEL", "PostgresChangeFeed"]

log = logging.getLogger(__name__)


class _Waiter(ABC):
    """One pending wait: its cursors, and how to wake it from the listener thread.

    A wake without `hit` means "notifications may have been lost: read the heads again".
    """

    def __init__(self, cursors: Mapping[int, int]) -> None:
        self.cursors = dict(cursors)
        self.hit = False  # a change past the cursors arrived

    @abstractmethod
    def wake(self) -> None:
        """Wake the waiting caller (called from the listener thread)."""


class _ThreadWaiter(_Waiter):
    def __init__(self, cursors: Mapping[int, int]) -> None:
        super().__init__(cursors)
        self.event = threading.Event()

    def wake(self) -> None:
        self.event.set()


class _AsyncWaiter(_Waiter):
    def __init__(self, cursors: Mapping[int, int]) -> None:
        super().__init__(cursors)
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            self.loop.call_soon_threadsafe(self.event.set)


class _Listener(threading.Thread):
    """The process's one LISTEN connection, dispatching notifications to waiters."""

    def __init__(self, conninfo: str) -> None:
        super().__init__(name="tessera-change-listener", daemon=True)
        self.conninfo = conninfo
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.stopping = False
        self._lock = threading.Lock()
        self._by_ns: dict[int, set[_Waiter]] = {}

    def add(self, waiter: _Waiter) -> None:
        with self._lock:
            for ns in waiter.cursors:
                self._by_ns.setdefault(ns, set()).add(waiter)

    def remove(self, waiter: _Waiter) -> None:
        with self._lock:
            for ns in waiter.cursors:
                waiters = self._by_ns.get(ns)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._by_ns[ns]

    def waiting(self) -> int:
        """How many waiters are registered (for the bench and tests)."""
        with self._lock:
            return len({w for ws in self._by_ns.values() for w in ws})

    def _dispatch(self, ns_id: int, seq: int) -> None:
        with self._lock:
            woken = [w for w in self._by_ns.get(ns_id, ()) if seq > w.cursors[ns_id]]
        for w in woken:
            w.hit = True
            w.wake()

    def _recheck_all(self) -> None:
        with self._lock:
            everyone = {w for ws in self._by_ns.values() for w in ws}
        for w in everyone:
            w.wake()

    def run(self) -> None:
        first = True
        while not self.stopping:
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if not first:
                        self._recheck_all()
                    first = False
                    self.ready.set()
                    while not self.stopping:
                        for note in conn.notifies(timeout=0.5):
                            parsed = parse_payload(note.payload)
                            if parsed is not None:
                                self._dispatch(*parsed)
            except psycopg.Error as exc:
                if first:  # never connected: report to whoever started us
                    self.error = exc
                    self.ready.set()
                    return
                log.warning("change feed listener lost its connection (%s); reconnecting", exc)
                time.sleep(0.5)


class PostgresChangeFeed(ChangeFeed):
    """Change feed over PostgreSQL: `publish` = head upsert + pg_notify; `wait` = LISTEN."""

    def __init__(self, conninfo: str, *, pool_size: int = 4) -> None:
        self.conninfo = conninfo
        self._pool = ConnectionPool(
            conninfo, min_size=1, max_size=pool_size, open=False, kwargs={"autocommit": True}
        )
        self._pool_lock = threading.Lock()
        self._pool_open = False
        self._listener: _Listener | None = None

    # -- plumbing -----------------------------------------------------------------------

    def _conn_pool(self) -> ConnectionPool[Any]:
        with self._pool_lock:
            if not self._pool_open:
                self._pool.open(wait=True, timeout=10)
                self._pool_open = True
        return self._pool

    def _ensure_listener(self) -> _Listener:
        with self._pool_lock:
            if self._listener is None or not self._listener.is_alive():
                listener = _Listener(self.conninfo)
                listener.start()
                listener.ready.wait(10)
                if listener.error is not None or not listener.ready.is_set():
                    # the driver's message names the database's host, socket or user: it
                    # goes to the log, not to the caller
                    log.warning("the change feed cannot listen: %s", listener.error)
                    raise Unavailable(
                        "the change feed cannot listen to the database; retry shortly",
                        retry_after=RETRY_AFTER_S,
                    )
                self._listener = listener
            return self._listener

    def _changed(self, cursors: Mapping[int, int]) -> bool:
        # a database outage is a 503 for the long-poll, as for any request
        with unavailable_on_db_errors(), self._conn_pool().connection() as conn:
            heads = latest_seqs(conn, cursors.keys())
        return any(heads.get(ns, 0) > seq for ns, seq in cursors.items())

    def close(self) -> None:
        """Stop the listener and close the connections."""
        with self._pool_lock:
            if self._listener is not None:
                self._listener.stopping = True
                self._listener.join(timeout=2)
                self._listener = None
            if self._pool_open:
                self._pool.close()
                self._pool_open = False

    def waiting(self) -> int:
        """How many long-polls are waiting in this process right now."""
        return 0 if self._listener is None else self._listener.waiting()

    # -- ChangeFeed ---------------------------------------------------------------------

    def publish(self, event: ChangeEvent) -> None:
        """Move the namespace head to `event.seq` and notify waiters (idempotent).

        An event its own transaction announced (a commit's) costs nothing: that transaction
        already moved the head and NOTIFYed (see `tessera.metadata.feed_queries`)."""
        self.publish_many([event])

    def publish_many(self, events: Sequence[ChangeEvent]) -> None:
        """Publish several events with one read (and at most one write transaction)."""
        heads: dict[int, int] = {}
        for e in events:
            if e.announced:
                continue
            heads[e.ns_id] = max(heads.get(e.ns_id, e.seq), e.seq)
        if heads:
            with self._conn_pool().connection() as conn:
                publish_heads(conn, heads)

    def wait(self, cursors: Mapping[int, int], timeout: float) -> bool:
        """Block until a namespace in `cursors` moves past its seq, or `timeout` seconds."""
        if not cursors:
            time.sleep(max(timeout, 0.0))
            return False
        deadline = time.monotonic() + timeout
        listener = self._ensure_listener()
        waiter = _ThreadWaiter(cursors)
        listener.add(waiter)
        try:
            while True:
                if self._changed(cursors):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not waiter.event.wait(remaining):
                    return False
                if waiter.hit:
                    return True
                waiter.event.clear()
        finally:
            listener.remove(waiter)

    async def wait_async(self, cursors: Mapping[int, int], timeout: float) -> bool:
        """`wait` for an event loop: costs an Event, not a thread, while idle."""
        if not cursors:
            await asyncio.sleep(max(timeout, 0.0))
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        listener = self._listener
        if listener is None or not listener.is_alive():
            listener = await asyncio.to_thread(self._ensure_listener)
        waiter = _AsyncWaiter(cursors)
        listener.add(waiter)
        try:
            while True:
                if await asyncio.to_thread(self._changed, cursors):
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(waiter.event.wait(), remaining)
                except TimeoutError:
                    return False
                if waiter.hit:
                    return True
                waiter.event.clear()
        finally:
            listener.remove(waiter)
