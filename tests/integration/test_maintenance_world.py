"""A small Tessera for the maintenance tests: real PostgreSQL, the local filesystem block
store and key file, the Postgres change feed, and the server core's domain services.

Clients are played by `World.put` / `World.get`, which do what the sync client does:
chunk, ask which blocks are needed, encode them under the keys handed out, PUT them to the
staging keys, commit; and on the way back, fetch through presigned GETs, decode, re-hash.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest

from tessera.adapters.local.block_store import FilesystemBlockStore
from tessera.adapters.local.change_feed import PostgresChangeFeed
from tessera.adapters.local.key_file import KeyFileKeyService
from tessera.blocks import block_id, content_hash, decode_block, encode_block
from tessera.domain import commits, files, object_keys, uploads
from tessera.domain.models import (
    CommitRequest,
    DeleteRequest,
    DownloadBlock,
    DownloadRequest,
    DownloadResponse,
    FileEntry,
    RestoringResponse,
    UploadStartRequest,
    UploadUrlsRequest,
)
from tessera.domain.services import Services
from tessera.maintenance import MaintenanceContext, MaintenanceSettings, run_workflow
from tessera.maintenance.results import StepResult
from tessera.metadata import Database, migrate
from tessera.ports import BlockStore, ChangeEvent, ChangeFeed, KeyService, Principal

R = TypeVar("R", bound=StepResult)
BLOCK = 64 * 1024  # small fixed blocks keep the tests fast; the server does not re-chunk


class MovableClock:
    """A clock that stands still until moved (the block store's restore timer)."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


class RecordingFeed(ChangeFeed):
    """The real Postgres change feed, remembering what went through it."""

    def __init__(self, inner: PostgresChangeFeed) -> None:
        self.inner = inner
        self.events: list[ChangeEvent] = []

    def publish(self, event: ChangeEvent) -> None:
        self.events.append(event)
        self.inner.publish(event)

    def wait(self, cursors: Mapping[int, int], timeout: float) -> bool:
        return self.inner.wait(cursors, timeout)


def user(name: str) -> Principal:
    return Principal(user_id=f"user-{name}", email=f"{name}@example.com")


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)]


@dataclass
class World:
    svc: Services
    ctx: MaintenanceContext
    store: BlockStore
    feed: RecordingFeed
    store_clock: MovableClock
    revs: dict[tuple[str, str], int] = field(default_factory=dict)

    # -- the client side ------------------------------------------------------------------

    def put(
        self,
        who: Principal,
        path: str,
        data: bytes,
        *,
        poison: frozenset[int] = frozenset(),
        before_commit: Callable[[str], None] | None = None,
        idempotency_key: str | None = None,
    ) -> FileEntry:
        """Upload and commit `data` at `path`; blocks at the `poison` ordinals are uploaded
        with the right id but other bytes (an attacker claiming content it does not have).
        `before_commit(upload_id)` runs after the uploads, before the commit, which carries
        `idempotency_key` when given."""
        parts = chunks(data)
        ids = [block_id(c) for c in parts]
        spec = [{"id": i, "size": len(c)} for i, c in zip(ids, parts, strict=True)]
        digest = content_hash(ids)
        started = uploads.start_upload(
            self.svc,
            who,
            UploadStartRequest.model_validate(
                {
                    "files": [
                        {"path": path, "size": len(data), "content_hash": digest, "blocks": spec}
                    ]
                }
            ),
        )
        by_id = {i: c for i, c in zip(ids, parts, strict=True)}
        poisoned = {ids[o] for o in poison}
        encoded: dict[str, bytes] = {}
        for need in started.needed:
            plain = by_id[need.id]
            if need.id in poisoned:
                plain = bytes(b ^ 0x5A for b in plain)
            encoded[need.id] = bytes(
                encode_block(plain, need.id, base64.b64decode(need.key), need.key_version)
            )
        if encoded:
            urls = uploads.upload_urls(
                self.svc,
                who,
                UploadUrlsRequest.model_validate(
                    {
                        "upload_id": started.upload_id,
                        "blocks": [
                            {
                                "id": i,
                                "size": len(e),
                                "sha256": base64.b64encode(hashlib.sha256(e).digest()).decode(),
                            }
                            for i, e in encoded.items()
                        ],
                    }
                ),
            )
            ordinal = {n.id: i for i, n in enumerate(started.needed)}
            for url in urls.urls:
                key = object_keys.staging_key(started.upload_id, url.id, ordinal[url.id])
                self.store.put(key, encoded[url.id])
        if before_commit is not None:
            before_commit(started.upload_id)
        entry = commits.commit(
            self.svc,
            who,
            CommitRequest.model_validate(
                {
                    "path": path,
                    "parent_rev": self.revs.get((who.user_id, path)),
                    "blocks": spec,
                    "size": len(data),
                    "content_hash": digest,
                    "upload_id": started.upload_id,
                    "idempotency_key": idempotency_key,
                }
            ),
        )
        self.revs[(who.user_id, path)] = entry.rev
        return entry

    def get(self, who: Principal, path: str, rev: int | None = None) -> bytes | RestoringResponse:
        """Download through presigned GETs and decode every block, as the client does."""
        answer = files.download(self.svc, who, DownloadRequest(path=path, rev=rev))
        if isinstance(answer, RestoringResponse):
            return answer
        return self.fetch(answer)

    def fetch(self, answer: DownloadResponse) -> bytes:
        """Fetch and decode the blocks of a download answer through its presigned GETs."""
        return b"".join(self.fetch_block(b) for b in answer.blocks)

    def fetch_block(self, b: DownloadBlock) -> bytes:
        """Fetch and decode one block of a download answer through its presigned GET."""
        if isinstance(self.store, FilesystemBlockStore):  # the gateway's check, in-process
            url = urlsplit(b.url)
            key = unquote(url.path.removeprefix("/blocks/"))
            stored = self.store.open_get(key, dict(parse_qsl(url.query))).read_bytes()
        else:  # a real HTTP GET of the presigned URL
            response = httpx.get(b.url, headers=b.headers)
            response.raise_for_status()
            stored = response.content
        return decode_block(stored, b.id, base64.b64decode(b.key))

    def delete(self, who: Principal, path: str) -> None:
        files.delete(self.svc, who, DeleteRequest(path=path))
        self.revs.pop((who.user_id, path), None)

    # -- the operator side ----------------------------------------------------------------

    def run(self, name: str, *, days: float = 0, hours: float = 0) -> StepResult:
        """Run a workflow as if `days` + `hours` from now."""
        as_of = datetime.now(UTC) + timedelta(days=days, hours=hours)
        return run_workflow(self.ctx, name, as_of=as_of)

    def collect_settled(self) -> None:
        """gc past the settled-copy grace: the objects of the copies dedup promoted or
        dropped are deleted, as they are long after an upload."""
        self.run("gc", hours=self.ctx.settings.settled_copy_grace_s / 3600 + 0.1)

    def run_as(self, kind: type[R], name: str, *, days: float = 0, hours: float = 0) -> R:
        """`run`, checking that the workflow answered with a `kind` result."""
        result = self.run(name, days=days, hours=hours)
        assert isinstance(result, kind), result
        return result

    def keys_under(self, prefix: str) -> list[str]:
        return sorted(self.store.list_keys(prefix))

    def bytes_under(self, prefix: str) -> int:
        heads = [self.store.head(k) for k in self.store.list_keys(prefix)]
        return sum(h.size for h in heads if h is not None)

    def sql(self, query: str, *params: object) -> list[tuple[object, ...]]:
        with self.svc.db.pool.connection() as conn:
            return conn.execute(query.encode(), params).fetchall()


class Killed(BaseException):
    """The process dies here (not an error any step would catch)."""


def lose(world: World, key: str) -> None:
    """Delete `key`'s object for good: past the days the store keeps what a delete removed
    (its earlier versions), so no undelete or copy from one can bring it back."""
    world.store.delete(key)
    world.store_clock.advance(days=31)
    world.store.expire_versions()  # type: ignore[attr-defined]


def die_copying(
    world: World, monkeypatch: pytest.MonkeyPatch, *, source: str = "", target: str = ""
) -> None:
    """From now on, the run dies (`Killed`) when it copies a key under `source` to a key
    under `target` (each "" for any), before the copy."""
    copy = world.store.copy

    def copy_or_die(src: str, dst: str, **kw: Any) -> None:
        if src.startswith(source) and dst.startswith(target):
            raise Killed
        copy(src, dst, **kw)

    monkeypatch.setattr(world.store, "copy", copy_or_die)


def swap_staged_after_dedup_reads(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, each staged copy dedup reads holds other bytes right after the read:
    an uploader's PUT through a second URL, timed between dedup's check and its copy."""
    from tessera.maintenance import dedup
    from tessera.maintenance.verify import check_stored

    def swapped_after(*args: object, **kwargs: object) -> object:
        verdict = check_stored(*args, **kwargs)  # type: ignore[arg-type]
        key = str(args[2])
        if key.startswith("staging/"):
            world.store.put(key, secrets.token_bytes(300))
        return verdict

    monkeypatch.setattr(dedup, "check_stored", swapped_after)


def make_world(
    url: str,
    tmp: Path,
    *,
    store: BlockStore | None = None,
    keys: KeyService | None = None,
    migrate_schema: bool = True,
    **settings: object,
) -> Generator[World, None, None]:
    """A world on database `url`: the local block store and key file under `tmp` unless
    `store` / `keys` are given; `settings` override `MaintenanceSettings` defaults. The
    schema is migrated first unless `migrate_schema` is False (a role that may not)."""
    if migrate_schema:
        migrate(url)
    db = Database(url, min_size=1, max_size=8)
    store_clock = MovableClock()
    if store is None:
        store = FilesystemBlockStore(
            tmp / "blocks",
            "http://127.0.0.1:9",
            secrets.token_bytes(32),
            restore_delay=3600,
            clock=store_clock,
        )
    if keys is None:
        keys = KeyFileKeyService(tmp / "keys.json")
    feed = RecordingFeed(PostgresChangeFeed(url))
    msettings = MaintenanceSettings(**settings)  # type: ignore[arg-type]
    svc = Services(db=db, block_store=store, keys=keys, feed=feed, settings=msettings)
    ctx = MaintenanceContext.build(db=db, store=store, keys=keys, feed=feed, settings=msettings)
    try:
        yield World(svc=svc, ctx=ctx, store=store, feed=feed, store_clock=store_clock)
    finally:
        feed.inner.close()
        db.close()


ALICE, BOB, MALLORY = user("alice"), user("bob"), user("mallory")


def test_world_round_trip(world: World) -> None:
    """The harness itself: a file goes up staged and comes back byte for byte."""
    data = secrets.token_bytes(3 * BLOCK + 100)
    entry = world.put(ALICE, "/a.bin", data)
    assert entry.rev == 1
    assert len(world.keys_under("staging/")) == 4
    assert world.get(ALICE, "/a.bin") == data
