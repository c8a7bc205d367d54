"""Renames in case only (`Report.txt` -> `REPORT.txt`) keep the path key, so they reach the
other side as moves: on this case-sensitive disk, a rename there used to be a change never
sent, and an edit after a rename on the server a download retried for ever."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tessera_client.engine import SyncEngine
from tessera_client.fs import MTIME_GRANULARITY_NS

from .conftest import kept_both, snapshot, synced_on_both

pytestmark = pytest.mark.e2e


def test_a_case_only_rename_and_an_edit_after_it_reach_the_other_device(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    a, b = engines
    synced_on_both(a, b, "Report.txt", "v1")
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


def _synced_docs(a: SyncEngine, b: SyncEngine, files: dict[str, str]) -> None:
    """A folder `docs` holding `files` (name: text), made on A and synced to B."""
    (a.folder / "docs").mkdir()
    for name, text in files.items():
        (a.folder / "docs" / name).write_text(text)
    a.run_once()
    b.run_once()


def test_a_folder_renamed_in_case_only_follows_with_its_files(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    a, b = engines
    _synced_docs(a, b, {"a.txt": "a"})
    (a.folder / "docs").rename(a.folder / "Docs")
    a.run_once()
    b.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {"Docs": None, "Docs/a.txt": b"a"}


def test_a_new_folder_spelled_like_a_synced_one_changes_nothing_elsewhere(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """An unrelated `Docs` (unzipped, copied in) next to the synced `docs` sorted first and
    was taken for it: its `a.txt` became a new version of the synced one on every device,
    and the synced folder was renamed `Docs` on the server."""
    a, b = engines
    _synced_docs(a, b, {"a.txt": "synced"})
    (a.folder / "Docs").mkdir()
    (a.folder / "Docs" / "a.txt").write_text("unrelated")
    assert a.run_once().ops == 0  # `Docs` is skipped (name clash): nothing to send
    b.run_once()
    assert snapshot(b.folder) == {"docs": None, "docs/a.txt": b"synced"}
    assert (a.folder / "Docs" / "a.txt").read_text() == "unrelated"
    assert (a.folder / "docs" / "a.txt").read_text() == "synced"


@pytest.mark.parametrize("new_name", ["Docs", "papers"])
def test_the_daemons_round_after_a_folder_move_pulls_before_it_plans(
    engines: tuple[SyncEngine, SyncEngine], new_name: str
) -> None:
    """A daemon's follow-up round skips the pull unless the long-poll has news, and the
    long-poll is often slower than the round: after a server-side folder move (which drops
    the folder's children from the remote mirror) it pulls anyway. Planned on that mirror,
    a case-only rename's children read as deleted on the server, and were deleted here."""
    a, _ = engines
    (a.folder / "docs").mkdir()
    for name in ("a.txt", "b.txt"):
        (a.folder / "docs" / name).write_text(name)
    a.run_once()
    (a.folder / "docs").rename(a.folder / new_name)
    a._remote_changed.clear()  # the long-poll has not seen the move yet
    a.round(pull=True)  # sends the move
    a.round(pull=a._remote_changed.is_set())  # the follow-up round, as the daemon runs it
    assert snapshot(a.folder) == {
        new_name: None,
        f"{new_name}/a.txt": b"a.txt",
        f"{new_name}/b.txt": b"b.txt",
    }


def test_an_edit_that_came_with_a_rename_is_sent_after_a_failed_upload(
    engines: tuple[SyncEngine, SyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename with a same-size edit is a server-side move, then an upload. The move used
    to record the edited file's stat as vouching for the moved (old) content: when the
    upload did not land, the next process trusted that stat and never sent the edit."""
    a, b = engines
    synced_on_both(a, b, "notes.txt", "teh draft")
    (a.folder / "notes.txt").rename(a.folder / "Notes.txt")
    (a.folder / "Notes.txt").write_text("the draft")  # same size
    past = time.time_ns() - 10 * MTIME_GRANULARITY_NS  # well clear of racy-clean
    os.utime(a.folder / "Notes.txt", ns=(past, past))

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # the process dies during the upload

    monkeypatch.setattr(a.transfers, "upload", killed)
    with pytest.raises(KeyboardInterrupt):
        a.run_once()
    monkeypatch.undo()
    a.close()
    restarted = SyncEngine(a.home, a.home.load_settings(), a.folder, a.api)
    try:
        assert not restarted.run_once().problems
    finally:
        restarted.close()
    b.run_once()
    assert snapshot(b.folder) == {"Notes.txt": b"the draft"}


@pytest.mark.parametrize("edited_here", [False, True], ids=["respelled", "respelled-and-edited"])
def test_a_respelling_here_racing_an_edit_elsewhere_keeps_every_change(
    engines: tuple[SyncEngine, SyncEngine], edited_here: bool
) -> None:
    """B respells Foo.txt as foo.txt (and maybe edits it) while A edits Foo.txt. The
    download or conflict was planned at the server's spelling, where this case-sensitive
    disk has nothing: the step failed every round, for ever, and neither change reached
    the other device."""
    a, b = engines
    synced_on_both(a, b, "Foo.txt", "v1")
    (b.folder / "Foo.txt").rename(b.folder / "foo.txt")
    # the respelling is sent as a move once downloaded
    expected: dict[str, bytes | None] = {"foo.txt": b"v2 from A"}
    if edited_here:
        (b.folder / "foo.txt").write_text("v2 from B")
        expected = kept_both("foo.txt", "B", theirs="v2 from A", mine="v2 from B")
    (a.folder / "Foo.txt").write_text("v2 from A")
    a.run_once()
    result = b.run_once()
    assert not result.problems, result
    a.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == expected


def test_a_folder_respelled_with_a_new_file_never_deletes_the_synced_ones(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """`docs` renamed `Docs` on A, with a new `Docs/sub/x.txt`. B used to create `Docs/sub`
    before it moved `docs` (and then could not: the name was taken), so on its
    case-sensitive disk both folders stood. Its scan reported the second spelling and
    skipped it, and the synced files in it, missing from the scan, were deleted on the
    server and on A. Now B moves `docs` first, and both devices end up alike."""
    a, b = engines
    _synced_docs(a, b, {"a.txt": "a.txt", "b.txt": "b.txt"})
    (a.folder / "docs").rename(a.folder / "Docs")
    (a.folder / "Docs" / "sub").mkdir()
    (a.folder / "Docs" / "sub" / "x.txt").write_text("x")
    assert _followed(a, b) == {
        "Docs": None,
        "Docs/a.txt": b"a.txt",
        "Docs/b.txt": b"b.txt",
        "Docs/sub": None,
        "Docs/sub/x.txt": b"x",
    }


def _followed(a: SyncEngine, b: SyncEngine) -> dict[str, bytes | None]:
    """Send A's changes, let B take them without a problem (and scan again, when a second
    spelling would show), then A take B's: both folders, once alike."""
    a.run_once()
    assert not b.run_once().problems
    b.run_once()
    a.run_once()
    assert snapshot(a.folder) == snapshot(b.folder)
    return snapshot(a.folder)


def test_a_folder_respelled_with_an_edit_inside_arrives_as_one_folder(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """`docs` renamed `Docs` on A, and `a.txt` in it edited: B fetched the edit into the
    old spelling, and on its case-sensitive disk made `docs` again beside `Docs`."""
    a, b = engines
    _synced_docs(a, b, {"a.txt": "v1"})
    (a.folder / "docs").rename(a.folder / "Docs")
    (a.folder / "Docs" / "a.txt").write_text("v2, edited after the rename")
    assert _followed(a, b) == {"Docs": None, "Docs/a.txt": b"v2, edited after the rename"}


@pytest.mark.parametrize("made", ["folder", "file"])
def test_a_folder_respelled_here_takes_in_what_another_device_made_in_it(
    engines: tuple[SyncEngine, SyncEngine], made: str
) -> None:
    """A renames `docs` to `Docs` while B makes `docs/sub` (or `docs/new.txt`): what B made
    must come to A inside `Docs`, not in a second `docs` beside it."""
    a, b = engines
    _synced_docs(a, b, {"a.txt": "a"})
    if made == "folder":
        (b.folder / "docs" / "sub").mkdir()
        expected: dict[str, bytes | None] = {"Docs/sub": None}
    else:
        (b.folder / "docs" / "new.txt").write_text("new")
        expected = {"Docs/new.txt": b"new"}
    assert not b.run_once().problems
    (a.folder / "docs").rename(a.folder / "Docs")
    result = a.run_once()
    assert not result.problems, result
    b.run_once()
    expected |= {"Docs": None, "Docs/a.txt": b"a"}
    assert snapshot(a.folder) == snapshot(b.folder) == expected


def test_a_file_respelled_in_a_folder_respelled_before_reaches_the_other_device(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """The folder's respelling was recorded for the folder alone: its file's record kept
    `docs/a.txt`, and a rename of the file in case afterwards was never sent."""
    a, b = engines
    _synced_docs(a, b, {"a.txt": "a"})
    (a.folder / "docs").rename(a.folder / "Docs")
    a.run_once()
    b.run_once()
    (a.folder / "Docs" / "a.txt").rename(a.folder / "Docs" / "A.txt")
    assert not a.run_once().problems
    assert not b.run_once().problems
    assert snapshot(a.folder) == snapshot(b.folder) == {"Docs": None, "Docs/A.txt": b"a"}


def test_one_folder_spelled_two_ways_before_any_sync_stays_one_folder(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """A device's first sync finds its `Docs` where the server has `docs`: on this
    case-sensitive disk the server's files came down into a second folder beside it, whose
    spelling then hid `Docs` (a name clash) and every later edit in it."""
    a, b = engines
    (a.folder / "docs").mkdir()
    (a.folder / "docs" / "theirs.txt").write_text("theirs")
    a.run_once()
    (b.folder / "Docs").mkdir()
    (b.folder / "Docs" / "mine.txt").write_text("mine")
    assert not b.run_once().problems
    a.run_once()
    expected = {"docs": None, "docs/mine.txt": b"mine", "docs/theirs.txt": b"theirs"}
    assert snapshot(a.folder) == snapshot(b.folder) == expected


def test_one_file_spelled_two_ways_before_any_sync_keeps_both_under_the_servers_name(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """`Notes.txt` here, `notes.txt` on the server, never synced: the server's keeps its
    name and this one is kept beside it as a conflicted copy (the next round had renamed
    the server's file to this device's spelling)."""
    a, b = engines
    (a.folder / "notes.txt").write_text("theirs")
    a.run_once()
    (b.folder / "Notes.txt").write_text("mine")
    assert not b.run_once().problems
    assert not b.run_once().problems
    a.run_once()
    expected = kept_both("notes.txt", "B", "theirs", "mine")
    assert snapshot(a.folder) == snapshot(b.folder) == expected


def test_a_file_respelled_right_after_its_folder_keeps_its_new_spelling(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """The folder's move recorded nothing for the folder: a rename in case of a file in it
    made before the next round found neither spelling synced, and was undone to the
    server's."""
    a, b = engines
    _synced_docs(a, b, {"a.txt": "a"})
    (a.folder / "docs").rename(a.folder / "Docs")
    a.round()  # the folder's move, sent
    (a.folder / "Docs" / "a.txt").rename(a.folder / "Docs" / "A.txt")
    assert not a.run_once().problems
    b.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {"Docs": None, "Docs/A.txt": b"a"}
