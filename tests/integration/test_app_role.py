"""The runtime role (`tessera.metadata.roles`): every flow works as it, the schema is not its."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tessera.domain import files, listing, sharing
from tessera.domain.models import (
    MoveRequest,
    RestoreRequest,
    UnshareRequest,
)
from tessera.metadata.key_check import check_block_keys
from tessera.metadata.outbox import relay_outbox
from tessera.metadata.roles import ensure_app_role

from .conftest import share_with
from .test_maintenance_world import ALICE, BLOCK, BOB, World, make_world


@pytest.fixture
def app_role(database_url: str) -> Iterator[str]:
    """A runtime role made by `ensure_app_role` (password "a password"), dropped after."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    assert ensure_app_role(database_url, role, "a password") is True
    assert ensure_app_role(database_url, role, "another") is False  # idempotent, as it was
    yield role
    with psycopg.connect(database_url, autocommit=True) as conn:  # roles are cluster-wide
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


@pytest.fixture
def app_url(database_url: str, app_role: str) -> str:
    """`database_url` logged in as the runtime role."""
    return make_conninfo(database_url, user=app_role, password="a password")


def test_the_role_holds_a_scram_verifier_of_its_first_password_never_sent_itself(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the verifier is sent (a failing statement is logged with its text), and it is
    the first password's: a later call, a rotation's turn, changes nothing."""
    sent: list[str] = []
    execute = psycopg.Connection.execute

    def recorded(conn: psycopg.Connection[Any], query: Any, *args: Any, **kw: Any) -> Any:
        sent.append(query if isinstance(query, str) else query.as_string(conn))
        return execute(conn, query, *args, **kw)

    monkeypatch.setattr(psycopg.Connection, "execute", recorded)
    role = f"app_{uuid.uuid4().hex[:8]}"
    ensure_app_role(database_url, role, "a password")
    ensure_app_role(database_url, role, "another")
    monkeypatch.undo()
    assert sent and not [q for q in sent if "a password" in q or "another" in q]
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
        (stored,) = row.fetchone() or ("",)
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')
    method, _, rest = stored.partition("$")
    iterations, _, rest = rest.partition(":")
    salt, _, rest = rest.partition("$")
    stored_key, _, _server_key = rest.partition(":")
    assert method == "SCRAM-SHA-256"
    salted = hashlib.pbkdf2_hmac("sha256", b"a password", base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert base64.b64decode(stored_key) == hashlib.sha256(client_key).digest()


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
    # invited, then a member once he accepts (both write the invitations as the role)
    assert share_with(w.svc, ALICE, "/Team", BOB, "editor").path_display == "/Team"
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
