"""Fixtures and helpers for integration tests of the metadata service, domain and API.

Reusable by every engineer:
- `database_url`: a database with every migration applied and every table emptied before
  the test (one database per session; ids from sequences keep counting).
- `db`: a `tessera.metadata.Database` on it.
- `world`: the maintenance tests' harness (`test_maintenance_world.World`) on it.
- `services`: a `Services` container with the real local adapters (filesystem block store,
  key file, LISTEN/NOTIFY change feed) under `tmp_path`, long-poll floor lowered for tests.
- `alice`, `bob`, `carol`: principals (`Principal`), provisioned on first use.
- `put_file(services, who, path, data, ...)`: the whole client upload flow (start, URLs,
  PUT into the block store through its signed URL, commit); `get_file(...)` downloads and
  decodes. `api_event(...)` builds an API Gateway REST proxy event; `call(...)` runs it
  through `build_resolver(services)`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from tessera.adapters.local import FilesystemBlockStore, KeyFileKeyService, PostgresChangeFeed
from tessera.blocks import block_id, content_hash, decode_block, encode_block
from tessera.domain import commits, files, sharing, uploads
from tessera.domain.models import (
    BlockKey,
    BlockSpec,
    CommitRequest,
    DownloadRequest,
    DownloadResponse,
    FileEntry,
    InvitationRequest,
    ShareInfo,
    ShareRequest,
    UploadFileSpec,
    UploadStartRequest,
    UploadUrlBlock,
    UploadUrlsRequest,
)
from tessera.domain.services import Services
from tessera.local.postgres import drop_database, ensure_database
from tessera.metadata import Database, migrate
from tessera.metadata.store import Store
from tessera.ports import Principal
from tessera.settings import Settings

if TYPE_CHECKING:
    from .test_maintenance_world import World


@pytest.fixture(scope="session")
def _session_database(postgres_url: str) -> Iterator[str]:
    """One migrated database for the session; tests get it emptied (see `database_url`).

    CREATE DATABASE costs seconds on a busy machine (it checkpoints and fsyncs files), so
    tests share one database and empty its tables instead. Commits skip the WAL flush wait
    (`synchronous_commit = off`): still transactional, only not crash-durable — fine here.
    """
    import psycopg

    name = f"it_{uuid.uuid4().hex[:12]}"
    url = ensure_database(postgres_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    migrate(url)
    yield url
    drop_database(postgres_url, name)


def empty_tables(url: str) -> None:
    """Empty every table of database `url` (migration bookkeeping aside)."""
    import psycopg

    with psycopg.connect(url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'schema_migrations'"
            )
        ]
        conn.execute("SET LOCAL session_replication_role = replica")  # no FK order needed
        for table in tables:
            conn.execute(f'DELETE FROM "{table}"')


@pytest.fixture
def database_url(_session_database: str) -> str:
    """A fully migrated database with every table empty (migration bookkeeping aside).

    Rows a migration inserts would be emptied too: none does (keep it that way, or teach
    this fixture to keep them).
    """
    empty_tables(_session_database)
    return _session_database


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[World]:
    """The maintenance tests' small Tessera (`test_maintenance_world.World`) on `database_url`."""
    from .test_maintenance_world import make_world

    yield from make_world(database_url, tmp_path)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A connection pool on `database_url`."""
    database = Database(database_url, min_size=1, max_size=12)
    yield database
    database.close()


@pytest.fixture
def test_settings(database_url: str) -> Settings:
    """Defaults, with long-polls allowed to be short."""
    return Settings(database_url=database_url, longpoll_min_s=0.0, longpoll_max_s=10.0)


@pytest.fixture
def services(
    db: Database, database_url: str, tmp_path: Path, test_settings: Settings
) -> Iterator[Services]:
    """The domain's ports wired to the real local adapters."""
    feed = PostgresChangeFeed(database_url)
    svc = Services(
        db=db,
        block_store=FilesystemBlockStore(tmp_path / "blocks", "http://blocks.test", b"k" * 32),
        keys=KeyFileKeyService(tmp_path / "keys.json"),
        feed=feed,
        settings=test_settings,
    )
    yield svc
    feed.close()


def set_block_state(store: Store, block_ids: list[str], state: str) -> None:
    """Put blocks in `state`, as maintenance would have (cold storage, scrub's verdict)."""
    store.conn.execute("UPDATE blocks SET state = %s WHERE block_id = ANY(%s)", (state, block_ids))


def principal(name: str) -> Principal:
    """A test caller named `name` (user id `user-<name>`, email `<name>@example.com`)."""
    return Principal(user_id=f"user-{name}", email=f"{name}@example.com")


@pytest.fixture
def alice() -> Principal:
    return principal("alice")


@pytest.fixture
def bob() -> Principal:
    return principal("bob")


@pytest.fixture
def carol() -> Principal:
    return principal("carol")


class Race(Protocol):
    """`race_held`, its monkeypatch and database given."""

    def __call__(
        self,
        held_at: str,
        first: Callable[[], object],
        second: Callable[[], object],
        *,
        second_waits: bool = True,
    ) -> tuple[object, object]: ...


@pytest.fixture
def race(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Race:
    """`race_held` for this test: `race(held_at, first, second)`."""
    from .test_domain_files import race_held

    return partial(race_held, monkeypatch, database_url)


# ---------------------------------------------------------------------------------------
# The client's upload and download flows, against the domain directly


def split_blocks(data: bytes, block_size: int = 64 * 1024) -> list[bytes]:
    """Fixed-size blocks (the real client uses FastCDC; the server does not care)."""
    return [data[i : i + block_size] for i in range(0, len(data), block_size)]


def store_put(svc: Services, url: str, body: bytes, headers: dict[str, str]) -> None:
    """Do what the gateway does with a presigned PUT to the local block store."""
    parts = urlsplit(url)
    key = unquote(parts.path.removeprefix("/blocks/"))
    store = svc.block_store
    assert isinstance(store, FilesystemBlockStore)
    store.accept_put(
        key,
        dict(parse_qsl(parts.query)),
        len(body),
        [body],
        headers.get("x-amz-checksum-sha256"),
    )


def store_get(svc: Services, url: str) -> bytes:
    """Do what the gateway does with a presigned GET."""
    parts = urlsplit(url)
    store = svc.block_store
    assert isinstance(store, FilesystemBlockStore)
    return store.open_get(
        unquote(parts.path.removeprefix("/blocks/")), dict(parse_qsl(parts.query))
    ).read_bytes()


def upload_blocks(
    svc: Services, who: Principal, path: str, chunks: list[bytes], *, put: bool = True
) -> str:
    """Start an upload of `chunks` at `path`, PUT every needed block; the upload_id."""
    ids = [block_id(c) for c in chunks]
    spec = UploadFileSpec(
        path=path,
        size=sum(len(c) for c in chunks),
        content_hash=content_hash(ids),
        blocks=[BlockSpec(id=i, size=len(c)) for i, c in zip(ids, chunks, strict=True)],
    )
    started = uploads.start_upload(svc, who, UploadStartRequest(files=[spec]))
    send_needed(svc, who, started.upload_id, started.needed, chunks, put=put)
    return started.upload_id


def send_needed(
    svc: Services,
    who: Principal,
    upload_id: str,
    needed: list[BlockKey],
    chunks: list[bytes],
    *,
    put: bool = True,
) -> None:
    """Encode the `needed` blocks among `chunks` under their keys, ask for their PUT URLs
    and (with `put`) PUT them into the block store."""
    by_id = {block_id(c): c for c in chunks}
    encoded = {
        n.id: bytes(encode_block(by_id[n.id], n.id, base64.b64decode(n.key), n.key_version))
        for n in needed
    }
    if encoded:
        urls = uploads.upload_urls(
            svc,
            who,
            UploadUrlsRequest(
                upload_id=upload_id,
                blocks=[
                    UploadUrlBlock(
                        id=i,
                        size=len(e),
                        sha256=base64.b64encode(hashlib.sha256(e).digest()).decode(),
                    )
                    for i, e in encoded.items()
                ],
            ),
        )
        if put:
            for u in urls.urls:
                store_put(svc, u.url, encoded[u.id], u.headers)


def commit_request(
    path: str,
    chunks: list[bytes],
    upload_id: str | None,
    parent_rev: int | None = None,
    idempotency_key: str | None = None,
    mtime: datetime | None = None,
) -> CommitRequest:
    """The commit of `chunks` at `path`."""
    ids = [block_id(c) for c in chunks]
    return CommitRequest(
        path=path,
        parent_rev=parent_rev,
        blocks=[BlockSpec(id=i, size=len(c)) for i, c in zip(ids, chunks, strict=True)],
        size=sum(len(c) for c in chunks),
        content_hash=content_hash(ids),
        mtime=mtime,
        upload_id=upload_id,
        idempotency_key=idempotency_key,
    )


def usage_drift(db: Database) -> list[tuple[int, int, int]]:
    """(ns_id, bytes_used kept, bytes counted) of every namespace whose `bytes_used` is not
    the bytes of its live files' latest versions: empty when the counters are right."""
    with db.transaction() as store:
        rows = store.conn.execute(
            "SELECT n.ns_id, n.bytes_used, COALESCE((SELECT sum(v.size) FROM files f"
            " JOIN file_versions v ON v.ns_id = f.ns_id AND v.file_id = f.file_id"
            " AND v.rev = f.latest_rev WHERE f.ns_id = n.ns_id AND NOT f.is_deleted"
            " AND f.kind = 'file'), 0) FROM namespaces n ORDER BY n.ns_id"
        ).fetchall()
    return [(int(ns), int(kept), int(real)) for ns, kept, real in rows if kept != real]


def put_file(
    svc: Services,
    who: Principal,
    path: str,
    data: bytes,
    *,
    parent_rev: int | None = None,
    idempotency_key: str | None = None,
    block_size: int = 64 * 1024,
) -> FileEntry:
    """Upload and commit `data` at `path` the way a client does; the new entry."""
    chunks = split_blocks(data, block_size)
    upload_id = upload_blocks(svc, who, path, chunks)
    return commits.commit(
        svc, who, commit_request(path, chunks, upload_id, parent_rev, idempotency_key)
    )


def share_with(
    svc: Services, owner: Principal, path: str, member: Principal, access: str = "editor"
) -> ShareInfo:
    """`owner` shares `path` with `member`, who accepts the invitation: a member now. The
    member's view of the share (their mount point)."""
    sharing.account(svc, member)  # a user exists once they have made a request
    invited = sharing.share(
        svc,
        owner,
        ShareRequest(path=path, email=member.email, access=access),  # type: ignore[arg-type]
    )
    return sharing.accept(svc, member, InvitationRequest(ns_id=invited.ns_id))


def get_file(
    svc: Services,
    who: Principal,
    path: str | None = None,
    *,
    file_id: str | None = None,
    rev: int | None = None,
    include_deleted: bool = False,
) -> bytes:
    """Download, decrypt, decompress and re-hash a file the way a client does (page by page)."""
    out = bytearray()
    from_block: int | None = 0
    while from_block is not None:
        req = DownloadRequest(
            path=path,
            file_id=file_id,
            rev=rev,
            from_block=from_block,
            include_deleted=include_deleted,
        )
        result = files.download(svc, who, req)
        assert isinstance(result, DownloadResponse), result
        for b in result.blocks:
            assert b.offset == len(out)
            out += decode_block(store_get(svc, b.url), b.id, base64.b64decode(b.key))
        rev, from_block = result.entry.rev, result.next_block
    return bytes(out)


# ---------------------------------------------------------------------------------------
# API Gateway REST proxy events


def api_event(
    method: str,
    path: str,
    body: Any = None,
    who: Principal | None = None,
    *,
    raw_body: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An API Gateway REST proxy event as the Cognito authorizer (or local gateway) passes it."""
    text = raw_body if raw_body is not None else (None if body is None else json.dumps(body))
    context: dict[str, Any] = {
        "accountId": "123456789012",
        "apiId": "tessera",
        "httpMethod": method,
        "path": f"/prod{path}",
        "protocol": "HTTP/1.1",
        "requestId": uuid.uuid4().hex,
        "resourcePath": path,
        "stage": "prod",
        "identity": {"sourceIp": "127.0.0.1"},
    }
    if who is not None:
        context["authorizer"] = {"claims": {"sub": who.user_id, "email": who.email}}
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "multiValueHeaders": {},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": context,
        "body": text,
        "isBase64Encoded": False,
    }


Caller = Callable[..., tuple[int, Any, dict[str, str]]]


@pytest.fixture
def call(services: Services) -> Caller:
    """`call(method, path, body, who)` → (status, parsed JSON body, headers) via the resolver."""
    from tessera.api import build_resolver

    resolver = build_resolver(services)

    def _call(
        method: str, path: str, body: Any = None, who: Principal | None = None, **kw: Any
    ) -> tuple[int, Any, dict[str, str]]:
        response = resolver.resolve(api_event(method, path, body, who, **kw), None)  # type: ignore[arg-type]
        text = response.get("body") or ""
        headers = dict(response.get("headers") or {})
        for name, values in (response.get("multiValueHeaders") or {}).items():
            headers.setdefault(name, values[0])
        return int(response["statusCode"]), json.loads(text) if text else None, headers

    return _call
