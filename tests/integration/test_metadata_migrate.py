"""Migrations: applied in order, once, concurrently safe; the schema of DESIGN §4."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tessera.metadata import migrate
from tessera.metadata.migrate import (
    NO_TRANSACTION,
    Migration,
    MigrationBlocked,
    available_migrations,
)
from tessera.metadata.store import Store


def test_migrate_is_idempotent_and_ordered(empty_database_url: str) -> None:
    numbers = [m.number for m in available_migrations()]
    assert numbers == sorted(numbers) and numbers[0] == 1
    assert migrate(empty_database_url) == numbers
    assert migrate(empty_database_url) == []
    with psycopg.connect(empty_database_url) as conn:
        done = [r[0] for r in conn.execute("SELECT number FROM schema_migrations ORDER BY 1")]
    assert done == numbers


def test_concurrent_migrations_apply_each_file_once(empty_database_url: str) -> None:
    results: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda: results.append(migrate(empty_database_url)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    applied = sorted(n for r in results for n in r)
    assert applied == [m.number for m in available_migrations()]


def _index_valid(url: str, name: str) -> bool | None:
    """Whether index `name` is valid; None when there is none."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname = %s",
            (name,),
        ).fetchone()
    return None if row is None else bool(row[0])


def _build_unique_index(number: int) -> Migration:
    return Migration(
        number,
        "unique_v",
        f"{NO_TRANSACTION}\n-- a build that fails leaves an invalid index: drop it first\n"
        "DROP INDEX CONCURRENTLY IF EXISTS t_v;\n"
        "CREATE UNIQUE INDEX CONCURRENTLY t_v ON t (v);\n-- trailing comment\n",
    )


def test_a_no_transaction_migration_builds_concurrently_and_repairs_a_failed_build(
    empty_database_url: str,
) -> None:
    shipped = migrate(empty_database_url)
    assert 113 in shipped and _index_valid(empty_database_url, "idempotency_keys_created")
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t VALUES (1), (1)")

    build = _build_unique_index(900)
    assert len(build.statements()) == 2 and not build.transactional
    with pytest.raises(psycopg.errors.UniqueViolation):
        migrate(empty_database_url, [build])
    assert _index_valid(empty_database_url, "t_v") is False  # what the failed build left

    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM t WHERE ctid = (SELECT max(ctid) FROM t)")
    assert migrate(empty_database_url, [build]) == [900]
    assert _index_valid(empty_database_url, "t_v") is True
    assert migrate(empty_database_url, [build]) == []


def test_a_migrator_waiting_for_the_lock_lets_a_concurrent_build_finish(
    empty_database_url: str,
) -> None:
    """The second start waits for the lock while the first builds an index CONCURRENTLY,
    which waits for every session holding a snapshot: waiting inside PostgreSQL for the lock
    made the two a deadlock, and one of them failed."""
    migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int)")
    plan = [Migration(900, "slow", "SELECT pg_sleep(1.5)"), _build_unique_index(901)]
    outcomes: list[object] = []

    def start() -> None:
        try:
            outcomes.append(migrate(empty_database_url, plan))
        except psycopg.Error as exc:
            outcomes.append(exc)

    first, second = threading.Thread(target=start), threading.Thread(target=start)
    first.start()
    time.sleep(0.5)  # the first holds the lock, sleeping in 900
    second.start()
    first.join(30)
    second.join(30)
    assert len(outcomes) == 2 and [900, 901] in outcomes and [] in outcomes, outcomes
    assert _index_valid(empty_database_url, "t_v") is True


_ADD_COLUMN = Migration(900, "add_w", "ALTER TABLE t ADD COLUMN w int")


def _table_t(url: str) -> None:
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int)")


def _columns_of_t(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 't'"
            " ORDER BY ordinal_position"
        ).fetchall()
    return [r[0] for r in rows]


def test_a_migration_behind_a_long_transaction_gives_way_and_says_why(
    empty_database_url: str,
) -> None:
    """An ALTER TABLE waiting for a transaction that holds the table queues every later
    query of the table behind it: unbounded, a migration stopped the service for as long
    as that transaction lasted. It now waits `lock_timeout_s` a try, then fails naming
    the cause. (Without the bound, it waits here until the holder gives up after 15 s, and
    then succeeds.)"""
    _table_t(empty_database_url)
    with psycopg.connect(empty_database_url) as holder:
        holder.execute("SELECT * FROM t")  # an open transaction: ACCESS SHARE on t
        give_up = threading.Timer(15, holder.rollback)
        give_up.start()
        try:
            with pytest.raises(MigrationBlocked, match=r"900_add_w waited 0.2 s .* 2 times"):
                migrate(empty_database_url, [_ADD_COLUMN], lock_timeout_s=0.2, lock_attempts=2)
        finally:
            give_up.cancel()
    assert _columns_of_t(empty_database_url) == ["v"]
    assert migrate(empty_database_url, [_ADD_COLUMN]) == [900]  # not recorded: runs now
    assert _columns_of_t(empty_database_url) == ["v", "w"]


def test_a_migration_goes_through_once_the_long_transaction_ends(empty_database_url: str) -> None:
    _table_t(empty_database_url)
    with psycopg.connect(empty_database_url) as holder:
        holder.execute("SELECT * FROM t")
        threading.Timer(0.5, holder.rollback).start()
        applied = migrate(empty_database_url, [_ADD_COLUMN], lock_timeout_s=0.2, lock_attempts=30)
    assert applied == [900]
    assert _columns_of_t(empty_database_url) == ["v", "w"]


def test_namespace_tables_lead_with_ns_id(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for table in [
            "ns_members",
            "files",
            "file_versions",
            "version_blocks",
            "journal",
            "outbox",
        ]:
            first = conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
                " WHERE i.indrelid = %s::regclass AND i.indisprimary",
                (table,),
            ).fetchone()
            assert first is not None and first[0] == "ns_id", table


def indexes(database_url: str, table: str, containing: str) -> dict[str, str]:
    """name → definition of the indexes of `table` whose definition contains `containing`."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s"
            " AND strpos(indexdef, %s) > 0",
            (table, containing),
        ).fetchall()
    return dict(rows)


def test_a_version_block_is_indexed_once_by_its_block_id(database_url: str) -> None:
    """One index serves the readable probe (ns_id and block_id given) and the lookups of a
    block in every namespace (gc, scrub): each block of a commit pays for one entry."""
    by_block = indexes(database_url, "version_blocks", "block_id")
    assert list(by_block) == ["version_blocks_by_block"]
    assert "(block_id, ns_id, staged_key)" in by_block["version_blocks_by_block"]


def test_a_path_is_indexed_once_per_deletion_state(database_url: str) -> None:
    """Live entries by the unique live-path index, deleted ones by a partial index of their
    own: no index holds every row by path (each new file would pay for two)."""
    by_path = indexes(database_url, "files", "(ns_id, path_key)")
    assert set(by_path) == {"files_live_path", "files_deleted_path"}
    assert "WHERE (NOT is_deleted)" in by_path["files_live_path"]
    assert "WHERE is_deleted" in by_path["files_deleted_path"]


def test_part_uploaded_lists_in_flight_keep_their_blocks_when_keyed_by_path_hash(
    empty_database_url: str,
) -> None:
    """Migration 118 keys a session's part-uploaded files by their path key's hash: a list
    appended before it is found by the store after it, whole."""
    before = [m for m in available_migrations() if m.number < 118]
    migrate(empty_database_url, before)
    key = "/team/" + "é" * 10
    with psycopg.connect(empty_database_url) as conn:
        conn.execute(
            "INSERT INTO users (user_id, email, email_key, quota_bytes)"
            " VALUES ('u1', 'u1@x', 'u1@x', 1)"
        )
        conn.execute(
            "INSERT INTO upload_sessions (upload_id, user_id, expires_at)"
            " VALUES ('up1', 'u1', now() + interval '1 hour')"
        )
        conn.execute(
            "INSERT INTO upload_files (upload_id, path_key, size, content_hash, block_count)"
            " VALUES ('up1', %s, 10, 'c', 2)",
            (key,),
        )
        conn.execute(
            "INSERT INTO upload_file_blocks (upload_id, path_key, ordinal, block_id, size)"
            " VALUES ('up1', %s, 0, 'b3:aa', 4), ('up1', %s, 1, 'b3:bb', 6)",
            (key, key),
        )
    assert migrate(empty_database_url) == [
        m.number for m in available_migrations() if m.number >= 118
    ]
    with psycopg.connect(empty_database_url) as conn:
        store = Store(conn)
        assert store.session_file_blocks("up1", "u1", key) == [("b3:aa", 4), ("b3:bb", 6)]
        locked = store.lock_upload_file("up1", "u1", key)
        assert locked is not None and locked.block_count == 2
