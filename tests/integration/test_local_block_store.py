"""The filesystem block store beyond the port contract: safe keys, restore timing, temp
files, and its HTTP face through the gateway (413, cold objects)."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tessera.adapters.local import FilesystemBlockStore, NotRestored
from tessera.domain.errors import BadRequest
from tessera.local.gateway import Gateway, create_app
from tessera.local.server import Server
from tessera.ports import StorageTier
from tests.corruption import with_last_byte_flipped


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.at = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FilesystemBlockStore, str]]:
    server = Server()
    store = FilesystemBlockStore(tmp_path / "blocks", server.base_url, secrets.token_bytes(32))
    server.start(create_app(Gateway(block_store=store, max_body=64 * 1024)))
    try:
        yield store, server.base_url
    finally:
        server.stop()


@pytest.mark.parametrize(
    "key",
    [
        "../escape",
        "/etc/passwd",
        "blocks/../../x",
        "blocks/a\0b",
        "blocks/",
        "",
        ".hidden/x",
        "blocks/" + "a" * 200,
    ],
)
def test_unsafe_keys_are_refused(tmp_path: Path, key: str) -> None:
    store = FilesystemBlockStore(tmp_path, "http://x", secrets.token_bytes(32))
    with pytest.raises(BadRequest):
        store.put(key, b"data")
    with pytest.raises(BadRequest):
        store.presign_get(key)
    assert not list(tmp_path.parent.glob("escape")), "nothing written outside the root"


def test_restore_takes_its_delay_and_expires(tmp_path: Path) -> None:
    clock = FakeClock()
    store = FilesystemBlockStore(
        tmp_path, "http://x", secrets.token_bytes(32), restore_delay=3600, clock=clock
    )
    store.put("blocks/aa", b"cold")
    store.set_tier("blocks/aa", StorageTier.COLD)
    store.restore("blocks/aa", days=2)
    head = store.head("blocks/aa")
    assert head is not None and (head.restoring, head.restored) == (True, False)
    with pytest.raises(NotRestored):
        store.get("blocks/aa")
    clock.at += timedelta(hours=1)
    head = store.head("blocks/aa")
    assert head is not None and (head.restoring, head.restored) == (False, True)
    assert store.get("blocks/aa") == b"cold"
    clock.at += timedelta(days=2)  # the restored copy expired: cold again
    head = store.head("blocks/aa")
    assert head is not None and (head.tier, head.restoring, head.restored) == (
        StorageTier.COLD, False, False,
    )  # fmt: skip
    store.restore("blocks/aa", days=2)  # an expired restore is started again
    head = store.head("blocks/aa")
    assert head is not None and (head.restoring, head.restored) == (True, False)


def test_rejected_puts_leave_no_temp_files(
    served: tuple[FilesystemBlockStore, str],
) -> None:
    store, _ = served
    body = os.urandom(2000)
    req = store.presign_put("staging/u/bb", size=len(body), sha256=hashlib.sha256(body).digest())
    assert httpx.put(req.url, content=with_last_byte_flipped(body)).status_code == 400
    assert (
        httpx.put(req.url, content=body, headers={"x-amz-checksum-sha256": "AAAA"}).status_code
        == 400
    )
    assert not list((store.root / "tmp").iterdir())
    assert store.head("staging/u/bb") is None
    assert httpx.put(req.url, content=body, headers=dict(req.headers)).status_code == 200
    assert not list((store.root / "tmp").iterdir())


def test_oversized_put_is_413_before_reading(served: tuple[FilesystemBlockStore, str]) -> None:
    store, _ = served
    body = os.urandom(64 * 1024 + 1)
    req = store.presign_put("blocks/cc", size=len(body), sha256=hashlib.sha256(body).digest())
    r = httpx.put(req.url, content=body)
    assert r.status_code == 413
    assert store.head("blocks/cc") is None


def test_cold_object_url_needs_a_restore(served: tuple[FilesystemBlockStore, str]) -> None:
    store, _ = served
    store.put("blocks/dd", b"archived")
    store.set_tier("blocks/dd", StorageTier.COLD)
    url = store.presign_get("blocks/dd").url
    r = httpx.get(url)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "not_restored"
    store.restore("blocks/dd")
    assert httpx.get(url).content == b"archived"


def test_missing_object_and_unsigned_urls(served: tuple[FilesystemBlockStore, str]) -> None:
    store, base = served
    assert httpx.get(store.presign_get("blocks/nothing").url).status_code == 404
    assert httpx.get(base + "/blocks/blocks/dd").status_code == 403
    assert httpx.put(base + "/blocks/blocks/dd?size=1", content=b"x").status_code == 403
