"""The upload pipeline against the real local cloud (HTTP): files are committed while later
blocks are still being sent, and a crash between the two loses nothing."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.api.models import FileEntry
from tessera.blocks import BlockRef, FileManifest, scan_file
from tessera_client import transfer
from tessera_client.api import Api, ApiError
from tessera_client.config import Home
from tessera_client.engine import SyncEngine
from tessera_client.fs import TEMP_PREFIX, RealFilesystem, SafeFilesystem
from tessera_client.planner import Entry, EntryKind
from tessera_client.scanner import Scanner
from tessera_client.state import StateDB
from tessera_client.transfer import Transfers, TransferStats, UploadItem, UploadResult

from .conftest import Cloud, Device, make_device

pytestmark = pytest.mark.e2e


class RecordingApi(Api):
    """The real client API, noting when block PUTs and commits start (and failing a PUT
    on request)."""

    def __init__(
        self, server: str, home: Home, fail_put_after: int | None = None, latency: float = 0.02
    ) -> None:
        super().__init__(server, home)
        self.latency = latency  # a block store's, so windows overlap commits
        self.log: list[tuple[str, float]] = []
        self.fail_put_after = fail_put_after
        # the first `slow_commits` commits wait until `puts_before_commits` PUTs are done
        self.slow_commits, self.puts_before_commits = 0, 0
        self._puts_done = 0
        self._enough_puts = threading.Event()
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    def call(self, route: str, *args: Any, **kwargs: Any) -> Any:
        if not route.startswith("/v1/commit"):
            return super().call(route, *args, **kwargs)
        with self._lock:
            earlier = sum(1 for kind, _ in self.log if kind == "commit")
            self.log.append(("commit", time.monotonic()))
        if earlier < self.slow_commits:
            assert self._enough_puts.wait(30), "the PUTs a slow commit waits for never came"
        answer = super().call(route, *args, **kwargs)
        with self._lock:
            self.log.append(("committed", time.monotonic()))
        return answer

    def transfer(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None = None
    ) -> httpx.Response:
        with self._lock:
            puts = sum(1 for kind, _ in self.log if kind == "put")
            self.log.append(("put", time.monotonic()))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.fail_put_after is not None and puts >= self.fail_put_after:
                raise ApiError(503, "unavailable", "the block store is down", {})
            time.sleep(self.latency)
            answer = super().transfer(method, url, headers, content)
            with self._lock:
                self._puts_done += 1
                if self._puts_done >= self.puts_before_commits:
                    self._enough_puts.set()
            return answer
        finally:
            with self._lock:
                self.in_flight -= 1


def _items(device: Device, count: int) -> list[UploadItem]:
    fs = SafeFilesystem(RealFilesystem(device.folder))
    items = []
    for i in range(count):
        rel = f"f{i:02d}.bin"
        device.write(rel, os.urandom(20_000 + i))
        items.append(UploadItem(rel, scan_file(device.folder / rel), fs.lstat(rel), None, 0))
    return items


def _listed(api: Api) -> set[str]:
    entries = api.call("/v1/list_folder", {"path": "", "recursive": True})["entries"]
    return {e["path_display"].lstrip("/") for e in entries}


def _transfers(device: Device, api: Api) -> Transfers:
    device.home.mkdir(parents=True, exist_ok=True)
    fs = SafeFilesystem(RealFilesystem(device.folder))
    return Transfers(api, fs, StateDB(device.home / "state.db"), device=device.name, threads=4)


def _upload(device: Device, api: Api, items: list[UploadItem]) -> list[UploadResult]:
    """One upload through fresh `Transfers`, closed after."""
    xfer = _transfers(device, api)
    try:
        return xfer.upload(items)
    finally:
        xfer.close()


def test_files_are_committed_while_later_blocks_upload(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "WINDOW_BLOCKS", 2)
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = RecordingApi(inproc_cloud.url, Home(a.home))
    items = _items(a, 8)
    results = _upload(a, api, items)
    assert sorted(r.item.path for r in results if r.entry is not None) == [i.path for i in items]
    first_commit = min(t for kind, t in api.log if kind == "commit")
    last_put = max(t for kind, t in api.log if kind == "put")
    assert first_commit < last_put, "every PUT finished before the first commit started"
    assert _listed(api) == {i.path for i in items}
    api.close()


def test_results_are_handed_over_while_later_windows_upload(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller records committed files as their commits come back (on its own thread),
    not all of them after the last window: that work used to be the sync's tail."""
    monkeypatch.setattr(transfer, "WINDOW_BLOCKS", 2)
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = RecordingApi(inproc_cloud.url, Home(a.home), latency=0.1)
    items = _items(a, 10)
    handed: list[tuple[str, float, int]] = []
    xfer = _transfers(a, api)
    try:
        results = xfer.upload(
            items,
            on_result=lambda r: handed.append(
                (r.item.path, time.monotonic(), threading.get_ident())
            ),
        )
    finally:
        xfer.close()
    assert [path for path, _, _ in handed] == [r.item.path for r in results]
    assert sorted(path for path, _, _ in handed) == [i.path for i in items]
    assert {thread for _, _, thread in handed} == {threading.get_ident()}
    last_put = max(t for kind, t in api.log if kind == "put")
    assert min(t for _, t, _ in handed) < last_put, "no result was handed over before the end"
    api.close()


def test_the_next_window_is_sent_before_the_last_one_is_done(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows of two blocks, four senders, a slow block store: when a window's PUTs are
    queued only once the previous window is done, no more than two are ever in flight."""
    monkeypatch.setattr(transfer, "WINDOW_BLOCKS", 2)
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = RecordingApi(inproc_cloud.url, Home(a.home), latency=0.3)
    xfer = _transfers(a, api)
    try:
        results = xfer.upload(_items(a, 12))
    finally:
        xfer.close()
    assert all(r.entry is not None for r in results)
    assert api.most_in_flight > 2
    api.close()


def test_slow_commits_do_not_hold_up_the_next_and_later_windows_go_together(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two commits may be in flight: the second window's commit starts while the first
    is still out. While both are out, the windows that finish wait and are committed
    together; results are still handed over in order."""
    monkeypatch.setattr(transfer, "WINDOW_BLOCKS", 2)
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = RecordingApi(inproc_cloud.url, Home(a.home), latency=0.05)
    items = _items(a, 10)  # five windows of two files
    # the first two commits come back only once every window is sent, so windows 3-5 are
    # all done while both are out, however slow this machine is
    api.slow_commits, api.puts_before_commits = 2, len(items)
    handed: list[str] = []
    xfer = _transfers(a, api)
    try:
        results = xfer.upload(items, on_result=lambda r: handed.append(r.item.path))
    finally:
        xfer.close()
    assert handed == [i.path for i in items] == [r.item.path for r in results]
    assert all(r.entry is not None for r in results)
    starts = [t for kind, t in api.log if kind == "commit"]
    first_back = min(t for kind, t in api.log if kind == "committed")
    assert starts[1] < first_back, "the second commit waited for the first"
    assert len(starts) == 3, "the windows that finished meanwhile were not committed together"
    assert _listed(api) == {i.path for i in items}
    api.close()


def test_a_commits_files_are_recorded_in_one_state_transaction(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's records of one commit's files are written together: a reader of the
    state database sees none of a commit's files until it has seen all of them."""
    monkeypatch.setattr(transfer, "WINDOW_BLOCKS", 4)
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = RecordingApi(inproc_cloud.url, Home(a.home))
    items = _items(a, 8)
    xfer = _transfers(a, api)
    reader = sqlite3.connect(a.home / "state.db")
    recorded: list[tuple[int, int]] = []  # (files recorded, files a reader sees)

    def record(r: UploadResult) -> None:
        assert r.entry is not None
        xfer.state.put_base(Entry(r.item.path, EntryKind.FILE, r.entry.content_hash))
        (seen,) = reader.execute("SELECT count(*) FROM base").fetchone()
        recorded.append((len(recorded) + 1, seen))

    try:
        xfer.upload(items, on_result=record)
    finally:
        xfer.close()
        reader.close()
    assert len(recorded) == len(items)
    assert any(seen < done for done, seen in recorded), recorded
    assert xfer.state.base_tree().keys() == {i.path for i in items}
    api.close()


def test_a_failure_mid_upload_keeps_the_files_already_committed(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "WINDOW_BLOCKS", 2)
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = RecordingApi(inproc_cloud.url, Home(a.home), fail_put_after=4)
    items = _items(a, 8)
    xfer = _transfers(a, api)
    handed: list[str] = []
    with pytest.raises(ApiError):
        xfer.upload(items, on_result=lambda r: handed.append(r.item.path))
    xfer.close()
    # windows of two blocks: the first two windows were sent and committed, the third failed
    assert _listed(api) == {f"f{i:02d}.bin" for i in range(4)}
    # and the caller heard of those commits before the error, so it records them
    assert sorted(handed) == [f"f{i:02d}.bin" for i in range(4)]
    # the next round plans only the files the server lacks, and sends just their blocks
    api.fail_put_after = None
    api.log.clear()
    xfer = _transfers(a, api)
    try:
        results = xfer.upload(items[4:])
    finally:
        xfer.close()
    assert all(r.entry is not None for r in results)
    assert sum(1 for kind, _ in api.log if kind == "put") == 4
    assert _listed(api) == {i.path for i in items}
    api.close()


def test_a_file_whose_shared_block_was_to_come_from_a_changed_file_gets_a_result(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """Two files share a block, sent once, read from the first. When the first changed
    before its read, the block never went and the second file was left with no result:
    a round that reports nothing to do next, with a file not uploaded."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = RecordingApi(inproc_cloud.url, Home(a.home), latency=0.0)
    fs = SafeFilesystem(RealFilesystem(a.folder))
    same = os.urandom(30_000)
    items = []
    for rel in ("first.bin", "second.bin"):
        a.write(rel, same)
        items.append(UploadItem(rel, scan_file(a.folder / rel), fs.lstat(rel), None, 0))
    a.write("first.bin", os.urandom(30_000))  # after its scan: its block reads differently
    results = _upload(a, api, items)
    assert sorted((r.item.path, r.status) for r in results) == [
        ("first.bin", 0),
        ("second.bin", 0),
    ]
    api.close()


class OutageApi(RecordingApi):
    """The server answering 503 (after the client's own retries) to the first `down`
    calls of one route."""

    def __init__(self, server: str, home: Home, route: str, down: int) -> None:
        super().__init__(server, home, latency=0.0)
        self.route, self.down, self.calls = route, down, 0

    def call(self, route: str, *args: Any, **kwargs: Any) -> Any:
        if route == self.route:
            self.calls += 1
            if self.calls <= self.down:
                raise ApiError(503, "unavailable", "try again shortly", {})
        return super().call(route, *args, **kwargs)


def test_a_commit_the_server_could_not_take_keeps_its_sent_blocks(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A 503 is no refusal: the session (its blocks sent, its idempotency key) stays, and
    the next round commits it without sending a block again. Dropped, every block of a
    large file went up again."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = OutageApi(inproc_cloud.url, Home(a.home), "/v1/commit", down=1)
    [item] = _items(a, 1)
    xfer = _transfers(a, api)
    try:
        [failed] = xfer.upload([item])
        assert failed.entry is None and failed.status == 503
        puts = sum(1 for kind, _ in api.log if kind == "put")
        assert puts > 0
        [done] = xfer.upload([item])
    finally:
        xfer.close()
    assert done.entry is not None
    assert sum(1 for kind, _ in api.log if kind == "put") == puts  # nothing sent again
    assert _listed(api) == {item.path}
    api.close()


def test_an_outage_at_upload_start_is_not_retried_file_by_file(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A batch refused for one bad file is retried a file at a time; one the server could
    not take at all (5xx after every retry) is not: each file would wait out the same
    retries again, for hours on a batch of a thousand."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = OutageApi(inproc_cloud.url, Home(a.home), "/v1/uploads", down=100)
    items = _items(a, 5)
    results = _upload(a, api, items)
    assert api.calls == 1
    assert sorted(r.status for r in results) == [503] * 5
    api.close()


def _edited_elsewhere(
    device: Device, api: Api, size: int, at: int
) -> tuple[FileEntry, bytes, bytes]:
    """A `size`-byte file whose byte `at` another device changed: that version committed
    as `f.bin`, which is then gone here, and the version before in `copy.bin` (the local
    one a conflict moved aside). The server's entry, the old bytes and the new."""
    old = os.urandom(size)
    new = bytearray(old)
    new[at] ^= 0xFF
    device.write("f.bin", bytes(new))
    fs = SafeFilesystem(RealFilesystem(device.folder))
    item = UploadItem("f.bin", scan_file(device.folder / "f.bin"), fs.lstat("f.bin"), None, 0)
    [uploaded] = _upload(device, api, [item])
    assert uploaded.entry is not None
    (device.folder / "f.bin").unlink()
    device.write("copy.bin", old)
    return uploaded.entry, old, bytes(new)


def test_a_download_reads_only_the_blocks_the_local_file_still_holds(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download takes the blocks it shares with the local file from disk (here a
    conflict's copy); the file changing between the scan and the read costs only the
    blocks that changed, fetched: the result is the server's version all the same."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = Api(inproc_cloud.url, Home(a.home))
    uploaded, old, new = _edited_elsewhere(a, api, 12 * 1024 * 1024, at=6 * 1024 * 1024)
    before = scan_file(a.folder / "copy.bin")
    xfer = _transfers(a, api)
    xfer.state.put_base(Entry("f.bin", EntryKind.FILE, before.content_hash, len(old)),
                        [b.id for b in before.blocks])  # fmt: skip

    def scanned_then_changed(path: Path) -> object:  # (or no scan: see below)
        manifest = scan_file(path)
        with open(path, "r+b") as f:  # its first block changes after the scan
            f.write(b"\0" * 10)
        return manifest

    monkeypatch.setattr(transfer, "scan_file", scanned_then_changed)
    try:
        xfer.download("f.bin", uploaded.file_id, uploaded.rev, "", None,
                      mode_from="copy.bin")  # fmt: skip
    finally:
        xfer.close()
        api.close()
    assert (a.folder / "f.bin").read_bytes() == new
    stats = xfer.stats
    assert stats.blocks_reused >= len(before.blocks) - 3 and stats.blocks_down >= 2, stats
    assert stats.block_bytes_down + stats.block_bytes_reused == len(new)


def test_a_download_given_the_local_files_scan_reads_it_no_more(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conflict has just scanned the file it moves aside: the download takes that scan
    instead of reading the whole file again (nor needs a synced version to predict it)."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = Api(inproc_cloud.url, Home(a.home))
    uploaded, _, new = _edited_elsewhere(a, api, 8 * 1024 * 1024, at=-100)
    scanned = scan_file(a.folder / "copy.bin")

    def no_scan(path: Path) -> object:
        raise AssertionError(f"{path} read whole again")

    monkeypatch.setattr(transfer, "scan_file", no_scan)
    stats = _download_over_the_copy(a, api, uploaded, scanned)
    assert (a.folder / "f.bin").read_bytes() == new
    assert stats.blocks_reused >= len(scanned.blocks) - 2 and stats.blocks_down >= 1


def _download_over_the_copy(
    device: Device, api: Api, entry: FileEntry, manifest: FileManifest
) -> TransferStats:
    """Download `entry` into `f.bin` as a conflict does, given the scan of `copy.bin`; the
    transfer figures. `api` is closed after."""
    xfer = _transfers(device, api)
    try:
        xfer.download("f.bin", entry.file_id, entry.rev, "", None,
                      mode_from="copy.bin", local_manifest=manifest)  # fmt: skip
    finally:
        xfer.close()
        api.close()
    return xfer.stats


def _haves_asked(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[list[str] | None]:
    """What each `/v1/download` request through `api` said the device holds, from now on."""
    asked: list[list[str] | None] = []
    raw = api.raw

    def recorded(method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        if path == "/v1/download":
            asked.append(body.get("have"))
        return raw(method, path, body, **kw)

    monkeypatch.setattr(api, "raw", recorded)
    return asked


def test_a_download_says_what_it_holds_and_asks_again_when_it_does_not(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server is told the blocks this device should hold (so none, cold, waits for a
    restore); one the local copy no longer holds is asked for again alone, without saying
    so (cold, it is then restored), and the file comes whole all the same."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = Api(inproc_cloud.url, Home(a.home))
    uploaded, old, new = _edited_elsewhere(a, api, 6 * 1024 * 1024, at=-100)
    held = scan_file(a.folder / "copy.bin")
    (a.folder / "copy.bin").write_bytes(os.urandom(len(old)))  # not what it held any more
    asked = _haves_asked(api, monkeypatch)
    stats = _download_over_the_copy(a, api, uploaded, held)
    assert (a.folder / "f.bin").read_bytes() == new
    ids = sorted(b.id for b in held.blocks)
    assert asked[0] == ids and len(asked) > 1
    for again in asked[1:]:  # each asked alone: the first with the others still held
        assert again is None or len(set(ids) - set(again)) == 1
    assert stats.blocks_reused == 0


def test_a_download_with_nothing_to_read_here_lets_the_server_check_every_block(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synced version's file is gone: the server is told it holds nothing, so it
    checks every block (and restores the cold ones) at once, not one by one."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = Api(inproc_cloud.url, Home(a.home))
    uploaded, _, data = _edited_elsewhere(a, api, 6 * 1024 * 1024, at=-100)
    held = scan_file(a.folder / "copy.bin")
    (a.folder / "copy.bin").unlink()
    asked = _haves_asked(api, monkeypatch)
    xfer = _transfers(a, api)
    xfer.state.put_base(Entry("f.bin", EntryKind.FILE, held.content_hash, len(data)),
                        [b.id for b in held.blocks])  # fmt: skip
    try:
        xfer.download("f.bin", uploaded.file_id, uploaded.rev, "", None)
    finally:
        xfer.close()
        api.close()
    assert (a.folder / "f.bin").read_bytes() == data
    assert asked == [None]


def test_a_server_from_before_have_is_asked_without_it_from_then_on(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older server refuses the field (422 naming it): the request goes again without
    it, and later downloads leave it out (each request had been sent twice)."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = Api(inproc_cloud.url, Home(a.home))
    uploaded, _, new = _edited_elsewhere(a, api, 6 * 1024 * 1024, at=-100)
    held = scan_file(a.folder / "copy.bin")
    sent: list[bool] = []  # whether each download request said what it holds
    raw = api.raw
    refusal = {"error": {"code": "invalid", "message": "extra field",
                         "fields": [{"field": "have", "message": "not permitted"}]}}  # fmt: skip

    def older(method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        if path == "/v1/download" and body.get("from_block") == 0:
            sent.append("have" in body)
            if "have" in body:
                return httpx.Response(422, json=refusal)
        return raw(method, path, body, **kw)

    monkeypatch.setattr(api, "raw", older)
    xfer = _transfers(a, api)
    try:
        for _ in range(2):
            xfer.download("f.bin", uploaded.file_id, uploaded.rev, "", None,
                          mode_from="copy.bin", local_manifest=held)  # fmt: skip
            assert (a.folder / "f.bin").read_bytes() == new
            (a.folder / "f.bin").unlink()
    finally:
        xfer.close()
        api.close()
    assert sent == [True, False, False]  # refused, sent again without; then left out


def _uploaded(device: Device, api: Api, rel: str, data: bytes) -> FileEntry:
    """`data` committed as `rel`, last changed three days ago, then gone here: the server's
    entry."""
    written = time.time_ns() - 3 * 24 * 3600 * 10**9
    os.utime(device.write(rel, data), ns=(written, written))
    fs = SafeFilesystem(RealFilesystem(device.folder))
    [uploaded] = _upload(device, api, [UploadItem(rel, scan_file(device.folder / rel),
                                                  fs.lstat(rel), None, 0)])  # fmt: skip
    assert uploaded.entry is not None
    (device.folder / rel).unlink()
    return uploaded.entry


def _download(device: Device, api: Api, entry: FileEntry) -> TransferStats:
    """Download `entry` into `f.bin` through fresh `Transfers` (closed after): its figures."""
    xfer = _transfers(device, api)
    try:
        xfer.download("f.bin", entry.file_id, entry.rev, "", None)
    finally:
        xfer.close()
    return xfer.stats


def _blocks_of(device: Device, data: bytes) -> list[BlockRef]:
    """The blocks `data` is cut into."""
    scratch = device.home / "scratch.bin"
    scratch.write_bytes(data)
    return list(scan_file(scratch).blocks)


def _partials(device: Device) -> list[Path]:
    return [p for p in device.folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def _left_whole(
    device: Device, api: Api, entry: FileEntry, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Download `entry` into `f.bin` with its final rename failing: the partial download,
    whole, that it leaves (and the next round's scan keeps, though it was given the file's
    mtime, days old, before the rename)."""
    with monkeypatch.context() as m:
        m.setattr(
            RealFilesystem, "rename", lambda *_, **_kw: _raise(OSError(errno.EIO, "I/O error"))
        )
        with pytest.raises(OSError):
            _download(device, api, entry)
    Scanner(SafeFilesystem(RealFilesystem(device.folder))).scan({})
    [partial] = _partials(device)
    return partial


def _raise(error: BaseException) -> None:
    raise error


def test_a_file_made_where_a_download_lands_is_never_written_over(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new file's download looks that nothing is at its path, then renames into place:
    a file the user made in between was replaced, and lost. The rename refuses now; the
    download keeps its partial, and the next round plans from what is there."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = Api(inproc_cloud.url, Home(a.home))
    entry = _uploaded(a, api, "f.bin", os.urandom(1024 * 1024))
    check_local = Transfers._check_local

    def user_saves_meanwhile(xfer: Transfers, path: str, expect: Any) -> None:
        check_local(xfer, path, expect)
        (a.folder / path).write_bytes(b"the user's new work")

    monkeypatch.setattr(Transfers, "_check_local", user_saves_meanwhile)
    with pytest.raises(transfer.LocalChangedError):
        _download(a, api, entry)
    api.close()
    assert (a.folder / "f.bin").read_bytes() == b"the user's new work"
    assert len(_partials(a)) == 1  # the download, for the next try


def test_a_download_cut_off_resumes_where_it_stopped(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A download that fails past its retries keeps what it wrote: the next one (here
    through a new `Transfers`, as after a restart) fetches only the blocks it lacks."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    data = os.urandom(10 * 1024 * 1024)
    blocks = _blocks_of(a, data)
    api = Api(inproc_cloud.url, Home(a.home))
    entry = _uploaded(a, api, "f.bin", data)
    cut = RecordingApi(inproc_cloud.url, Home(a.home), fail_put_after=len(blocks) // 2, latency=0)
    with pytest.raises(ApiError):
        _download(a, cut, entry)
    cut.close()
    [partial] = _partials(a)
    held = partial.stat().st_size
    kept = [b for b in blocks if b.offset + b.size <= held]
    assert kept and held == sum(b.size for b in kept)  # whole blocks, in order
    assert not (a.folder / "f.bin").exists()
    stats = _download(a, api, entry)
    api.close()
    assert (a.folder / "f.bin").read_bytes() == data
    assert (stats.blocks_reused, stats.blocks_down) == (len(kept), len(blocks) - len(kept))
    assert _partials(a) == []


def test_a_download_told_to_stop_ends_at_its_next_block_and_resumes_later(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """Ctrl-C in `tessera get` of a folder waited for every file then downloading, to its
    end (gigabytes, minutes): the caller now sets `stop`, and each ends at its next block."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    data = os.urandom(10 * 1024 * 1024)
    blocks = _blocks_of(a, data)
    api = Api(inproc_cloud.url, Home(a.home))
    entry = _uploaded(a, api, "f.bin", data)
    stop = threading.Event()
    xfer = _transfers(a, api)
    xfer.progress = lambda _path, _n: stop.set()  # told to stop once a block is written
    try:
        with pytest.raises(transfer.DownloadStopped, match="stopped"):
            xfer.download("f.bin", entry.file_id, entry.rev, "", None, stopping=stop.is_set)
    finally:
        xfer.close()
    [partial] = _partials(a)
    assert partial.stat().st_size == blocks[0].size  # one block, kept for the next try
    stats = _download(a, api, entry)
    api.close()
    assert (a.folder / "f.bin").read_bytes() == data
    assert (stats.blocks_reused, stats.blocks_down) == (1, len(blocks) - 1)


def test_a_device_fetching_many_small_files_is_not_throttled(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """A small file is a `/v1/download` call, four at a time: the local gateway's bucket,
    API Gateway's dev stage figures (50/s, bursts of 100), refused a device's first sync of
    a few hundred files with 429s, and their waits held it to 50 files a second."""
    a, b = engines
    for i in range(300):
        (a.folder / f"f{i:03}.txt").write_text(f"file {i}")
    assert not a.run_once().problems
    statuses: list[int] = []  # of every answer, those its retries waited out too
    b.api.http.event_hooks["response"].append(lambda r: statuses.append(r.status_code))
    assert not b.run_once().problems
    assert len(list(b.folder.glob("f*.txt"))) == 300
    assert len(statuses) > 300 and 429 not in statuses


def test_a_daemon_told_to_stop_ends_its_downloads_at_their_next_block(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """SIGINT or SIGTERM stops the daemon (`SyncEngine.stop`), which went on downloading
    every file of its round to its end: minutes for large ones. Not a problem to report:
    the partial download is taken up at the next start."""
    a, b = engines
    data = os.urandom(10 * 1024 * 1024)
    (a.folder / "big.bin").write_bytes(data)
    a.run_once()
    b.transfers.progress = lambda _path, _n: b.stop()  # told to stop once a block is written
    assert b.round().problems == []
    assert not (b.folder / "big.bin").exists()
    [partial] = [p for p in b.folder.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert 0 < partial.stat().st_size < len(data)


def test_a_partial_of_another_version_gives_what_still_matches(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partial download left by an older version: blocks the new one has at the same
    offsets stay, the rest is fetched, and what the partial held past the new, shorter,
    version is cut off."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = Api(inproc_cloud.url, Home(a.home))
    old = os.urandom(12 * 1024 * 1024)
    new = bytearray(old[: 9 * 1024 * 1024])
    new[2 * 1024 * 1024] ^= 0xFF
    partial = _left_whole(a, api, _uploaded(a, api, "f.bin", old), monkeypatch)
    blocks = _blocks_of(a, bytes(new))
    same = [
        b for b in blocks if old[b.offset : b.offset + b.size] == new[b.offset : b.offset + b.size]
    ]
    assert 3 <= len(same) < len(blocks)
    stats = _download(a, api, _uploaded(a, api, "g.bin", bytes(new)))
    api.close()
    assert (a.folder / "f.bin").read_bytes() == new and not partial.exists()
    assert (stats.blocks_reused, stats.blocks_down) == (len(same), len(blocks) - len(same))


def test_a_damaged_partial_gives_up_only_its_damaged_block(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each block taken from a partial download is hashed again: one byte changed there
    (a bad sector, a torn write when the process was killed) costs that block, fetched."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = Api(inproc_cloud.url, Home(a.home))
    data = os.urandom(6 * 1024 * 1024)
    entry = _uploaded(a, api, "f.bin", data)
    partial = _left_whole(a, api, entry, monkeypatch)
    with open(partial, "r+b") as f:
        f.seek(3 * 1024 * 1024)
        f.write(b"\0")
    stats = _download(a, api, entry)
    api.close()
    assert (a.folder / "f.bin").read_bytes() == data
    assert stats.blocks_down == 1 and stats.blocks_reused == len(_blocks_of(a, data)) - 1


def test_a_partial_another_download_writes_is_left_to_it(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """Two downloads of one path at once (two clients on one folder): the second finds the
    partial download held, writes a fresh temp file, and touches nothing of the first's."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = Api(inproc_cloud.url, Home(a.home))
    data = os.urandom(3 * 1024 * 1024)
    entry = _uploaded(a, api, "f.bin", data)
    fs = SafeFilesystem(RealFilesystem(a.folder))
    rel, held = fs.open_partial("", transfer._partial_key("f.bin"))
    with held:
        held.write(b"the other download's first block")
        held.flush()
        stats = _download(a, api, entry)
    api.close()
    assert (a.folder / "f.bin").read_bytes() == data
    assert stats.blocks_reused == 0
    assert (a.folder / rel).read_bytes() == b"the other download's first block"
    assert [p.name for p in _partials(a)] == [rel]


def test_a_file_rewritten_whole_elsewhere_is_not_read_here(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synced version's blocks are named to the server from the state database, and
    the local file is chunked only when the download wants one of them: a file rewritten
    whole elsewhere shares none, and was read whole here for nothing."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = Api(inproc_cloud.url, Home(a.home))
    old, new = os.urandom(6 * 1024 * 1024), os.urandom(6 * 1024 * 1024)
    entry = _uploaded(a, api, "g.bin", new)
    a.write("f.bin", old)
    synced = _blocks_of(a, old)
    xfer = _transfers(a, api)
    xfer.state.put_base(Entry("f.bin", EntryKind.FILE, "b3:synced", len(old)),
                        [b.id for b in synced])  # fmt: skip
    asked = _haves_asked(api, monkeypatch)

    def no_read(path: Path) -> object:
        raise AssertionError(f"{path} read whole")

    monkeypatch.setattr(transfer, "scan_file", no_read)
    try:
        xfer.download("f.bin", entry.file_id, entry.rev, "", xfer.fs.lstat("f.bin"))
    finally:
        xfer.close()
        api.close()
    assert (a.folder / "f.bin").read_bytes() == new
    assert asked[0] == sorted(b.id for b in synced)  # told, without reading the file
    assert xfer.stats.blocks_reused == 0


def test_a_download_over_a_copy_names_the_copys_blocks_not_the_synced_ones(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a copy (a viewer's refused edit moved aside) the blocks named to the server
    are the copy's own, read from it: the synced version's, from the state database, are
    not what it holds (each would have been asked for again, one by one)."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = Api(inproc_cloud.url, Home(a.home))
    uploaded, old, _ = _edited_elsewhere(a, api, 4 * 1024 * 1024, at=-100)
    synced = _blocks_of(a, os.urandom(len(old)))  # another version than the copy's
    xfer = _transfers(a, api)
    xfer.state.put_base(Entry("f.bin", EntryKind.FILE, "b3:synced", len(old)),
                        [b.id for b in synced])  # fmt: skip
    asked = _haves_asked(api, monkeypatch)
    try:
        xfer.download("f.bin", uploaded.file_id, uploaded.rev, "", None, mode_from="copy.bin")
    finally:
        xfer.close()
        api.close()
    assert asked[0] == sorted(b.id for b in _blocks_of(a, old))


def test_a_partial_stays_held_until_it_is_in_place(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download renames its partial into place while it still holds it: closed first,
    another client's download could open it in between and write into the file then put
    in place."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    api = Api(inproc_cloud.url, Home(a.home))
    entry = _uploaded(a, api, "f.bin", os.urandom(2 * 1024 * 1024))
    other = SafeFilesystem(RealFilesystem(a.folder))  # another client's view of the folder
    tried: list[int] = []
    rename = RealFilesystem.rename

    def rename_after_a_try(fs: RealFilesystem, src: str, dst: str, **kw: bool) -> None:
        try:
            other.open_partial("", transfer._partial_key("f.bin"))[1].close()
            tried.append(0)
        except OSError as e:
            tried.append(e.errno or 0)
        rename(fs, src, dst, **kw)

    monkeypatch.setattr(RealFilesystem, "rename", rename_after_a_try)
    _download(a, api, entry)
    api.close()
    assert tried == [errno.EBUSY]
    # nor did the other's try change it: its final bits (a new file's) were set already
    new_file = 0o644 & ~os.umask(os.umask(0o022))
    assert stat.S_IMODE((a.folder / "f.bin").stat().st_mode) == new_file
