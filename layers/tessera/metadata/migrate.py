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

A transactional file waits at most `lock_timeout_s` for each table lock it takes, and is
tried again after a pause, up to `lock_attempts` times: an `ALTER TABLE` waiting behind a
long transaction queues every later query of that table behind itself, so a migration that
waited without a bound stopped the service for as long as that transaction lasted.
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
LOCK_TIMEOUT_S = 5.0
LOCK_ATTEMPTS = 20  # with the pauses, about two minutes: the deploy function has five


class MigrationBlocked(RuntimeError):
    """A migration did not get its table locks within its attempts: a long transaction
    holds them."""


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


def migrate(
    conninfo: str,
    migrations: Sequence[Migration] | None = None,
    *,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    lock_attempts: int = LOCK_ATTEMPTS,
) -> list[int]:
    """Apply every pending migration (by default, those shipped: `available_migrations`) to
    the database at `conninfo`; returns the numbers applied. `MigrationBlocked` when a
    transactional file waited `lock_timeout_s` for a table lock `lock_attempts` times."""
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
                    _apply(conn, mig, lock_timeout_s, lock_attempts)
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


_RECORD = "INSERT INTO schema_migrations (number, name) VALUES (%s, %s)"


def _apply(conn: psycopg.Connection, mig: Migration, lock_timeout_s: float, attempts: int) -> None:
    if mig.transactional:
        _apply_in_transaction(conn, mig, lock_timeout_s, attempts)
        return
    # No lock timeout here: `CREATE INDEX CONCURRENTLY` waits for older transactions, but
    # blocks no reader or writer while it does.
    for statement in mig.statements():
        conn.execute(statement.encode("utf-8"))
    conn.execute(_RECORD, (mig.number, mig.name))


def _apply_in_transaction(
    conn: psycopg.Connection, mig: Migration, lock_timeout_s: float, attempts: int
) -> None:
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)",
                    (f"{max(1, round(lock_timeout_s * 1000))}ms",),
                )
                conn.execute(mig.sql.encode("utf-8"))
                conn.execute(_RECORD, (mig.number, mig.name))
            return
        except psycopg.errors.LockNotAvailable as e:
            if attempt == attempts:
                raise MigrationBlocked(
                    f"migration {mig.number:03d}_{mig.name} waited {lock_timeout_s:g} s for a"
                    f" table lock {attempts} times ({e}): a long transaction holds it. Find"
                    " it in pg_stat_activity, end it, and run the migrations again"
                ) from e
            # the queries that queued behind this one's wait go through meanwhile
            time.sleep(min(lock_timeout_s, 1.0))


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
