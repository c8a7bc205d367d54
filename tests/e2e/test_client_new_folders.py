"""New folders: one a commit creates anyway costs no /v1/create_folder; an empty one does."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tessera_client.api import Api
from tessera_client.config import Home
from tessera_client.engine import SyncEngine
from tests.e2e.conftest import Cloud, sign_in

pytestmark = pytest.mark.e2e


def _device(cloud: Cloud, email: str, root: Path, name: str) -> tuple[Home, Path]:
    folder = root / f"folder-{name}"
    folder.mkdir(parents=True)
    return sign_in(cloud, email, Home(root / f"home-{name}"), name), folder


def _engine(cloud: Cloud, home: Home, folder: Path, seen: list[str]) -> SyncEngine:
    api = Api(cloud.url, home)
    api.http = httpx.Client(
        timeout=30, event_hooks={"request": [lambda r: seen.append(r.url.path)]}
    )
    return SyncEngine(home, home.load_settings(), folder, api, allow_mass_delete=True)


def test_folders_created_by_commits_and_empty_ones(inproc_cloud: Cloud, tmp_path: Path) -> None:
    email = inproc_cloud.user()
    home_a, folder_a = _device(inproc_cloud, email, tmp_path, "A")
    (folder_a / "docs" / "deep").mkdir(parents=True)
    (folder_a / "docs" / "deep" / "f.txt").write_bytes(b"inside")
    (folder_a / "docs" / "g.txt").write_bytes(b"beside")
    (folder_a / "docs" / "empty").mkdir()
    (folder_a / "alone").mkdir()
    seen: list[str] = []
    engine = _engine(inproc_cloud, home_a, folder_a, seen)
    try:
        engine.run_once()
        # only the folders no commit creates were asked for one by one
        assert seen.count("/v1/create_folder") == 2
        seen.clear()
        engine.run_once()  # the state agrees with the server: nothing more to do
        assert "/v1/create_folder" not in seen and "/v1/commit_batch" not in seen
        assert {e.path for e in engine.state.base_tree().values()} >= {
            "docs",
            "docs/deep",
            "docs/empty",
            "alone",
        }
    finally:
        engine.close()

    home_b, folder_b = _device(inproc_cloud, email, tmp_path, "B")
    engine_b = _engine(inproc_cloud, home_b, folder_b, [])
    try:
        engine_b.run_once()
    finally:
        engine_b.close()
    assert (folder_b / "docs" / "deep" / "f.txt").read_bytes() == b"inside"
    assert (folder_b / "docs" / "g.txt").read_bytes() == b"beside"
    assert (folder_b / "docs" / "empty").is_dir() and (folder_b / "alone").is_dir()
