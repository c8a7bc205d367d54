"""Embedded PostgreSQL (`pgserver`) with its data under the local state dir.

Several processes may hold the same server (`tessera local up` and `tessera local adduser`):
pgserver keeps a list of holder pids next to the data and stops the server when the last
holder lets go. A holder that died without letting go (SIGKILL, power loss) would keep the
server from ever stopping, so dead pids are pruned before attaching; and a `postmaster.pid`
left by a crash whose pid now belongs to another process is removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DATABASE = "tessera"

log = logging.getLogger(__name__)
# pgserver narrates every attach and detach at INFO; an operator only needs its warnings.
logging.getLogger("pgserver").setLevel(logging.WARNING)


def _prune_dead_holders(pgdata: Path) -> None:
    import psutil

    holders = pgdata / ".handle_pids.json"
    if not holders.is_file():
        return
    try:
        pids: list[int] | None = [int(p) for p in json.loads(holders.read_text())]
    except (ValueError, TypeError):
        pids = None  # torn by a crash mid-write: pgserver would fail to read it
    alive = [p for p in pids or [] if psutil.pid_exists(p)]
    if alive != pids:
        holders.write_text(json.dumps(alive))


def _drop_stale_postmaster_pid(pgdata: Path) -> None:
    """Delete `postmaster.pid` when the pid it names is alive but is not this data's server.

    After a crash or power loss the file stays, and once its pid is handed to another
    process pgserver takes the server for running: the start failed with a traceback, and
    its cleanup stopped, then killed, that other process. A file naming a dead pid is
    PostgreSQL's own to handle; one whose process cannot be looked at is kept."""
    import psutil

    marker = pgdata / "postmaster.pid"
    try:
        pid = int(marker.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    try:
        process = psutil.Process(pid)
        # the postmaster runs in its data dir: compared as files, not as spellings (a
        # case-insensitive disk, a bind mount or a rename spell it otherwise, and taking
        # a running server for a stranger would remove its pid file, which stops it)
        ours = process.name().startswith("postgres") and os.path.samefile(process.cwd(), pgdata)
    # gone, a pid no process has (negative), or one that cannot be looked at: kept
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError, OSError):
        return
    if not ours:
        log.warning("removing %s: pid %d is not its server (a stale file)", marker, pid)
        marker.unlink(missing_ok=True)


def describe_database(conninfo: str) -> str:
    """A conninfo's host, port and database, without its password."""
    parts = conninfo_to_dict(conninfo)
    host, port = parts.get("host") or "localhost", parts.get("port") or 5432
    return f"{host}:{port}/{parts.get('dbname') or parts.get('user') or ''}"


def drop_database(conninfo: str, name: str) -> None:
    """Drop database `name` on the server `conninfo` reaches, if it exists, even while
    connections to it are open (they are ended)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def ensure_database(conninfo: str, name: str, *, reset: bool = False) -> str:
    """The conninfo of database `name` on the server `conninfo` reaches, created if missing
    (dropped first when `reset`). Two processes creating it at once both succeed."""
    if reset:
        drop_database(conninfo, name)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(conninfo, dbname=name)


class EmbeddedPostgres:
    """One pgserver-managed PostgreSQL over `pgdata`; `start()` returns the conninfo."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or attach to) the server; create the `tessera` database on first start."""
        with warnings.catch_warnings():
            # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR
            # it warns and falls back to /tmp, which is fine for its lock file
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import PostgresServer, get_server

        self.pgdata.mkdir(parents=True, exist_ok=True)
        with PostgresServer._lock:  # the same inter-process lock pgserver takes
            _prune_dead_holders(self.pgdata)
            _drop_stale_postmaster_pid(self.pgdata)
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        ensure_database(self._server.get_uri(), DATABASE)
        url: str = self._server.get_uri(database=DATABASE)
        return url

    def stop(self) -> None:
        """Let go of the server; it stops cleanly when no other process holds it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
