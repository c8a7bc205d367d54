"""Seeded multi-client simulation with injected faults.

Three devices of one user (real folders, real engines, the real local cloud) take random
steps — create, edit, delete, rename, sync — while the network drops requests and loses
responses, to the API and to the block store alike (a fault-injecting httpx transport, and
the same faults in the block client), and devices "crash" (their engine is thrown away
between runs and rebuilt from the state database). At the end every device syncs until
quiet. Invariants: all folders converge to the same tree; no version is lost — every
content a sync took off a disk, and every content a device ever recorded as synced, is in
the server's history or trash; no version names a block the server does not hold; and
the quota counters are right. The contents come from the seed; the faults do too, but
the transfer threads draw them in whatever order they run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
from pathlib import Path

import httpx
import pytest

from tessera.metadata import Database
from tessera_client.api import Api, ApiError, RetryPolicy, ServerUnreachable
from tessera_client.blockhttp import BlockHttp
from tessera_client.config import Home
from tessera_client.engine import SyncEngine
from tessera_client.fs import FOLDER_MARKER
from tessera_client.planner import EntryKind
from tests.e2e.conftest import PASSWORD, Cloud, snapshot
from tests.integration.conftest import usage_drift

pytestmark = pytest.mark.e2e


class Faults:
    """Which requests fail, and how: dropped before they are sent, or their answer lost
    after the server (or the block store) acted on them."""

    def __init__(self, rng: random.Random, rate: float) -> None:
        self.rng, self.rate = rng, rate
        self._lock = threading.Lock()  # drawn by the transfer threads too

    def draw(self) -> str | None:
        """ "drop", "lose" or None (no fault) for the next request."""
        with self._lock:
            if self.rng.random() >= self.rate:
                return None
            return "drop" if self.rng.random() < 0.5 else "lose"


class FlakyTransport(httpx.HTTPTransport):
    """The API's requests, with `faults`."""

    def __init__(self, faults: Faults) -> None:
        super().__init__()
        self.faults = faults

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.faults.draw()
        if fault == "drop":
            raise httpx.ConnectError("injected: request dropped", request=request)
        response = super().handle_request(request)
        if fault == "lose":
            response.read()
            response.close()
            raise httpx.ReadError("injected: response lost", request=request)
        return response


class FlakyBlockHttp(BlockHttp):
    """The block store's requests (presigned PUTs and GETs), with `faults`."""

    def __init__(self, fallback: httpx.Client, faults: Faults) -> None:
        super().__init__(fallback, timeout=30)
        self.faults = faults

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        fault = self.faults.draw()
        if fault == "drop":
            raise httpx.ConnectError("injected: block request dropped")
        response = super().request(method, url, headers=headers, content=content)
        if fault == "lose":
            raise httpx.ReadError("injected: block answer lost")
        return response


class SimDevice:
    def __init__(self, name: str, root: Path, cloud: Cloud, email: str, rng: random.Random) -> None:
        self.name, self.rng = name, rng
        self.home = Home(root / f"home-{name}")
        self.folder = root / f"folder-{name}"
        self.folder.mkdir(parents=True)
        self.url = cloud.url
        api = Api(cloud.url, self.home)
        api.login(email, PASSWORD)
        api.call("/v1/account", method="GET")
        api.close()
        settings = self.home.load_settings()
        settings.server_url, settings.device_name = cloud.url, name
        settings.outage_wait_s = 0.0
        self.home.save_settings(settings)
        self.faults = Faults(rng, 0.0)
        self.synced: set[str] = set()  # every content hash this device recorded as synced
        self.engine = self._engine()

    def _engine(self) -> SyncEngine:
        api = Api(self.url, self.home, policy=RetryPolicy(attempts=2, base=0.01, cap=0.05))
        api.http.close()
        api.http = httpx.Client(transport=FlakyTransport(self.faults), timeout=30)
        api.blocks.close()
        api.blocks = FlakyBlockHttp(api.http, self.faults)
        return SyncEngine(
            self.home, self.home.load_settings(), self.folder, api, allow_mass_delete=True
        )

    def crash(self) -> None:
        """Throw the engine away (as if killed) and start a new one from the state db."""
        self.engine.close()
        self.engine = self._engine()

    def sync(self) -> set[bytes]:
        """One `--once` run (faults allowed); the contents it took off the disk."""
        before = {p.read_bytes() for p in _files(self.folder)}
        with contextlib.suppress(ServerUnreachable, ApiError):
            self.engine.run_once(max_rounds=6)  # a failed run: the next one picks up the pieces
        self.note_synced()
        return before - {p.read_bytes() for p in _files(self.folder)}

    def note_synced(self) -> None:
        """Remember the content of every file the state database says is synced."""
        base = self.engine.state.base_tree().values()
        self.synced |= {e.content_hash for e in base if e.kind is EntryKind.FILE}


def _files(folder: Path) -> list[Path]:
    """The user's files: not the client's hidden marker of a synced folder (a device whose
    marker is gone pauses its deletions, rightly, until it is back: docs/client.md)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != FOLDER_MARKER)


def _server_contents(api: Api) -> set[str]:
    """Hashes of every version the server keeps: live files' and trashed files' histories."""
    queries: list[dict[str, str]] = []
    answer = api.call("/v1/list_folder", {"path": "", "recursive": True})
    while True:
        queries += [{"file_id": e["file_id"]} for e in answer["entries"] if e[".tag"] == "file"]
        if not answer["has_more"]:
            break
        answer = api.call("/v1/list_folder/continue", {"cursor": answer["cursor"]})
    trash = api.call("/v1/trash/list", {"path": ""})["entries"]
    queries += [{"file_id": e["file_id"]} for e in trash if e.get("kind", "file") == "file"]
    hashes: set[str] = set()
    for q in queries:
        revs = api.call("/v1/revisions", {**q, "limit": 100})["entries"]
        hashes |= {r["content_hash"] for r in revs}
    return hashes


def _dangling_blocks(db: Database) -> list[tuple[str, str]]:
    """(file id, block id) of each version's block the server holds no copy of: neither a
    canonical block (live, cold, restoring) nor the staged copy the version names."""
    with db.transaction() as store:
        rows = store.conn.execute(
            "SELECT v.file_id, v.block_id FROM version_blocks v"
            " LEFT JOIN blocks b ON b.block_id = v.block_id"
            "  AND b.state IN ('live', 'cold', 'restoring')"
            " LEFT JOIN upload_blocks u ON u.staged_key = v.staged_key"
            "  AND u.state IN ('staged', 'promoted', 'dropped')"
            " WHERE b.block_id IS NULL AND u.staged_key IS NULL"
        ).fetchall()
    return [(str(f), str(b)) for f, b in rows]


def _content_hash(data: bytes, tmp: Path) -> str:
    from tessera.blocks import scan_file

    f = tmp / ("h-" + hashlib.sha256(data).hexdigest())
    f.write_bytes(data)
    try:
        return scan_file(f).content_hash
    finally:
        f.unlink()


@pytest.mark.parametrize(
    "seed", [int(s) for s in os.environ.get("TESSERA_SIM_SEEDS", "1,2").split(",")]
)
def test_random_multi_device_history_converges_and_loses_nothing(
    inproc_cloud: Cloud, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    email = inproc_cloud.user()
    devices = [
        SimDevice(n, tmp_path, inproc_cloud, email, random.Random(seed * 10 + i))
        for i, n in enumerate(["d1", "d2", "d3"])
    ]
    names = ["a.txt", "b.md", "dir/c.bin", "dir/sub/d", "e f.txt", "Ü.txt"]
    api = Api(inproc_cloud.url, devices[0].home)
    removed: set[bytes] = set()  # contents a sync took off a disk: the server must hold them
    for step in range(45):
        dev = rng.choice(devices)
        action = rng.choice(
            ["write", "write", "write", "delete", "rename", "sync", "sync", "crash"]
        )
        files = _files(dev.folder)
        if action == "write":
            p = dev.folder / rng.choice(names)
            p.parent.mkdir(parents=True, exist_ok=True)
            data = f"{dev.name} step {step} ".encode() + rng.randbytes(rng.choice([0, 10, 3000]))
            p.write_bytes(data)
        elif action == "delete" and files:
            rng.choice(files).unlink()
        elif action == "rename" and files:
            src = rng.choice(files)
            dst = dev.folder / rng.choice(names)
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                src.rename(dst)
        elif action == "crash":
            dev.crash()
        else:
            dev.faults.rate = rng.choice([0.0, 0.05, 0.2])
            removed |= dev.sync()
    # settle: no more faults, everyone syncs until quiet
    for dev in devices:
        dev.faults.rate = 0.0
    for _ in range(3):
        for dev in devices:
            before = {p.read_bytes() for p in _files(dev.folder)}
            result = dev.engine.run_once()
            dev.note_synced()
            removed |= before - {p.read_bytes() for p in _files(dev.folder)}
            assert not result.problems, (dev.name, result.problems)
    trees = [snapshot(d.folder) for d in devices]
    assert trees[0] == trees[1] == trees[2], "devices did not converge"

    server = _server_contents(api)
    api.close()
    for data in removed:
        assert _content_hash(data, tmp_path) in server, f"lost version {data[:30]!r}"
    for dev in devices:  # what any device ever had synced is kept
        assert dev.synced <= server, (dev.name, dev.synced - server)
    with contextlib.closing(Database(inproc_cloud.conninfo)) as db:
        assert usage_drift(db) == []  # quota counters kept right
        assert _dangling_blocks(db) == []
    for d in devices:
        d.engine.close()
