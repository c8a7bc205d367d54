"""A device acting on what it saw at its last pull, while another device changed the same
thing since: the daemon's rounds woken by local events skip the pull, so these races are
the daemon's everyday case. Driven in-process (`round(pull=False)`) for exact timing;
nothing another device did may be lost."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera_client.api import Api, RetryPolicy
from tessera_client.config import Home
from tessera_client.engine import SyncEngine

from .conftest import PASSWORD, Cloud, snapshot


@pytest.fixture
def engines(inproc_cloud: Cloud, tmp_path: Path) -> Iterator[tuple[SyncEngine, SyncEngine]]:
    """Two devices of one user, as sync engines in this process."""
    email = inproc_cloud.user()
    made = []
    for name in ("A", "B"):
        home = Home(tmp_path / f"home-{name}")
        api = Api(inproc_cloud.url, home)
        api.login(email, PASSWORD)
        api.close()
        settings = home.load_settings()
        settings.server_url, settings.device_name = inproc_cloud.url, name
        home.save_settings(settings)
        folder = tmp_path / f"folder-{name}"
        folder.mkdir()
        policy = RetryPolicy(attempts=2, base=0.01, cap=0.05)
        made.append(SyncEngine(home, settings, folder, Api(inproc_cloud.url, home, policy=policy)))
    yield made[0], made[1]
    for engine in made:
        engine.close()


def test_a_rename_racing_an_edit_elsewhere_keeps_the_edit(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    a, b = engines
    (a.folder / "doc.txt").write_text("v1")
    a.run_once()
    b.run_once()
    (b.folder / "doc.txt").write_text("v2, B's edit")
    b.run_once()
    (a.folder / "doc.txt").rename(a.folder / "doc2.txt")
    a.round(pull=False)  # moves the file on the server: it is at B's rev there now
    a.run_once()
    b.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {"doc2.txt": b"v2, B's edit"}


def test_a_folder_deleted_here_keeps_what_another_device_added_to_it(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    a, b = engines
    (a.folder / "proj").mkdir()
    (a.folder / "proj" / "old.txt").write_text("old")
    a.run_once()
    b.run_once()
    (b.folder / "proj" / "new.txt").write_text("B's new work")
    b.run_once()
    shutil.rmtree(a.folder / "proj")
    a.round(pull=False)  # deletes old.txt; the folder is not empty on the server
    a.run_once()
    b.run_once()
    assert (
        snapshot(a.folder) == snapshot(b.folder) == {"proj": None, "proj/new.txt": b"B's new work"}
    )
