"""What a device does not look at, it leaves alone: a path it ignores, skips or cannot
list is neither downloaded nor deleted on any side — its absence from the scan is not a
delete."""

from __future__ import annotations

import os
import shutil
import unicodedata
from pathlib import Path

import pytest

from tessera_client.engine import SyncEngine
from tessera_client.fs import FOLDER_MARKER
from tests.permissions import permission_bound_prefix

from .conftest import Cloud, Device, kept_both, make_device, snapshot, synced_on_both

pytestmark = pytest.mark.e2e


def _pair(cloud: Cloud, devices: list[Device], tmp_path: Path) -> tuple[Device, Device]:
    email = cloud.user()
    return (
        make_device(devices, tmp_path, cloud, "A", email),
        make_device(devices, tmp_path, cloud, "B", email),
    )


def test_what_one_device_ignores_is_neither_downloaded_there_nor_deleted(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    a, b = _pair(inproc_cloud, devices, tmp_path)
    b.write(".tesseraignore", "*.log\nbuild/\n")
    a.write("notes.log", "a log A keeps")
    a.write("build/out.o", "A's build output")
    a.write("keep.txt", "synced")
    a.sync()
    b.sync()
    a.sync()
    assert (a.folder / "notes.log").read_text() == "a log A keeps"
    assert (a.folder / "build" / "out.o").read_text() == "A's build output"
    assert sorted(snapshot(b.folder)) == [".tesseraignore", "keep.txt"]


def test_a_synced_file_that_becomes_ignored_stays_on_every_device(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    a, b = _pair(inproc_cloud, devices, tmp_path)
    a.write("data.log", "v1")
    a.sync()
    b.sync()
    b.write(".tesseraignore", "*.log\n")
    b.write("data.log", "B's edit, ignored from now on")
    b.sync()
    a.sync()
    assert (a.folder / "data.log").read_text() == "v1"
    assert (b.folder / "data.log").read_text() == "B's edit, ignored from now on"


@pytest.mark.parametrize("unreadable", ["docs", ".tesseraignore"])
def test_what_a_device_cannot_read_is_deleted_nowhere(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, unreadable: str
) -> None:
    """A folder the scan cannot list, or rules it cannot read, leave what they hold
    unseen: its synced files are not taken for deleted (below the mass-delete gate, they
    would have gone from the server and every device without a question)."""
    a, b = _pair(inproc_cloud, devices, tmp_path)
    a.write(".tesseraignore", "*.tmp\n")
    a.write("docs/a.txt", "one")
    a.write("docs/b.txt", "two")
    a.write("keep.txt", "kept")
    a.sync()
    b.sync()
    before, a_before = snapshot(b.folder), snapshot(a.folder)  # rules stay on their device
    (a.folder / unreadable).chmod(0)
    try:
        r = a.sync(check=None, prefix=permission_bound_prefix())
    finally:
        (a.folder / unreadable).chmod(0o755)
    said = " ".join((r.stdout + r.stderr).split())
    assert "cannot list folder" in said or "cannot read it" in said, said
    b.sync()
    assert snapshot(b.folder) == before
    assert not a.json("trash") and not b.json("trash")
    a.sync()
    assert snapshot(a.folder) == a_before


def test_an_ignored_file_renamed_in_case_elsewhere_is_not_deleted(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """B ignores `*.log`; A renames the synced `notes.log` to `Notes.LOG`, a spelling the
    rule does not match (rules are case-sensitive): B read the file's absence from its scan
    as a delete, and deleted it on the server and on A."""
    a, b = _pair(inproc_cloud, devices, tmp_path)
    a.write("notes.log", "v1")
    a.sync()
    b.sync()
    b.write(".tesseraignore", "*.log\n")
    b.sync()
    (a.folder / "notes.log").rename(a.folder / "Notes.LOG")
    a.sync()
    b.sync()
    a.sync()
    assert (a.folder / "Notes.LOG").read_text() == "v1"
    assert (b.folder / "notes.log").read_text() == "v1"
    assert not a.json("trash")


def test_a_skipped_name_is_not_deleted_elsewhere(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A tool rewrote a synced file under its NFD name: the scan skips that name (and says
    so), and the file it was must not be deleted on the server and the other device."""
    a, b = _pair(inproc_cloud, devices, tmp_path)
    name = unicodedata.normalize("NFC", "café.txt")
    a.write(name, "v1")
    a.sync()
    b.sync()
    (a.folder / name).rename(a.folder / unicodedata.normalize("NFD", name))
    first, second = a.sync(), a.sync()
    assert "NFC" in first.stdout + first.stderr + second.stdout + second.stderr
    b.sync()
    assert (b.folder / name).read_text() == "v1"


def test_a_folder_turned_into_a_symlink_keeps_its_files_elsewhere(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """The scan never follows a symlink, so it does not see the files under one: they are
    not gone."""
    a, b = _pair(inproc_cloud, devices, tmp_path)
    a.write("docs/a.txt", "doc")
    a.write("docs/deep/b.txt", "deeper")
    a.sync()
    b.sync()
    moved = tmp_path / "docs-elsewhere"
    (a.folder / "docs").rename(moved)
    os.symlink(moved, a.folder / "docs")
    r = a.sync()
    # it says so, and its last line no longer reads as if everything synced
    assert "skipped docs: symlink" in r.stderr
    said = " ".join(r.stdout.split())  # the console wraps long lines
    assert said.startswith("In sync") and said.endswith("(1 left out, as said above)")
    b.sync()
    assert (b.folder / "docs" / "a.txt").read_text() == "doc"
    assert (b.folder / "docs" / "deep" / "b.txt").read_text() == "deeper"


def _deleted_on_a_holding(a: SyncEngine, b: SyncEngine, name: str, text: str) -> None:
    """A folder `proj` (with a file) synced on both; B puts `name` (holding `text`, and
    never synced) in it, then A deletes the folder and syncs."""
    (a.folder / "proj").mkdir()
    (a.folder / "proj" / "x.txt").write_text("x")
    a.run_once()
    b.run_once()
    (b.folder / "proj" / name).write_text(text)
    shutil.rmtree(a.folder / "proj")
    a.run_once()


def test_a_folder_deleted_elsewhere_goes_despite_the_litter_in_it(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """Finder leaves `.DS_Store` in every folder it shows: a folder deleted on another device
    must still go here, not come back to the server at the next round."""
    a, b = engines
    _deleted_on_a_holding(a, b, ".DS_Store", "finder")
    b.run_once()
    a.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {}


@pytest.mark.parametrize("kept", [".x.txt.swp", "build.log"], ids=["vim swap", "ignored"])
def test_a_folder_deleted_elsewhere_kept_here_for_what_is_not_synced_stays_deleted_there(
    engines: tuple[SyncEngine, SyncEngine], kept: str
) -> None:
    """A folder deleted on another device that holds what this device never syncs (an
    editor's swap file: its unsaved work; a file its ignore rules leave out) stays here
    for it, but deleted on the server: it was created there again at the next round, and
    came back, empty, on every device. A file put in it later brings it back, as ever."""
    a, b = engines
    (b.folder / ".tesseraignore").write_text("*.log\n")
    _deleted_on_a_holding(a, b, kept, "not synced")
    assert b.run_once().problems == []
    assert b.run_once().ops == 0  # nothing to do, each round
    a.run_once()
    assert "proj" not in snapshot(a.folder)
    assert snapshot(b.folder)["proj/" + kept] == b"not synced"
    (b.folder / "proj" / "new.txt").write_text("new work")
    b.run_once()
    a.run_once()
    assert snapshot(a.folder) == {"proj": None, "proj/new.txt": b"new work"}


def test_a_file_put_elsewhere_where_a_kept_folder_was_comes_here(
    engines: tuple[SyncEngine, SyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder kept here for an editor's swap file keeps its record; a file another
    device then puts under its name had been planned away every round (the folder looked
    unchanged here), never coming down, while the sync said "In sync". Now the folder is
    set aside and the file comes down; the marker's loss pauses nothing meanwhile."""
    a, b = engines
    _deleted_on_a_holding(a, b, ".x.txt.swp", "unsaved work")
    b.run_once()
    (b.folder / FOLDER_MARKER).unlink()  # a cleaner took the hidden files
    assert not any("paused" in p for p in b.run_once().problems)
    (b.folder / FOLDER_MARKER).unlink()
    listdir = b.fs.listdir

    def unlistable(rel: str) -> list[str]:  # (and one it may not list: kept, no crash)
        if rel == "proj":
            raise PermissionError(13, "Permission denied", rel)
        return listdir(rel)

    with monkeypatch.context() as m:
        m.setattr(b.fs, "listdir", unlistable)
        assert not any("paused" in p for p in b.run_once().problems)
    (a.folder / "proj").write_text("a file now")
    a.run_once()
    assert b.run_once().problems == []
    assert (b.folder / "proj").read_text() == "a file now"
    [aside] = [p for p in b.folder.iterdir() if "conflicted copy" in p.name]
    assert (aside / ".x.txt.swp").read_text() == "unsaved work"


def test_a_download_over_a_file_keeps_its_permissions(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """The new content is written beside the file and renamed over it: the temp file takes
    the old one's mode, so a private file stays private and a script stays executable."""
    a, b = engines
    for name, mode in (("secret.txt", 0o600), ("run.sh", 0o755)):
        synced_on_both(a, b, name, "v1")
        (b.folder / name).chmod(mode)
        (a.folder / name).write_text("v2 from A")
        a.run_once()
        b.run_once()
        assert (b.folder / name).read_text() == "v2 from A"
        assert (b.folder / name).stat().st_mode & 0o777 == mode, name


def test_the_server_side_of_a_conflict_keeps_the_local_files_permissions(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """A conflict moves the local file to its conflicted copy before the server's version
    comes down: the download found nothing at the path to take the mode of, and a private
    file came back readable by everyone (0644), a script not executable."""
    a, b = engines
    for name, mode in (("secret.txt", 0o600), ("run.sh", 0o755)):
        synced_on_both(a, b, name, "v1")
        (b.folder / name).chmod(mode)
        (a.folder / name).write_text("A's edit")
        (b.folder / name).write_text("B's edit")
        a.run_once()
        b.run_once()  # a conflict: B's edit kept as a copy, A's comes down in its place
        assert (b.folder / name).read_text() == "A's edit"
        [copy] = [p for p in b.folder.iterdir() if "conflicted copy" in p.name]
        assert copy.read_text() == "B's edit"
        assert (b.folder / name).stat().st_mode & 0o777 == mode, name
        assert copy.stat().st_mode & 0o777 == mode, name
        copy.unlink()
        b.run_once()
        a.run_once()


def test_a_conflicted_copys_folder_turned_into_a_symlink_ends_no_round(
    engines: tuple[SyncEngine, SyncEngine], tmp_path: Path
) -> None:
    """Each round first forgets the conflicted copies the user dealt with: one whose folder
    became a symlink raised SymlinkError out of every round, so the device synced nothing
    until the user undid it."""
    a, b = engines
    (a.folder / "docs").mkdir()
    synced_on_both(a, b, "docs/a.txt", "v1")
    (a.folder / "docs" / "a.txt").write_text("A's edit")
    (b.folder / "docs" / "a.txt").write_text("B's edit")
    a.run_once()
    b.run_once()
    copy = list(kept_both("docs/a.txt", "B", "", ""))[1]
    assert [c.path for c in b.state.conflicts()] == [copy]
    moved = tmp_path / "docs-elsewhere"
    (b.folder / "docs").rename(moved)
    os.symlink(moved, b.folder / "docs")
    (b.folder / "new.txt").write_text("made after")
    b.run_once()
    assert b.state.conflicts() == []
    a.run_once()
    assert (a.folder / "new.txt").read_text() == "made after"
    assert (a.folder / "docs" / "a.txt").read_text() == "A's edit"


def test_a_folder_deleted_here_that_holds_what_this_device_ignores_is_kept(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """The server keeps a folder that is not empty (`if_empty`): one holding only what this
    device ignores was deleted here again every round, and `--once` never ended in sync."""
    a, b = engines
    (b.folder / ".tesseraignore").write_text("*.log\n")
    (a.folder / "proj").mkdir()
    (a.folder / "proj" / "run.log").write_text("A's log")
    (a.folder / "proj" / "a.txt").write_text("synced")
    a.run_once()
    b.run_once()
    shutil.rmtree(b.folder / "proj")
    result = b.run_once()
    assert not [p for p in result.problems if "quiescent" in p], result.problems
    a.run_once()
    assert snapshot(b.folder) == {".tesseraignore": b"*.log\n", "proj": None}
    assert snapshot(a.folder) == {"proj": None, "proj/run.log": b"A's log"}


def _set_apart_and_let_in(device: SyncEngine, how: str, elsewhere: Path) -> None:
    """Set `Archive` apart on `device` for good (an ignore rule, or moved to another disk
    behind a symlink), take its files away there, sync, then let it in again."""
    folder = device.folder
    if how.startswith("ignored"):
        (folder / ".tesseraignore").write_text("Archive/\n")
        device.run_once()
        if how == "ignored":
            shutil.rmtree(folder / "Archive")  # to free the space: it is not synced here
            device.run_once()
        (folder / ".tesseraignore").write_text("")
    else:
        shutil.move(str(folder / "Archive"), str(elsewhere / "Archive"))
        os.symlink(elsewhere / "Archive", folder / "Archive")
        device.run_once()
        (folder / "Archive").unlink()


@pytest.mark.parametrize("how", ["ignored", "ignored, kept", "symlink"])
def test_what_was_set_apart_here_comes_back_when_let_in_again(
    engines: tuple[SyncEngine, SyncEngine], tmp_path: Path, how: str
) -> None:
    """A folder ignored here (or moved behind a symlink), deleted here, then let in again:
    its record had been kept, so its absence read as a delete made here, sent to the server
    and to every device. It is no longer synced here once set apart: it comes back. (Kept
    here meanwhile, its files are as the server once held them: the server's newer
    version replaces them, with no conflicted copy.)"""
    a, b = engines
    synced_on_both(a, b, "keep.txt", "k")
    (a.folder / "Archive").mkdir()
    for name in ("one.txt", "two.txt"):
        (a.folder / "Archive" / name).write_text(f"{name} v1")
    a.run_once()
    b.run_once()
    elsewhere = tmp_path / "external"
    elsewhere.mkdir()
    _set_apart_and_let_in(a, how, elsewhere)
    (b.folder / "Archive" / "two.txt").write_text("two.txt, B's edit meanwhile")
    b.run_once()
    assert not a.run_once().problems
    b.run_once()
    expected = {
        "keep.txt": b"k",
        "Archive": None,
        "Archive/one.txt": b"one.txt v1",
        "Archive/two.txt": b"two.txt, B's edit meanwhile",
    }
    assert snapshot(b.folder) == expected
    assert {k: v for k, v in snapshot(a.folder).items() if k != ".tesseraignore"} == expected
