"""Fixtures shared by every test layer.

PostgreSQL is real: `DATABASE_URL` when set, else one embedded server (`pgserver`) per test
session. Each test that asks for `empty_database_url` gets a database of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server for the whole session (its `postgres` database)."""
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    from pgserver.postgres_server import get_server

    datadir: Path = tmp_path_factory.mktemp("pgdata")
    server = get_server(datadir, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
def empty_database_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    from tessera.local.postgres import drop_database, ensure_database

    name = f"t_{uuid.uuid4().hex[:12]}"
    url = ensure_database(postgres_url, name)
    try:
        yield url
    finally:
        drop_database(postgres_url, name)
