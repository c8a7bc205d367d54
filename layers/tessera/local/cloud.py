"""The whole local cloud in one process: PostgreSQL, adapters, API and gateway.

    with LocalCloud(state_dir, port=0) as base_url:   # in-process, for tests
        ...

`tessera local up` uses the same object, serving in the main thread (`serve_forever`).
State layout under `state_dir` (everything survives restarts):

    pg/                  embedded PostgreSQL data (unless a database URL is given)
    blocks/              the filesystem block store (hot/, cold/, restores/, tmp/)
    keys.json            block-key secrets (0600)
    url-signing.key      HMAC secret of presigned block URLs (0600)
    jwt-signing-key.pem  the JWT issuer's ES256 private key (0600)
    demo-credentials     the demo user's login (0600, `--demo` only)
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from tessera.adapters.local.block_store import FilesystemBlockStore
from tessera.adapters.local.change_feed import PostgresChangeFeed
from tessera.adapters.local.identity import JwtIssuer, LocalIdentity, LocalUsers
from tessera.adapters.local.key_file import KeyFileKeyService
from tessera.adapters.local.secret_files import load_or_create
from tessera.domain.services import Services
from tessera.local.demo import ensure_demo_user
from tessera.local.gateway import MAX_BLOCK_BODY, Gateway, create_app
from tessera.local.lifecycle import ServedCloud
from tessera.local.postgres import EmbeddedPostgres, describe_database
from tessera.local.relay import start_relay
from tessera.local.server import Server
from tessera.local.throttle import RequestThrottle
from tessera.metadata import Database, migrate
from tessera.metadata.key_check import check_block_keys, guard_block_keys
from tessera.settings import Settings

log = logging.getLogger(__name__)


#: A background task: started with the wired services, returns how to stop it (or None).
BackgroundTask = Callable[[Any], Callable[[], None] | None]


@dataclass(frozen=True)
class StatePaths:
    """Where each piece of local state lives under the state dir."""

    root: Path

    @property
    def pgdata(self) -> Path:
        return self.root / "pg"

    @property
    def blocks(self) -> Path:
        return self.root / "blocks"

    @property
    def key_file(self) -> Path:
        return self.root / "keys.json"

    @property
    def url_signing_key(self) -> Path:
        return self.root / "url-signing.key"

    @property
    def jwt_key(self) -> Path:
        return self.root / "jwt-signing-key.pem"

    @property
    def demo_credentials(self) -> Path:
        return self.root / "demo-credentials"


def open_database(
    state: StatePaths, database_url: str | None
) -> tuple[str, EmbeddedPostgres | None]:
    """(conninfo, embedded server or None): `database_url` when given, else pgserver."""
    if database_url:
        return database_url, None
    embedded = EmbeddedPostgres(state.pgdata)
    return embedded.start(), embedded


class MissingKeyFile(Exception):
    """The block-key file is gone while the database holds blocks encrypted under it."""


def _check_block_keys_kept(key_file: Path, conninfo: str, *, external: bool) -> None:
    """Refuse to start with a new block-key file over a database that holds blocks: their
    keys derive from the old one's secrets. Made quietly, it left every block unreadable,
    and maintenance then quarantined them, for good (the old file put back did not undo
    it). A backup that could not read the 0600 file, or a state dir started afresh over a
    shared `DATABASE_URL`, lose it this way."""
    if key_file.exists():
        return
    db = Database(conninfo, min_size=0, max_size=1)
    try:
        with db.transaction() as store:
            held = store.stored_block_count()
    finally:
        db.close()
    if held:
        where, afresh = (
            (
                f"the database at {describe_database(conninfo)} (DATABASE_URL)",
                "unset DATABASE_URL, or point it at an empty database",
            )
            if external
            else ("the database", "move the whole state dir aside")
        )
        raise MissingKeyFile(
            f"{key_file} is missing, but {where} holds {held} blocks encrypted under it: put"
            " it back from a backup of the state dir (a new one would make every block"
            f" unreadable). To start afresh instead, {afresh}."
        )


class LocalCloud(ServedCloud):
    """PostgreSQL + local adapters + the API behind the gateway, started and stopped as one.

    `background` tasks start with the wired `Services` and return how to stop them; the
    outbox relay (`tessera.local.relay`) is always one of them, and with `maintenance`
    (default) the maintenance scheduler (`tessera.maintenance.scheduler`) is another.
    `restore_delay` makes cold-tier restores take that many seconds.
    `public_url` is the URL clients reach the gateway at (presigned block URLs point there),
    when it is not `http://host:port` (listening on 0.0.0.0, behind a proxy).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        database_url: str | None = None,
        settings: Settings | None = None,
        demo: bool = False,
        restore_delay: float = 0.0,
        background: Sequence[BackgroundTask] = (),
        maintenance: bool = True,
        public_url: str | None = None,
    ) -> None:
        self.state = StatePaths(Path(state_dir).expanduser().resolve())
        self.host, self.port = host, port
        self.settings = settings or Settings()
        self.database_url = database_url or self.settings.database_url or None
        self.demo = demo
        self.restore_delay = restore_delay
        self.background = list(background)
        self.maintenance = maintenance
        self.conninfo = ""
        self.public_url = public_url.rstrip("/") if public_url else None
        self.base_url = ""
        self.demo_login: tuple[str, str] | None = None
        self._embedded: EmbeddedPostgres | None = None
        self._server: Server | None = None
        self._db: Database | None = None
        self._feed: PostgresChangeFeed | None = None
        self._stoppers: list[Callable[[], None]] = []
        self._app: Any = None
        self.services: Services | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def prepare(self) -> str:
        """Start PostgreSQL, migrate, load keys and wire the gateway; returns the base URL.

        Nothing is served yet: call `start()` (background thread) or `serve_forever()`.
        """
        self.state.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.conninfo, self._embedded = open_database(self.state, self.database_url)
            migrate(self.conninfo)
            _check_block_keys_kept(
                self.state.key_file, self.conninfo, external=self._embedded is None
            )
            keys = KeyFileKeyService(self.state.key_file)
            url_secret = load_or_create(self.state.url_signing_key, lambda: secrets.token_bytes(32))
            issuer = JwtIssuer(self.state.jwt_key)
            users = LocalUsers(self.conninfo)
            self._server = Server(self.host, self.port)
            self.base_url = self.public_url or self._server.base_url
            block_store = FilesystemBlockStore(
                self.state.blocks,
                self.base_url,
                url_secret,
                restore_delay=self.restore_delay,
                keep_versions_days=self.settings.local_block_versions_days,
            )
            gateway = Gateway(
                block_store=block_store,
                identity=issuer,
                token_endpoint=LocalIdentity(users, issuer),
                max_block_body=max(MAX_BLOCK_BODY, self.settings.max_stored_block_size),
                throttle=RequestThrottle.from_settings(self.settings),
                sign_in_throttle=RequestThrottle.for_sign_ins(),
            )
            self._feed = PostgresChangeFeed(self.conninfo)
            self._wire_api(gateway, keys)
            self._app = create_app(gateway)
            if self.demo:
                self.demo_login = ensure_demo_user(self.state.demo_credentials, users.add)
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wire_api(self, gateway: Gateway, keys: KeyFileKeyService) -> None:
        from tessera.api import build_resolver
        from tessera.local.longpoll import native_longpoll

        assert self._feed is not None and gateway.block_store is not None
        self._db = Database(
            self.conninfo,
            min_size=self.settings.pool_min_size,
            max_size=self.settings.pool_max_size,
        )
        check_block_keys(self._db, keys)  # before any block is served or judged
        guard_block_keys(self._db, keys)  # and a version a rotation makes while it runs
        self.services = Services(
            db=self._db,
            block_store=gateway.block_store,
            keys=keys,
            feed=self._feed,
            settings=self.settings,
        )
        gateway.resolver = build_resolver(self.services)
        gateway.longpoll = native_longpoll(self.services, self._feed)
        tasks = [
            *self.background,
            start_relay,
            *(_maintenance_tasks() if self.maintenance else []),
        ]
        for task in tasks:
            stop = task(self.services)
            if stop is not None:
                self._stoppers.append(stop)

    def stop(self) -> None:
        """Stop serving, background tasks, the feed, the pool and PostgreSQL (idempotent)."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        while self._stoppers:
            self._stoppers.pop()()
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None


def _maintenance_tasks() -> list[BackgroundTask]:
    """The maintenance engineer's in-process scheduler, when that module is installed."""
    if find_spec("tessera.maintenance.scheduler") is None:
        return []
    start: BackgroundTask = import_module("tessera.maintenance.scheduler").start
    return [start]
