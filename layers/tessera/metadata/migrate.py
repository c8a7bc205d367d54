"""Versioned SQL migrations: `migrations/NNN_name.sql`, applied in numeric order, once each.

Ranges: server core 001-049, local cloud 050-059, maintenance 100-149. Each file runs in its
own transaction together with its row in `schema_migrations`; a session-level advisory lock
makes concurrent starts (several Lambdas, a gateway and a test) apply each file exactly once.

A file whose first line is `-- tessera: no-transaction` runs statement by statement outside
a transaction, for `CREATE INDEX CONCURRENTLY`, which builds an index on a table in use
without blocking its writers. Its row is written after its last statement, so a run that
fails or is killed midway runs the whole file again: each of its statements must be safe to
repeat (`DROP INDEX CONCURRENTLY IF EXISTS` before the build, since a failed build leaves an
invalid index behind under the same name).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import psycopg

_LOCK_ID = 7_305_112_001  # arbitrary, stable: "tessera migrations"
_LOCK_POLL_S = 0.2
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
NO_TRANSACTION = "-- tessera: no-transaction"
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|$)")


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    number: int
    name: str
    sql: str

    @property
    def transactional(self) -> bool:
        """Whether the file runs in one transaction (all but `-- tessera: no-transaction`)."""
        return not self.sql.startswith(NO_TRANSACTION)

    def statements(self) -> list[str]:
        """The statements of a no-transaction file, each ending its line with `;`."""
        parts = (part.strip() for part in _STATEMENT_END.split(self.sql))
        return [p for p in parts if not all(_is_comment(line) for line in p.splitlines())]


def _is_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("--")


def available_migrations() -> list[Migration]:
    """Every migration shipped in `tessera/metadata/migrations`, in numeric order."""
    found: list[Migration] = []
    for entry in resources.files("tessera.metadata").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.number)
    numbers = [mig.number for mig in found]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"duplicate migration numbers: {numbers}")
    return found


def migrate(conninfo: str, migrations: Sequence[Migration] | None = None) -> list[int]:
    """Apply every pending migration (by default, those shipped: `available_migrations`) to
    the database at `conninfo`; returns the numbers applied."""
    applied_now: list[int] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _lock(conn)
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " number integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT number FROM schema_migrations")}
            for mig in available_migrations() if migrations is None else migrations:
                if mig.number not in done:
                    _apply(conn, mig)
                    applied_now.append(mig.number)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now


def _lock(conn: psycopg.Connection) -> None:
    """Take the migrations' advisory lock, polling rather than waiting in the server: a
    session waiting in `pg_advisory_lock` holds a snapshot, `CREATE INDEX CONCURRENTLY` in
    the holder's migration waits for every such snapshot to go, and PostgreSQL breaks that
    cycle by failing one of the two with "deadlock detected"."""
    while conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_ID,)).fetchone() != (True,):
        time.sleep(_LOCK_POLL_S)


def _apply(conn: psycopg.Connection, mig: Migration) -> None:
    record = "INSERT INTO schema_migrations (number, name) VALUES (%s, %s)"
    if mig.transactional:
        with conn.transaction():
            conn.execute(mig.sql.encode("utf-8"))
            conn.execute(record, (mig.number, mig.name))
        return
    for statement in mig.statements():
        conn.execute(statement.encode("utf-8"))
    conn.execute(record, (mig.number, mig.name))


def main() -> None:
    """`python -m tessera.metadata.migrate [CONNINFO]` (default: $DATABASE_URL)."""
    import sys

    from tessera.settings import Settings

    url = sys.argv[1] if len(sys.argv) > 1 else Settings.from_env().database_url
    if not url:
        raise SystemExit("usage: python -m tessera.metadata.migrate CONNINFO (or set DATABASE_URL)")
    print("applied:", migrate(url) or "nothing (up to date)")


if __name__ == "__main__":
    main()
