"""The connection pool and transactions of the metadata database."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress

import psycopg
from psycopg.pq import PipelineStatus, TransactionStatus
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from tessera.domain.errors import PayloadTooLarge, Unavailable
from tessera.metadata.store import Store

#: Seconds a client is told to wait before retrying when the database is unreachable, busy
#: or aborted the transaction for a transient reason.
RETRY_AFTER_S = 2


@contextmanager
def unavailable_on_db_errors() -> Iterator[None]:
    """Raise a transient database failure (`psycopg.OperationalError`, which a pool timeout
    is too) as `Unavailable`: 503 + Retry-After, not 500.

    No free connection in time, the server gone or restarting, a lost connection, a
    serialization failure, deadlock, lock or statement timeout, a full disk: a transaction
    did not commit (or, lost during COMMIT itself, may have: commits carry idempotency keys
    for that retry), and the same request may well succeed in a moment.

    A program limit (SQLSTATE class 54: an index row, an array or a statement too large)
    is an `OperationalError` too, but the same request fails the same way every time: it
    is 413, so a client gives that request up instead of retrying it for ever (a 500 is
    retried as well, and a sync client recommitted it every round).
    """
    try:
        yield
    except psycopg.OperationalError as exc:
        if (exc.sqlstate or "").startswith("54"):
            raise PayloadTooLarge(
                f"the request exceeds a limit of the metadata database ({type(exc).__name__})"
            ) from exc
        raise Unavailable(
            f"the metadata database is unavailable ({type(exc).__name__}); retry shortly",
            retry_after=RETRY_AFTER_S,
        ) from exc


_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"


# Sessions get `plan_cache_mode = force_generic_plan` and `enable_seqscan = off` from the
# database itself (migration 111: RDS Proxy refuses startup options). Why each:
# Generic plans: psycopg prepares a statement after its fifth run, but PostgreSQL still plans
# it anew per run while it guesses a custom plan may beat the generic one. Every statement
# here is a keyed lookup whose plan does not depend on its parameter values, and re-planning
# cost more than running (0.37 ms of 0.41 for the readable-blocks query, measured in
# bench/bench_commits.py's commit).
# No sequential scans: a plan is kept for the connection's life, and one made while a table
# was small (a young deployment, or the stretch between two autoanalyzes) scanned it whole
# for ever after. The commit's parent-folder lookup did so on `files`: one writer's commit
# went from 1.7 to 2.9 ms of PostgreSQL CPU over 5,000 commits, where it stays near 0.8 ms
# with this (docs/metadata.md, "Plans: no sequential scans"). Where no index serves, a
# query still scans.


#: A pooled connection unused for this long is checked (one round trip) before it is handed
#: out: RDS Proxy, a firewall or `idle_session_timeout` may have closed it meanwhile, and a
#: Lambda frozen between invocations notices nothing until its next request fails (503).
IDLE_CHECK_S = 60.0

_Conn = psycopg.Connection[tuple[object, ...]]


class Database:
    """A psycopg 3 pool over the metadata database; `transaction()` yields a `Store`."""

    def __init__(
        self,
        conninfo: str | Callable[[], str],
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
        idle_check_s: float = IDLE_CHECK_S,
        notify: bool = True,
    ) -> None:
        # A callable makes a fresh conninfo per new connection (RDS IAM auth tokens expire).
        self.conninfo = conninfo
        self.notify = notify  # journal writes NOTIFY the local change feed (`Store`)
        self.idle_check_s = idle_check_s
        self._returned_at: weakref.WeakKeyDictionary[_Conn, float] = weakref.WeakKeyDictionary()
        self.pool: ConnectionPool[_Conn] = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={
                "autocommit": False,
                "row_factory": tuple_row,
            },
            open=True,
            name="tessera-metadata",
            timeout=timeout,  # for a free connection: well inside API Gateway's 29 s
            check=self._check_if_idle,
            reset=self._note_returned,
        )

    def _note_returned(self, conn: _Conn) -> None:
        self._returned_at[conn] = time.time()

    def _check_if_idle(self, conn: _Conn) -> None:
        """The pool's check before handing `conn` out: a round trip only for a connection
        idle for `idle_check_s` (a busy one costs nothing); a dead one is replaced.

        Idleness is wall time: a Lambda's monotonic clock stands still while its
        environment is frozen between invocations, so a connection idle through a long
        freeze looked fresh (SnapStart and Lambda extensions report it too)."""
        if time.time() - self._returned_at.get(conn, 0.0) >= self.idle_check_s:
            ConnectionPool.check_connection(conn)

    @contextmanager
    def transaction(
        self, *, repeatable_read: bool = False, pipeline: bool = False
    ) -> Iterator[Store]:
        """One transaction: committed when the block exits, rolled back on an exception.

        `repeatable_read` gives a snapshot (listings read cursors and entries consistently).
        `pipeline` runs the connection in pipeline mode: statements whose results nobody
        reads yet travel with the next query instead of costing a round trip each. That
        pays for a transaction of many statements (a batch commit: 15-20 % less wall time),
        not for a request of a few: psycopg's pipeline bookkeeping cost a single commit more
        CPU than the round trips it saved on a local socket (bench/bench_commits.py).

        A transient database failure (`psycopg.OperationalError`: no free connection within
        `timeout`, connection lost, serialization failure, deadlock, timeouts) is raised as
        `Unavailable` (503 + Retry-After); other errors pass through.
        """
        with unavailable_on_db_errors(), self.pool.connection() as conn:
            try:
                with conn.pipeline() if pipeline else nullcontext():
                    if repeatable_read:
                        conn.execute(_SNAPSHOT)
                    yield Store(conn, notify=self.notify)
            except BaseException:
                _roll_back_keeping_statements(conn)
                raise

    def close(self) -> None:
        """Close every pooled connection."""
        self.pool.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _roll_back_keeping_statements(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Roll back a transaction that raised while none of its statements had failed.

    psycopg forgets every prepared statement (DEALLOCATE ALL) on any ROLLBACK that passes
    through it, in case the transaction created an object a statement names. Requests run
    no DDL, and a request that ends in a domain error (404, 403, 409) failed no statement,
    yet its connection would plan each statement anew for its next five runs: about 1 ms of
    server CPU per run of a commit's reads. So that ROLLBACK goes straight to libpq, and
    psycopg, finding the transaction closed, keeps its cache. A failed statement (INERROR),
    a connection still in pipeline mode or a lost one is left to psycopg's own rollback, and
    so is a ROLLBACK that fails here: the caller's exception is the one that propagates."""
    pgconn = conn.pgconn
    if (
        conn.info.transaction_status != TransactionStatus.INTRANS
        or pgconn.pipeline_status != PipelineStatus.OFF
    ):
        return
    with suppress(psycopg.Error):
        pgconn.exec_(b"ROLLBACK")
