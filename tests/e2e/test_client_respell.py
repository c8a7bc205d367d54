"""Renames in case only (`Report.txt` -> `REPORT.txt`) keep the path key, so they reach the
other side as moves: on this case-sensitive disk, a rename there used to be a change never
sent, and an edit after a rename on the server a download retried for ever."""

from __future__ import annotations

from tessera_client.engine import SyncEngine

from .conftest import snapshot


def test_a_case_only_rename_and_an_edit_after_it_reach_the_other_device(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    a, b = engines
    (a.folder / "Report.txt").write_text("v1")
    a.run_once()
    b.run_once()
    (b.folder / "Report.txt").rename(b.folder / "REPORT.txt")
    assert not b.run_once().problems
    a_round = a.run_once()
    assert not a_round.problems, a_round
    assert snapshot(a.folder) == {"REPORT.txt": b"v1"}
    (b.folder / "REPORT.txt").write_text("v2 after the rename")
    b.run_once()
    a_round = a.run_once()
    assert not a_round.problems, a_round
    assert snapshot(a.folder) == snapshot(b.folder) == {"REPORT.txt": b"v2 after the rename"}


def test_a_folder_renamed_in_case_only_follows_with_its_files(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    a, b = engines
    (a.folder / "docs").mkdir()
    (a.folder / "docs" / "a.txt").write_text("a")
    a.run_once()
    b.run_once()
    (a.folder / "docs").rename(a.folder / "Docs")
    a.run_once()
    b.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {"Docs": None, "Docs/a.txt": b"a"}
