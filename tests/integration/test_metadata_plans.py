"""The statements of the commit path keep index plans on a young database.

psycopg prepares a statement after its fifth run, and the pool forces generic plans
(`tessera.metadata.db`): a plan made while the tables are small is kept as they grow, until
an ANALYZE. A join the planner would rather hash than probe, or a lookup it would rather
scan, then reads a whole table per commit. These tests ask PostgreSQL, in a session set up
as the pool's, for the generic plan of every shared statement of `tessera.metadata.store`
on a freshly migrated database, never analyzed and analyzed while empty: the worst cases.
"""

from __future__ import annotations

import re

import psycopg
import pytest

from tessera.metadata import migrate, outbox
from tessera.metadata import store as store_module
from tessera.metadata.db import Database

# The tables that grow with use: a sequential scan of any of them per request is a bug.
GROWING = (
    "users",
    "namespaces",
    "ns_members",
    "blocks",
    "files",
    "file_versions",
    "version_blocks",
    "journal",
    "outbox",
    "upload_blocks",
    "upload_sessions",
    "idempotency_keys",
)
# the request path's (the store) and the outbox relay's, which runs every minute
SQL_MODULES = {"store": store_module, "outbox": outbox}
STATEMENTS = sorted(
    f"{module}.{name}"
    for module, namespace in SQL_MODULES.items()
    for name, value in vars(namespace).items()
    if name.isupper() and name.endswith("_SQL") and isinstance(value, str)
)


def _numbered(sql: str) -> str:
    """psycopg's placeholders as PostgreSQL's: one $n per distinct name, then per %s."""
    names: dict[str, int] = {}
    sql = re.sub(r"%\((\w+)\)s", lambda m: f"${names.setdefault(m[1], len(names) + 1)}", sql)
    count = iter(range(len(names) + 1, 1000))
    return re.sub(r"%s", lambda _: f"${next(count)}", sql)


def test_the_shared_statements_are_found() -> None:
    assert {
        "store._LOCK_AND_READ_SQL",
        "store._VIEW_LOCKING_ROOT_SQL",
        "store._WRITE_NEW_FILE_SQL",
        "outbox._CLAIM_SQL",
    } <= set(STATEMENTS)


@pytest.mark.parametrize("analyzed", [False, True], ids=["never-analyzed", "analyzed-empty"])
@pytest.mark.parametrize("name", STATEMENTS)
def test_no_statement_scans_a_growing_table(
    empty_database_url: str, name: str, analyzed: bool
) -> None:
    migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        if conn.info.server_version < 160000:
            pytest.skip("EXPLAIN (GENERIC_PLAN) needs PostgreSQL 16")
        if analyzed:
            conn.execute("ANALYZE")
        module, _, attribute = name.partition(".")
        sql = _numbered(getattr(SQL_MODULES[module], attribute))
        plan = [line for (line,) in conn.execute(f"EXPLAIN (GENERIC_PLAN) {sql}")]
    scans = [
        line.strip() for line in plan if re.search(rf"Seq Scan on ({'|'.join(GROWING)})\b", line)
    ]
    assert scans == [], "\n".join(plan)


def test_sessions_get_their_settings_from_the_database_not_startup_options(
    empty_database_url: str,
) -> None:
    """RDS Proxy refuses a connection that sends startup options (`options=-c ...`)."""
    migrate(empty_database_url)
    db = Database(empty_database_url, min_size=1, max_size=1)
    try:
        assert isinstance(db.pool.kwargs, dict) and "options" not in db.pool.kwargs
        with db.pool.connection() as conn:
            settings = [
                conn.execute(f"SHOW {name}").fetchone()
                for name in ("plan_cache_mode", "enable_seqscan")
            ]
        assert settings == [("force_generic_plan",), ("off",)]
    finally:
        db.close()
