"""Migrations: applied in order, once, concurrently safe; the schema of DESIGN §4."""

from __future__ import annotations

import threading

import psycopg

from tessera.metadata import migrate
from tessera.metadata.migrate import available_migrations


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
