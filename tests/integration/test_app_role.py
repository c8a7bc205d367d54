"""The runtime role (`tessera.metadata.roles`): every flow works as it, the schema is not its."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tessera.domain import files, listing, sharing
from tessera.domain.models import (
    MoveRequest,
    RestoreRequest,
    ShareRequest,
    UnshareRequest,
)
from tessera.metadata.key_check import check_block_keys
from tessera.metadata.outbox import relay_outbox
from tessera.metadata.roles import ensure_app_role

from .test_maintenance_world import ALICE, BLOCK, BOB, World, make_world


@pytest.fixture
def app_url(database_url: str) -> str:
    """`database_url` logged in as a runtime role made by `ensure_app_role`."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    assert ensure_app_role(database_url, role, "a password") is True
    assert ensure_app_role(database_url, role, "another") is False  # idempotent, as it was
    return make_conninfo(database_url, user=role, password="a password")


@pytest.fixture
def app_world(app_url: str, tmp_path: Path) -> Iterator[World]:
    yield from make_world(app_url, tmp_path, migrate_schema=False)


def test_every_workflow_runs_as_the_runtime_role(app_world: World) -> None:
    """Uploads, downloads, deletes and every maintenance step, as the functions run them."""
    w = app_world
    data = secrets.token_bytes(2 * BLOCK)
    w.put(ALICE, "/a.bin", data)
    w.put(BOB, "/b.bin", data)
    for name in ("dedup", "scrub"):
        assert not w.run(name).errors, name
    assert w.get(BOB, "/b.bin") == data
    w.delete(ALICE, "/a.bin")
    for name in ("gc", "cold"):
        assert not w.run(name, days=120).errors, name
    assert w.get(BOB, "/b.bin") is not None


def test_sharing_moves_restores_listings_and_the_relays_run_as_the_runtime_role(
    app_world: World,
) -> None:
    w = app_world
    w.put(ALICE, "/Team/plan.txt", b"v1")
    w.put(ALICE, "/Team/plan.txt", b"v2")
    w.put(BOB, "/mine.txt", b"bob's")  # (signed in once)
    sharing.share(w.svc, ALICE, ShareRequest(path="/Team", email=BOB.email, access="editor"))
    files.move(w.svc, BOB, MoveRequest(from_path="/Team/plan.txt", to_path="/Team/old.txt"))
    files.restore(w.svc, BOB, RestoreRequest(path="/Team/old.txt", rev=1))
    assert w.get(ALICE, "/Team/old.txt") == b"v1"
    listed = listing.list_folder(w.svc, BOB, "", True, None)
    assert {e.path_display for e in listed.entries} >= {"/Team", "/Team/old.txt"}
    sharing.unshare(w.svc, ALICE, UnshareRequest(path="/Team", email=BOB.email))
    relay_outbox(w.svc.db, w.feed)
    check_block_keys(w.svc.db, w.ctx.keys)


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE files",
        "ALTER TABLE files ADD COLUMN x int",
        "TRUNCATE blocks",
        "CREATE TABLE mine (x int)",
        "DELETE FROM schema_migrations",
        "CREATE ROLE other",
        "SELECT rolpassword FROM pg_authid",
    ],
)
def test_the_runtime_role_cannot_touch_the_schema_or_other_roles(
    app_url: str, statement: str
) -> None:
    with psycopg.connect(app_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)
