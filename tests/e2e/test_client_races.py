"""A device acting on what it saw at its last pull, while another device changed the same
thing since: the daemon's rounds woken by local events skip the pull, so these races are
the daemon's everyday case. Driven in-process (`round(pull=False)`) for exact timing;
nothing another device did may be lost."""

from __future__ import annotations

import shutil

from tessera_client.engine import SyncEngine

from .conftest import snapshot


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
