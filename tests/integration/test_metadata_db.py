"""`Database.transaction` turns transient database failures into `Unavailable` (503 +
Retry-After) and lets every other error through unchanged; a transaction that raised rolls
back whole, and only a failed statement costs the connection its prepared statements."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tessera.domain.errors import NotFound, PayloadTooLarge, Unavailable
from tessera.metadata import Database
from tessera.metadata.db import RETRY_AFTER_S


def test_a_connection_lost_mid_transaction_is_unavailable(db: Database, database_url: str) -> None:
    with pytest.raises(Unavailable) as caught, db.transaction() as store:
        pid = store.conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        store.conn.execute("SELECT 1").fetchone()
    assert caught.value.status == 503 and caught.value.retry_after == RETRY_AFTER_S
    with db.transaction() as store:  # the pool replaced the dead connection
        assert store.conn.execute("SELECT 1").fetchone() == (1,)


def test_a_lock_timeout_is_unavailable(db: Database, database_url: str) -> None:
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE namespaces IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(Unavailable), db.transaction() as store:
            store.conn.execute("SET LOCAL lock_timeout = '100ms'")
            store.conn.execute("SELECT count(*) FROM namespaces").fetchone()


def test_other_database_errors_pass_through(db: Database) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable), db.transaction() as store:
        store.conn.execute("SELECT * FROM no_such_table")


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT repeat('x', 3000)::tsvector",  # 54000 program_limit_exceeded
        "SELECT jsonb_build_object(" + ", ".join(["'k', 1"] * 60) + ")",  # 54023: 120 args
    ],
)
def test_a_program_limit_is_not_transient(db: Database, statement: str) -> None:
    # An OperationalError, but one no retry cures: as a 503 (or a 500) a client retried it
    # for ever.
    with pytest.raises(PayloadTooLarge) as caught, db.transaction() as store:
        store.conn.execute(statement).fetchone()
    assert caught.value.status == 413
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


def _prepared_on(db: Database) -> set[str]:
    """The statements prepared on the pool's one connection."""
    with db.transaction() as store:
        rows = store.conn.execute(
            "SELECT statement FROM pg_prepared_statements", prepare=False
        ).fetchall()
    return {row[0] for row in rows}


def _prepare_a_statement(db: Database) -> str:
    query = "SELECT count(*) FROM namespaces WHERE ns_id = %s"
    with db.transaction() as store:
        store.conn.execute(query, (1,), prepare=True).fetchone()
    (prepared,) = _prepared_on(db)
    return prepared


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_domain_error_keeps_the_prepared_statements(database_url: str, pipeline: bool) -> None:
    # psycopg's own rollback forgets every prepared statement (DEALLOCATE ALL); after a
    # request that only raised a 404 or 409 the connection would plan its statements anew.
    with Database(database_url, max_size=1) as db:
        prepared = _prepare_a_statement(db)
        with pytest.raises(NotFound), db.transaction(pipeline=pipeline) as store:
            store.create_user("u-rolled-back", "rb@example.com", 1)
            raise NotFound("no such file")
        assert _prepared_on(db) == {prepared}
        with db.transaction() as store:  # and the raising transaction's write was undone
            assert store.get_user("u-rolled-back") is None


def test_a_failed_statement_still_rolls_back_the_whole_transaction(database_url: str) -> None:
    with Database(database_url, max_size=1) as db:
        _prepare_a_statement(db)
        with pytest.raises(psycopg.errors.UndefinedTable), db.transaction() as store:
            store.create_user("u-rolled-back", "rb@example.com", 1)
            store.conn.execute("SELECT * FROM no_such_table")
        with db.transaction() as store:  # the connection is usable, the write undone
            assert store.get_user("u-rolled-back") is None
            assert store.conn.execute("SELECT 1").fetchone() == (1,)


def _pid(db: Database) -> int:
    with db.transaction() as store:
        return int(store.conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]


def test_a_connection_closed_while_idle_is_replaced_before_use(database_url: str) -> None:
    # RDS Proxy closes idle connections; a Lambda frozen meanwhile noticed nothing, and its
    # next request failed (503) on the dead connection instead of getting a new one.
    with Database(database_url, min_size=1, max_size=1, idle_check_s=0.2) as db:
        pid = _pid(db)
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.3)
        assert _pid(db) != pid


def test_only_a_connection_idle_for_a_while_is_checked_and_idleness_is_wall_time(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[object] = []
    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(checked.append))
    with Database(database_url, min_size=1, max_size=1, idle_check_s=60) as db:
        for _ in range(4):
            _pid(db)
        assert len(checked) == 1  # the new connection, once: a busy one costs nothing
        deadline = time.monotonic() + 5  # a pool worker takes it back (and notes when)
        while db.pool.get_stats().get("pool_available") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        # Lambda's monotonic clock stands still while its environment is frozen between
        # invocations: counted on it, a connection idle through a long freeze looked fresh.
        thawed = time.time() + 600  # ten minutes frozen; the monotonic clock saw none of it
        monkeypatch.setattr(time, "time", lambda: thawed)
        _pid(db)
        monkeypatch.undo()
        assert len(checked) == 2


def test_a_maintenance_step_that_lost_the_database_is_retried_by_its_state_machine(
    database_url: str,
) -> None:
    """Lambda reports an exception's class name as its error, and a state machine retries
    the names it lists: a database out of reach for a moment (a failover, a proxy that
    could not lend a connection) or a connection it cut failed the whole daily run and
    paged, where a retry a few seconds on would have gone through."""
    from tessera.maintenance.workflows import state_machine_definition
    from tessera.metadata.maintenance import MaintenanceRepository

    definition = state_machine_definition("gc", "arn:aws:lambda:eu-west-1:1:function:gc")
    retried = definition["States"]["purge_trash"]["Retry"][0]["ErrorEquals"]
    raised: list[str] = []
    with (
        Database("host=127.0.0.1 port=1 dbname=none connect_timeout=1", timeout=1) as gone,
        pytest.raises(Exception) as unreachable,
        MaintenanceRepository(gone).transaction(),
    ):
        pass
    raised.append(type(unreachable.value).__name__)
    with (
        Database(database_url, min_size=1, max_size=1) as db,
        pytest.raises(psycopg.OperationalError) as cut,
        MaintenanceRepository(db).transaction() as tx,
    ):
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (tx.conn.info.backend_pid,))
        tx.conn.execute(b"SELECT 1")
    raised.append(type(cut.value).__name__)
    with (  # through `Database.transaction`, as the key check at a function's start
        Database("host=127.0.0.1 port=1 dbname=none connect_timeout=1", timeout=1) as gone,
        pytest.raises(Unavailable) as wrapped,
        gone.transaction(),
    ):
        pass
    raised.append(type(wrapped.value).__name__)
    assert raised and set(raised) <= set(retried), (raised, retried)


@pytest.mark.parametrize("notify", [True, False], ids=["local", "aws"])
def test_journal_writes_notify_only_where_a_change_feed_listens(
    database_url: str, notify: bool
) -> None:
    """On AWS the change feed is DynamoDB, and nothing LISTENs: each commit NOTIFYed all
    the same, and PostgreSQL serialises the commits of transactions that sent a NOTIFY on
    one database-wide lock."""
    from tessera.metadata import NOTIFY_CHANNEL
    from tessera.metadata.store import NewJournal

    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        with (
            Database(database_url, min_size=1, max_size=1, notify=notify) as db,
            db.transaction() as store,
        ):
            store.create_user(f"u-{notify}", f"{notify}@example.com", 10**9)
            user = store.get_user(f"u-{notify}")
            assert user is not None
            row = NewJournal("f1", 1, "upsert", "file", "/a", "/", "/a", 1)
            store.append_journal(user.root_ns_id, [row], kind="file", payload={})
        heard = list(listener.notifies(timeout=1, stop_after=1))
    assert len(heard) == (1 if notify else 0)
