"""The role the runtime functions connect as: it reads and writes the data, never the schema.

Migrations run as the cluster's master user, which owns every table. The functions (API,
long-poll, relay, maintenance) connected as that same user: one of them taken over could
drop or alter any table, read `pg_authid`, or change other roles. `ensure_app_role` makes
a login role that may only select, insert, update and delete rows, owns nothing, and may
not touch the migrations' own record; the migrate function calls it after every
migration, so a table a migration adds is granted at once. (Ids come from identity
columns, which need no grant on their sequences; a migration using `nextval()` would.)
"""

from __future__ import annotations

import psycopg
from psycopg import sql

_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


def ensure_app_role(conninfo: str, role: str, password: str) -> bool:
    """Make `role` the runtime role on the database of `conninfo` (an owner's login);
    idempotent. True when the role was created now.

    The password is set only then: a rotation changes it afterwards, in the database and
    the secret together, and a later deploy setting the secret's copy it read could undo a
    rotation that ran between that read and the statement."""
    role_name = sql.Identifier(role)
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
        # one deploy at a time: two creating the role at once, one failed
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('tessera app role'))")
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists is None:
            # the SCRAM verifier, made here (libpq), never the password: a statement that
            # fails is logged with its text, and the database's logs go to CloudWatch
            verifier = conn.pgconn.encrypt_password(
                password.encode(), role.encode(), b"scram-sha-256"
            ).decode()
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role_name, sql.Literal(verifier))
            )
        database = conn.execute("SELECT current_database()").fetchone()
        assert database is not None
        for grant in (
            # (PUBLIC holds these two by default; a hardened database revokes them)
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(database[0]), role_name
            ),
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role_name),
            sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA public TO {}").format(
                sql.SQL(_TABLE_PRIVILEGES), role_name
            ),
            # the migrations' record is the migrate function's alone
            sql.SQL("REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM {}").format(role_name),
        ):
            conn.execute(grant)
    return exists is None


__all__ = ["ensure_app_role"]
