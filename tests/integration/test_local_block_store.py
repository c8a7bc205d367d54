"""The filesystem block store beyond the port contract: safe keys, restore timing, temp
files, and its HTTP face through the gateway (413, cold objects)."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tessera.adapters.local import FilesystemBlockStore, NotRestored, block_store
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
    server.start(create_app(Gateway(block_store=store, max_block_body=64 * 1024)))
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
        "blocks/ab\n",  # `$` matches before a final newline
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
    flipped = with_last_byte_flipped(body)
    assert httpx.put(req.url, content=flipped, headers=dict(req.headers)).status_code == 400
    assert (
        httpx.put(req.url, content=body, headers={"x-amz-checksum-sha256": "AAAA"}).status_code
        == 403
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


def test_a_torn_restore_marker_does_not_break_the_block(tmp_path: Path) -> None:
    store = FilesystemBlockStore(tmp_path, "http://x", secrets.token_bytes(32))
    store.put("blocks/ee", b"archived")
    store.set_tier("blocks/ee", StorageTier.COLD)
    store.restore("blocks/ee")
    assert not list((tmp_path / "tmp").iterdir()), "the marker went through a temp file"
    marker = tmp_path / "restores" / "blocks/ee.json"
    marker.write_bytes(b"")  # what a crash mid-write left before markers were atomic
    head = store.head("blocks/ee")
    assert head is not None and (head.restoring, head.restored) == (False, False)
    store.restore("blocks/ee")  # starts again instead of failing on the torn marker
    assert store.get("blocks/ee") == b"archived"


def test_folders_made_for_a_write_are_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemBlockStore(tmp_path, "http://x", secrets.token_bytes(32))
    synced: list[Path] = []
    real = block_store._fsync_dir

    def recorded(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(block_store, "_fsync_dir", recorded)
    store.put("staging/up1/ff", b"data")
    # the new folders' entries, not only the object's, are on disk before the PUT is acked
    hot = tmp_path / "hot"
    assert synced == [hot, hot / "staging", hot / "staging" / "up1"]


def test_stale_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    FilesystemBlockStore(tmp_path, "http://x", secrets.token_bytes(32))
    stale, fresh = tmp_path / "tmp" / "put-stale", tmp_path / "tmp" / "put-fresh"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"an upload in flight in another process")
    old = time.time() - block_store.STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    FilesystemBlockStore(tmp_path, "http://x", secrets.token_bytes(32))
    assert not stale.exists()
    assert fresh.exists()


def test_a_block_gone_after_its_url_was_checked_is_404(
    served: tuple[FilesystemBlockStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = served
    store.put("blocks/gg", b"soon collected")
    url = store.presign_get("blocks/gg").url
    first = httpx.get(url)
    assert (first.status_code, first.headers["content-length"]) == (200, "14")
    assert httpx.head(url).status_code == 403  # signed for GET, as on S3
    checked = store.open_get

    def collected_meanwhile(key: str, query: Mapping[str, str]) -> Path:
        path = checked(key, query)
        store.delete(key)  # gc between the URL check and the read
        return path

    monkeypatch.setattr(store, "open_get", collected_meanwhile)
    r = httpx.get(url)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_earlier_versions_expire_after_their_days(tmp_path: Path) -> None:
    """As S3's `noncurrent-blocks` rule: a block's earlier versions are kept 30 days, then
    the next delete (hourly at most) removes them, and their folders with them."""
    clock = FakeClock()
    store = FilesystemBlockStore(tmp_path, "http://x", secrets.token_bytes(32), clock=clock)
    old, young = "blocks/" + "a" * 64, "blocks/" + "b" * 64
    store.put(old, b"old block")
    store.delete(old)  # the first delete: a pass (nothing to expire)
    clock.at += timedelta(minutes=30)
    store.put(young, b"young block")
    store.delete(young)
    clock.at += timedelta(days=29, hours=23, minutes=40)  # old: 30 days and 10 min
    assert [v.size for v in store.earlier_versions(old)] == [9]  # kept until a pass
    store.delete("blocks/" + "c" * 64)  # an hour since the last pass: a pass
    assert store.earlier_versions(old) == []
    assert not (tmp_path / "versions" / old).exists()
    assert [v.size for v in store.earlier_versions(young)] == [11]
    clock.at += timedelta(minutes=30)  # young is past its days now
    store.delete("blocks/" + "c" * 64)  # within the hour: no pass
    assert [v.size for v in store.earlier_versions(young)] == [11]
    assert store.expire_versions() == 1
    assert os.listdir(tmp_path / "versions") == []


def test_only_blocks_keep_earlier_versions(tmp_path: Path) -> None:
    """Staged copies are deleted once promoted: kept, they would double the disk each
    upload takes. And a store told to keep none keeps none."""
    store = FilesystemBlockStore(tmp_path / "a", "http://x", secrets.token_bytes(32))
    staged = "staging/" + "1" * 32 + "/00000000-" + "a" * 64
    store.put(staged, b"staged")
    store.delete(staged)
    assert store.earlier_versions(staged) == []
    none = FilesystemBlockStore(
        tmp_path / "b", "http://x", secrets.token_bytes(32), keep_versions_days=0
    )
    none.put("blocks/" + "a" * 64, b"block")
    none.delete("blocks/" + "a" * 64)
    assert none.earlier_versions("blocks/" + "a" * 64) == []


@pytest.mark.parametrize("version", ["../../hot/blocks/x", "latest", "0" * 16 + "-zz-hot"])
def test_a_version_id_not_the_stores_own_is_absent(tmp_path: Path, version: str) -> None:
    """A version id becomes a path: one of another shape is refused before any path is
    made of it, however it was got."""
    store = FilesystemBlockStore(tmp_path, "http://x", secrets.token_bytes(32))
    key = "blocks/" + "a" * 64
    store.put(key, b"block")
    store.delete(key)
    with pytest.raises(KeyError):
        store.copy(key, "blocks/" + "b" * 64, version=version)
    assert store.head("blocks/" + "b" * 64) is None


def test_an_overwrite_keeps_the_old_bytes_readable_until_it_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old object is linked into versions/, never moved out first: a reader racing
    the overwrite finds the old bytes or the new, never no object (S3's atomic PUT)."""
    store = FilesystemBlockStore(tmp_path, "http://x", secrets.token_bytes(32))
    key = "blocks/" + "a" * 64
    store.put(key, b"old")
    seen: list[bytes] = []
    rename = block_store._rename_durably

    def read_then_rename(src: Path, dst: Path) -> None:
        seen.append(store.get(key))
        rename(src, dst)

    monkeypatch.setattr(block_store, "_rename_durably", read_then_rename)
    store.put(key, b"new")
    assert seen == [b"old"] and store.get(key) == b"new"


def test_an_expiry_pass_racing_a_delete_loses_no_earlier_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An expiry pass removes empty version folders: one removed between the delete making
    it and linking into it left the delete keeping nothing."""
    store = FilesystemBlockStore(tmp_path, "http://x", secrets.token_bytes(32))
    key = "blocks/" + "a" * 64
    store.put(key, b"block")
    make_dirs = block_store._make_dirs
    raced: list[Path] = []

    def make_then_expire(path: Path) -> None:
        make_dirs(path)
        if path.parent.name == "blocks" and not raced:
            raced.append(path)
            store.expire_versions()  # the folder is empty: the pass removes it
            assert not path.exists()

    monkeypatch.setattr(block_store, "_make_dirs", make_then_expire)
    store.delete(key)
    assert raced and [v.size for v in store.earlier_versions(key)] == [5]


def test_a_full_disk_is_503_to_retry_later_not_a_500(
    served: tuple[FilesystemBlockStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's disk filling up mid-upload was a 500 `internal` with a traceback (a
    bug, to the client); it is the server out of room for a while: 503 + Retry-After, and
    the temp file goes."""
    store, _ = served
    body = os.urandom(2000)
    req = store.presign_put("staging/u/ff", size=len(body), sha256=hashlib.sha256(body).digest())

    def full(self: object, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(block_store._PutSink, "write", full)
    r = httpx.put(req.url, content=body, headers=dict(req.headers))
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
    assert "disk is full" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) >= 1
    assert not list((store.root / "tmp").iterdir()) and store.head("staging/u/ff") is None


def test_a_caller_hanging_up_mid_upload_is_no_error(
    served: tuple[FilesystemBlockStore, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A laptop that sleeps, a cancelled sync: logged as an unhandled error with its
    traceback, for an ordinary event."""
    store, _ = served
    body = os.urandom(4000)
    req = store.presign_put("staging/u/gg", size=len(body), sha256=hashlib.sha256(body).digest())
    target = urlsplit(req.url)
    head = (
        f"PUT {target.path}?{target.query} HTTP/1.1\r\nHost: {target.netloc}\r\n"
        f"Content-Length: {len(body)}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
        + "\r\n"
    ).encode()
    with (
        caplog.at_level(logging.ERROR),
        socket.create_connection((target.hostname, target.port)) as sock,
    ):
        sock.sendall(head + body[:1000])  # then hangs up
    deadline = time.monotonic() + 5
    while list((store.root / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert not list((store.root / "tmp").iterdir()) and store.head("staging/u/gg") is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("read", ["get", "copy"])
def test_an_object_gone_between_its_lookup_and_its_read_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """gc's delete or a tier move between the lookup and the read raised
    FileNotFoundError, which maintenance took for a store failure (S3: NoSuchKey); a
    moved object is looked up again in its new tier."""
    store = FilesystemBlockStore(tmp_path, "http://x", secrets.token_bytes(32))
    looked_up = store._readable_path
    store.put("blocks/mm", b"moved")
    store.put("blocks/gg", b"collected")

    def moved(key: str) -> None:
        store.set_tier(key, StorageTier.COLD)
        store.restore(key, days=1)

    after_lookup = {"blocks/mm": moved, "blocks/gg": store.delete}

    def meanwhile(key: str) -> Path:
        path = looked_up(key)
        if key in after_lookup:  # the first lookup only: then it moves, or goes
            after_lookup.pop(key)(key)
        return path

    monkeypatch.setattr(store, "_readable_path", meanwhile)
    if read == "get":
        assert store.get("blocks/mm") == b"moved"
        with pytest.raises(KeyError):
            store.get("blocks/gg")
    else:
        store.copy("blocks/mm", "staging/u/mm")
        assert store.get("staging/u/mm") == b"moved"
        with pytest.raises(KeyError):
            store.copy("blocks/gg", "staging/u/gg")
