"""`Database.transaction` turns transient database failures into `Unavailable` (503 +
Retry-After) and lets every other error through unchanged."""

from __future__ import annotations

import psycopg
import pytest

from tessera.domain.errors import Unavailable
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
