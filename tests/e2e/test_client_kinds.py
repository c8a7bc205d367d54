"""A path that is a file on one device and a folder on another: the side that changed it
wins, and when both did, the local one is kept as a conflicted copy. Such a path used to be
skipped for good (the new side never synced) while `sync --once` said it was in sync."""

from __future__ import annotations

import shutil
from datetime import date

import pytest

from tessera_client.engine import SyncEngine

from .conftest import snapshot, synced_on_both

pytestmark = pytest.mark.e2e


def _copy(name: str, device: str) -> str:
    return f"{name} ({device}'s conflicted copy {date.today()})"


def test_a_file_replaced_by_a_folder_elsewhere_is_replaced_here(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    a, b = engines
    synced_on_both(a, b, "x", "the file")
    (a.folder / "x").unlink()
    (a.folder / "x").mkdir()
    (a.folder / "x" / "new.txt").write_text("in the folder now")
    a.run_once()
    result = b.run_once()
    assert result.problems == []
    assert (
        snapshot(b.folder)
        == snapshot(a.folder)
        == {
            "x": None,
            "x/new.txt": b"in the folder now",
        }
    )


def test_a_folder_replaced_by_a_file_here_goes_to_the_server(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    a, b = engines
    (a.folder / "x").mkdir()
    synced_on_both(a, b, "x/old.txt", "old")
    shutil.rmtree(b.folder / "x")
    (b.folder / "x").write_text("a file now")
    b.run_once()
    a.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {"x": b"a file now"}


def test_a_file_edited_there_and_made_a_folder_here_keeps_both(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """Neither side kept what both had: the local folder is set aside as a conflicted copy,
    the server's file takes the name, and the copy goes up with what it holds."""
    a, b = engines
    synced_on_both(a, b, "x", "v1")
    (a.folder / "x").write_text("A's edit")
    a.run_once()
    (b.folder / "x").unlink()
    (b.folder / "x").mkdir()
    (b.folder / "x" / "mine.txt").write_text("B's new work")
    b.run_once()
    a.run_once()
    copy = _copy("x", "B")
    expected = {"x": b"A's edit", copy: None, f"{copy}/mine.txt": b"B's new work"}
    assert snapshot(a.folder) == snapshot(b.folder) == expected
    assert [c.path for c in b.state.conflicts()] == [copy]


def test_a_folder_made_a_file_here_that_holds_what_this_device_ignores_keeps_both(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """The server keeps the folder (it holds a file this device ignores, so `if_empty`
    refuses its delete): the local file is then set aside, and the folder comes back."""
    a, b = engines
    (b.folder / ".tesseraignore").write_text("*.log\n")
    (a.folder / "logs").mkdir()
    (a.folder / "logs" / "run.log").write_text("A's log")
    synced_on_both(a, b, "logs/a.txt", "synced")
    shutil.rmtree(b.folder / "logs")
    (b.folder / "logs").write_text("B's file")
    result = b.run_once()
    assert not [p for p in result.problems if "quiescent" in p], result.problems
    a.run_once()
    copy = _copy("logs", "B")
    assert snapshot(b.folder) == {".tesseraignore": b"*.log\n", "logs": None, copy: b"B's file"}
    assert snapshot(a.folder) == {"logs": None, "logs/run.log": b"A's log", copy: b"B's file"}
