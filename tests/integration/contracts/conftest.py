"""Adapter factories for the port contract suites.

Every adapter of a port must pass the same suite. To add one, write a factory (a context
manager taking the pytest `request` and a temp dir, yielding a harness) and append it to
the port's list below — one line per adapter:

    BLOCK_STORES.append(s3_block_store)       # tests/integration/contracts/conftest.py
    CHANGE_FEEDS.append(dynamodb_change_feed)
    KEY_SERVICES.append(kms_key_service)

A harness (`harnesses.py`) names the checks its backend cannot perform (e.g. moto does not
verify presigned signatures) in `unsupported`, with the reason; those checks skip with that
reason.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from .harnesses import BlockStoreHarness, ChangeFeedHarness, KeyServiceHarness

Factory = Callable[[pytest.FixtureRequest, Path], AbstractContextManager[object]]

# ---------------------------------------------------------------------------------------
# Local adapters


@contextmanager
def local_block_store(request: pytest.FixtureRequest, tmp: Path) -> Iterator[BlockStoreHarness]:
    """FilesystemBlockStore behind a real local gateway (real HTTP for presigned URLs)."""
    from tessera.adapters.local import FilesystemBlockStore, NotRestored
    from tessera.local.gateway import Gateway, create_app
    from tessera.local.server import Server

    server = Server("127.0.0.1", 0)
    store = FilesystemBlockStore(tmp / "blocks", server.base_url, secrets.token_bytes(32))
    server.start(create_app(Gateway(block_store=store)))
    try:
        yield BlockStoreHarness(store=store, not_restored_error=NotRestored)
    finally:
        server.stop()


@contextmanager
def local_change_feed(request: pytest.FixtureRequest, tmp: Path) -> Iterator[ChangeFeedHarness]:
    """PostgresChangeFeed over a fresh, migrated database."""
    from tessera.adapters.local import PostgresChangeFeed

    url: str = request.getfixturevalue("database_url")  # cloned from a migrated template
    feed = PostgresChangeFeed(url)
    try:
        yield ChangeFeedHarness(feed=feed)
    finally:
        feed.close()


@contextmanager
def local_key_service(request: pytest.FixtureRequest, tmp: Path) -> Iterator[KeyServiceHarness]:
    """KeyFileKeyService on a key file in a temp dir."""
    from tessera.adapters.local import KeyFileKeyService

    path = tmp / "keys.json"
    first = KeyFileKeyService(path)
    yield KeyServiceHarness(open=lambda: KeyFileKeyService(path), rotate=first.rotate)


BLOCK_STORES: list[Factory] = [local_block_store]
CHANGE_FEEDS: list[Factory] = [local_change_feed]
KEY_SERVICES: list[Factory] = [local_key_service]

from tests.integration.aws.contract_factories import (  # noqa: E402  (AWS adapters on moto)
    dynamodb_change_feed,
    kms_key_service,
    s3_block_store,
)

BLOCK_STORES.append(s3_block_store)
CHANGE_FEEDS.append(dynamodb_change_feed)
KEY_SERVICES.append(kms_key_service)

# ---------------------------------------------------------------------------------------
# Fixtures the suites use


def _name(factory: Factory) -> str:
    return getattr(factory, "__name__", repr(factory))


@pytest.fixture(params=BLOCK_STORES, ids=_name)
def block_store_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """One harness per registered block-store adapter."""
    with request.param(request, tmp_path) as harness:
        yield harness


@pytest.fixture(params=CHANGE_FEEDS, ids=_name)
def change_feed_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """One harness per registered change-feed adapter."""
    with request.param(request, tmp_path) as harness:
        yield harness


@pytest.fixture(params=KEY_SERVICES, ids=_name)
def key_service_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """One harness per registered key-service adapter."""
    with request.param(request, tmp_path) as harness:
        yield harness
