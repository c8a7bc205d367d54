"""Seeded multi-client simulation with injected faults.

Three devices of one user (real folders, real engines, the real local cloud) take random
steps — create, edit, delete, rename, sync — while the network drops requests and loses
responses (a fault-injecting httpx transport) and devices "crash" (their engine is thrown
away mid-run and rebuilt from the state database). At the end every device syncs until
quiet. Invariants: all folders converge to the same tree, and no version is lost — every
content any device ever wrote is in a final folder or in the server's history/trash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from pathlib import Path

import httpx
import pytest

from tessera.metadata import Database
from tessera_client.api import Api, ApiError, RetryPolicy, ServerUnreachable
from tessera_client.config import Home
from tessera_client.engine import SyncEngine
from tests.e2e.conftest import PASSWORD, Cloud, snapshot
from tests.integration.conftest import usage_drift

pytestmark = pytest.mark.e2e


class FlakyTransport(httpx.HTTPTransport):
    """Drops a request before sending it, or loses the answer after the server acted."""

    def __init__(self, rng: random.Random, rate: float) -> None:
        super().__init__()
        self.rng, self.rate, self.enabled = rng, rate, True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.enabled and self.rng.random() < self.rate
        if fault and self.rng.random() < 0.5:
            raise httpx.ConnectError("injected: request dropped", request=request)
        response = super().handle_request(request)
        if fault:
            response.read()
            response.close()
            raise httpx.ReadError("injected: response lost", request=request)
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
        self.transport = FlakyTransport(rng, 0.0)
        self.engine = self._engine()

    def _engine(self) -> SyncEngine:
        api = Api(self.url, self.home, policy=RetryPolicy(attempts=2, base=0.01, cap=0.05))
        api.http = httpx.Client(transport=self.transport, timeout=30)
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
        return before - {p.read_bytes() for p in _files(self.folder)}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


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
            data = f"{dev.name} step {step} ".encode() + os.urandom(rng.choice([0, 10, 3000]))
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
            dev.transport.rate = rng.choice([0.0, 0.05, 0.2])
            removed |= dev.sync()
    # settle: no more faults, everyone syncs until quiet
    for dev in devices:
        dev.transport.rate = 0.0
    for _ in range(3):
        for dev in devices:
            before = {p.read_bytes() for p in _files(dev.folder)}
            result = dev.engine.run_once()
            removed |= before - {p.read_bytes() for p in _files(dev.folder)}
            assert not result.problems, (dev.name, result.problems)
    trees = [snapshot(d.folder) for d in devices]
    assert trees[0] == trees[1] == trees[2], "devices did not converge"

    server = _server_contents(api)
    api.close()
    for data in removed:
        assert _content_hash(data, tmp_path) in server, f"lost version {data[:30]!r}"
    with contextlib.closing(Database(inproc_cloud.conninfo)) as db:  # quota counters kept right
        assert usage_drift(db) == []
    for d in devices:
        d.engine.close()
