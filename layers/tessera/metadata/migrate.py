"""Versioned SQL migrations: `migrations/NNN_name.sql`, applied in numeric order, once each.

Ranges: server core 001-049, local cloud 050-059, maintenance 100-149. Each file runs in its
own transaction together with its row in `schema_migrations`; a session-level advisory lock
makes concurrent starts (several Lambdas, a gateway and a test) apply each file exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

_LOCK_ID = 7_305_112_001  # arbitrary, stable: "tessera migrations"
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    number: int
    name: str
    sql: str


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


def migrate(conninfo: str) -> list[int]:
    """Apply every pending migration to the database at `conninfo`; returns the numbers applied."""
    applied_now: list[int] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " number integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT number FROM schema_migrations")}
            for mig in available_migrations():
                if mig.number in done:
                    continue
                with conn.transaction():
                    conn.execute(mig.sql.encode("utf-8"))
                    conn.execute(
                        "INSERT INTO schema_migrations (number, name) VALUES (%s, %s)",
                        (mig.number, mig.name),
                    )
                applied_now.append(mig.number)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now


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
