"""A device acting on what it saw at its last pull, while another device changed the same
thing since: the daemon's rounds woken by local events skip the pull, so these races are
the daemon's everyday case. Driven in-process (`round(pull=False)`) for exact timing;
nothing another device did may be lost."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tessera_client.api import Api, ApiError
from tessera_client.config import Home
from tessera_client.engine import SyncEngine
from tessera_client.fs import MTIME_GRANULARITY_NS, RealFilesystem, SafeFilesystem, Stat
from tessera_client.scanner import MOUNT_POINT, Scanner

from .conftest import Cloud, kept_both, sign_in, snapshot, synced_on_both

pytestmark = pytest.mark.e2e


def _replaced_on_b(a: SyncEngine, b: SyncEngine, text: str) -> None:
    """doc.txt ("v1") synced on both; then B deletes it and writes a new doc.txt holding
    `text` (another file, at rev 1 again), while A does not pull."""
    synced_on_both(a, b, "doc.txt", "v1")
    (b.folder / "doc.txt").unlink()
    b.run_once()
    (b.folder / "doc.txt").write_text(text)
    b.run_once()


def test_a_rename_racing_an_edit_elsewhere_keeps_the_edit(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    a, b = engines
    synced_on_both(a, b, "doc.txt", "v1")
    (b.folder / "doc.txt").write_text("v2, B's edit")
    b.run_once()
    (a.folder / "doc.txt").rename(a.folder / "doc2.txt")
    a.round(pull=False)  # moves the file on the server: it is at B's rev there now
    a.run_once()
    b.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {"doc2.txt": b"v2, B's edit"}


def test_a_rename_here_and_an_edit_elsewhere_both_arrive(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """A renames doc.txt while B's edit is already on the server (A pulls it this time):
    the rename was sent as an upload of the old text beside a download of the edit, and
    every device ended with the edit under the old name and the old text under the new."""
    a, b = engines
    synced_on_both(a, b, "doc.txt", "v1")
    (b.folder / "doc.txt").write_text("v2, B's edit")
    b.run_once()
    (a.folder / "doc.txt").rename(a.folder / "doc2.txt")
    assert not a.run_once().problems
    b.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {"doc2.txt": b"v2, B's edit"}


def test_a_rename_whose_move_fails_keeps_the_renamed_file_until_it_lands(
    engines: tuple[SyncEngine, SyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The move fails (a 503 past its retries) while B's edit waits on the server: the
    edit's download planned where the file was going came down over the renamed file and
    was recorded there as the file moved; the next round undid the rename."""
    a, b = engines
    synced_on_both(a, b, "doc.txt", "v1")
    (b.folder / "doc.txt").write_text("v2, B's edit")
    b.run_once()
    (a.folder / "doc.txt").rename(a.folder / "doc2.txt")
    call = a.api.call

    def moves_fail(route: str, *args: Any, **kwargs: Any) -> Any:
        if route == "/v1/move":
            raise ApiError(503, "unavailable", "try again", {})
        return call(route, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(a.api, "call", moves_fail)
        assert a.round().problems
    assert snapshot(a.folder) == {"doc2.txt": b"v1"}  # nothing came down over it
    assert not a.run_once().problems
    b.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {"doc2.txt": b"v2, B's edit"}


@pytest.mark.parametrize("elsewhere", ["renamed", "renamed, then edited"])
def test_an_edit_here_and_a_rename_elsewhere_both_arrive(
    engines: tuple[SyncEngine, SyncEngine], elsewhere: str
) -> None:
    """B edits doc.txt while A's rename of it is on the server: the edit went up under the
    old name, beside the unedited file under the new one. Now it follows the rename (and,
    when A edited it too, both are kept under the new name)."""
    a, b = engines
    synced_on_both(a, b, "doc.txt", "v1")
    (a.folder / "doc.txt").rename(a.folder / "doc2.txt")
    a.run_once()
    if elsewhere == "renamed, then edited":
        (a.folder / "doc2.txt").write_text("v2, A's edit")
        a.run_once()
    (b.folder / "doc.txt").write_text("v2, B's edit")
    assert not b.round().problems  # moved, and the edit (or its copy) sent from there
    assert b.round().ops == 0  # (it had waited for a round that hashed it again)
    a.run_once()
    expected = (
        {"doc2.txt": b"v2, B's edit"}
        if elsewhere == "renamed"
        else kept_both("doc2.txt", "B", "v2, A's edit", "v2, B's edit")
    )
    assert snapshot(a.folder) == snapshot(b.folder) == expected


def test_the_same_new_file_made_on_two_devices_is_one_file(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """Both devices hold the same new file (a first sync of one folder's copies, or one
    copied to each by hand), and B commits it knowing nothing of A's: the server's 409
    made a conflicted copy, byte for byte the file, of every file the two had in common."""
    a, b = engines
    synced_on_both(a, b, "other.txt", "x")
    for device in (a, b):
        (device.folder / "same.txt").write_text("the same words")
        (device.folder / "apart.txt").write_text(f"{device.settings.device_name}'s words")
    a.run_once()
    assert not b.round(pull=False).problems  # both commits refused: not a problem
    b.run_once()
    a.run_once()
    expected = {
        "other.txt": b"x",
        "same.txt": b"the same words",
        **kept_both("apart.txt", "B", "A's words", "B's words"),
    }
    assert snapshot(a.folder) == snapshot(b.folder) == expected
    assert [c.original for c in b.state.conflicts()] == ["apart.txt"]


@pytest.mark.parametrize("edited_on", ["A", "B"])
def test_the_same_rename_on_both_devices_keeps_every_edit(
    engines: tuple[SyncEngine, SyncEngine], edited_on: str
) -> None:
    """Both devices rename doc.txt to doc2.txt (or B's daemon moved it as A did and was
    killed before recording that), and one edits it. A's edit: B had taken its unchanged
    doc2.txt for a new file beside a deleted one, and kept it as a conflicted copy of
    itself; now the edit comes down over it. B's own edit is kept beside A's file, as any
    edit the server's file does not hold (the inode alone is no evidence of the file)."""
    a, b = engines
    synced_on_both(a, b, "doc.txt", "v1")
    (a.folder / "doc.txt").rename(a.folder / "doc2.txt")
    a.run_once()
    (b.folder / "doc.txt").rename(b.folder / "doc2.txt")
    edited = a if edited_on == "A" else b
    (edited.folder / "doc2.txt").write_text(f"v2, {edited_on}'s edit")
    a.run_once()
    assert not b.run_once().problems
    a.run_once()
    expected = (
        {"doc2.txt": b"v2, A's edit"}
        if edited_on == "A"
        else kept_both("doc2.txt", "B", "v1", "v2, B's edit")
    )
    assert snapshot(a.folder) == snapshot(b.folder) == expected
    revs = [e["rev"] for e in a.api.call("/v1/revisions", {"path": "/doc2.txt"})["entries"]]
    assert revs == ([2, 1] if edited_on == "A" else [1])  # one file, its history kept


def test_a_rename_of_a_file_another_device_replaced_moves_nothing_of_theirs(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """B deletes doc.txt and writes a new doc.txt; A, not pulled since, renames its
    doc.txt: the move took B's new file, A recorded it under its own content, and the two
    devices stayed apart, each "in sync" (an edit of A's then replaced B's work). The move
    names the file A saw: refused, A's rename goes up as its own file, and B's stays."""
    a, b = engines
    _replaced_on_b(a, b, "B's new doc")
    (a.folder / "doc.txt").rename(a.folder / "doc2.txt")
    a.round(pull=False)
    a.run_once()
    b.run_once()
    expected = {"doc.txt": b"B's new doc", "doc2.txt": b"v1"}
    assert snapshot(a.folder) == snapshot(b.folder) == expected


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


def test_a_save_during_a_slow_upload_of_a_just_written_file_is_not_lost(
    engines: tuple[SyncEngine, SyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On FAT (2 s mtimes) a same-size save right after the scan read a file keeps its size
    and mtime. When the upload then took longer than the granularity, the file's stat was
    recorded as vouching for the uploaded content, and the save was never sent."""
    a, b = engines
    doc = a.folder / "doc.txt"
    doc.write_bytes(b"version-1")
    mtime = time.time_ns() - MTIME_GRANULARITY_NS // 4  # the scan reads it within 2 s
    os.utime(doc, ns=(mtime, mtime))
    real_commit = a.transfers._commit
    saved: list[bool] = []

    def commit(items: Any, sessions: Any) -> Any:
        if not saved:
            saved.append(True)
            doc.write_bytes(b"version-2")  # the same size, and the coarse clock kept its mtime
            os.utime(doc, ns=(mtime, mtime))
            while time.time_ns() < mtime + MTIME_GRANULARITY_NS + 3 * 10**8:
                time.sleep(0.05)  # a slow upload: recorded well after the granularity
        return real_commit(items, sessions)

    monkeypatch.setattr(a.transfers, "_commit", commit)
    a.run_once()
    b.run_once()
    assert saved
    assert snapshot(b.folder) == {"doc.txt": b"version-2"}


def test_a_conflict_the_disk_refuses_is_a_problem_not_a_crash(
    engines: tuple[SyncEngine, SyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload that meets a newer rev (409) moves the local edit to a conflicted copy
    from the upload's callback; an error there (here the rename is refused) ended the round
    and the daemon instead of being this file's problem."""
    a, b = engines
    synced_on_both(a, b, "doc.txt", "v1")
    (a.folder / "doc.txt").write_text("v2 from A")
    a.run_once()
    (b.folder / "doc.txt").write_text("v2 from B, longer")

    def refused(src: str, dst: str, **_kw: bool) -> None:
        raise PermissionError(13, "Permission denied", src)

    monkeypatch.setattr(b.fs, "rename", refused)
    result = b.round(pull=False)  # uploads against the old rev: 409
    assert any("doc.txt" in p and "Permission denied" in p for p in result.problems), result
    monkeypatch.undo()
    b.run_once()
    a.run_once()
    both = kept_both("doc.txt", "B", theirs="v2 from A", mine="v2 from B, longer")
    assert snapshot(a.folder) == snapshot(b.folder) == both


def test_an_edit_of_a_file_made_again_elsewhere_at_the_same_rev_is_a_conflict(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """B deletes doc.txt and makes a new doc.txt (rev 1 again) while A, not pulled since,
    edits the old one: A's commit at parent rev 1 landed on top of B's new file, with no
    conflicted copy. It names the file it edited now: a 409, and both are kept."""
    a, b = engines
    _replaced_on_b(a, b, "B's new file")
    (a.folder / "doc.txt").write_text("A's edit of the old one")
    a.round(pull=False)
    a.run_once()
    b.run_once()
    both = kept_both("doc.txt", "A", theirs="B's new file", mine="A's edit of the old one")
    assert snapshot(a.folder) == snapshot(b.folder) == both


def test_an_edit_after_a_commit_whose_answer_was_lost_is_no_conflict(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """The commit landed, its answer did not (a dropped connection, or the process killed
    before it recorded it). An edit made before the next round read as changed on both
    sides, and went up as a conflicted copy of the device's own upload."""
    a, b = engines
    synced_on_both(a, b, "doc.txt", "v1")
    (a.folder / "doc.txt").write_text("v2")
    call = a.api.call

    def answer_lost(route: str, *args: Any, **kwargs: Any) -> Any:
        answer = call(route, *args, **kwargs)
        if route.startswith("/v1/commit"):
            raise ApiError(502, "bad_gateway", "the answer was lost on the way", {})
        return answer

    a.api.call = answer_lost  # type: ignore[method-assign]
    a.round()
    del a.api.call
    (a.folder / "doc.txt").write_text("v3, written before the next round")
    a.run_once()
    b.run_once()
    expected = {"doc.txt": b"v3, written before the next round"}
    assert snapshot(a.folder) == snapshot(b.folder) == expected


@pytest.mark.parametrize("recorded", [True, False])
def test_a_download_in_place_but_not_recorded_is_no_conflict(
    engines: tuple[SyncEngine, SyncEngine], recorded: bool
) -> None:
    """B's download of rev 2 was renamed into place, then B was killed before it recorded
    it (`recorded`: B had rev 1 recorded; else the file was new to B), and A saved rev 3
    before B started again: both sides looked changed, and B made a conflicted copy of a
    file nobody edited there. Rev 2 is in the server's history: rev 3 replaces it."""
    a, b = engines
    synced_on_both(a, b, "other.txt", "x")
    if recorded:
        synced_on_both(a, b, "doc.txt", "v1")
    else:
        (a.folder / "doc.txt").write_text("v1")
        a.run_once()
    (a.folder / "doc.txt").write_text("v2")
    a.run_once()
    (b.folder / "doc.txt").write_text("v2")  # in place; B's record still what it was
    (a.folder / "doc.txt").write_text("v3")
    a.run_once()
    assert not b.run_once().problems
    assert snapshot(b.folder) == {"doc.txt": b"v3", "other.txt": b"x"}
    assert b.state.conflicts() == []
    # going back here to a rev this device had recorded is an edit: kept beside the server's
    (b.folder / "doc.txt").write_text("v2")
    for text in ("v4", "v5"):
        (a.folder / "doc.txt").write_text(text)
        a.run_once()
    b.run_once()
    assert snapshot(b.folder) == {"other.txt": b"x", **kept_both("doc.txt", "B", "v5", "v2")}


NEW_FILE_COMMIT = {"parent_rev": None, "file_id": None}


def _leave_session(
    device: SyncEngine, path: str, content_hash: str, commit: dict[str, Any] | None
) -> None:
    """A pending upload session for `path` of that content, as an upload that did not
    finish leaves it (`commit`: the commit it sent, if it sent one)."""
    session: dict[str, Any] = {
        "upload_id": "up_left",
        "expires_at": time.time() + 3600,
        "content_hash": content_hash,
        "needed": {},
        "idempotency_key": "left-behind",
    }
    if commit is not None:
        session["commit"] = commit
    device.state.put_pending("upload", path, session)


@pytest.mark.parametrize("commit", [None, NEW_FILE_COMMIT])
def test_a_stale_session_is_not_taken_for_a_landed_commit(
    engines: tuple[SyncEngine, SyncEngine], commit: dict[str, Any] | None
) -> None:
    """A's session for `p.txt` outlived its upload (renamed to `q.txt` before the commit
    went out, or its commit failed and the file was renamed since). B renames the file
    back to `p.txt`: the server's `p.txt` holds the session's content. Taken for A's own
    commit, it read as deleted here, and was deleted on every device."""
    a, b = engines
    synced_on_both(a, b, "q.txt", "the content")
    synced = a.state.base_entry("q.txt")
    assert synced is not None
    _leave_session(a, "p.txt", synced.content_hash, commit)
    (b.folder / "q.txt").rename(b.folder / "p.txt")
    b.run_once()
    a.run_once()
    b.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {"p.txt": b"the content"}


def test_a_session_of_a_file_deleted_here_adopts_nothing(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """A's commit of a new `p.txt` failed (its session kept, as after a 5xx), and the user
    deleted the file. B then makes a `p.txt` of the same content: it is what A's commit
    would have made, but adopted, it read as deleted here and was deleted everywhere."""
    a, b = engines
    (b.folder / "p.txt").write_text("the content")
    b.run_once()
    made = b.state.base_entry("p.txt")
    assert made is not None
    _leave_session(a, "p.txt", made.content_hash, NEW_FILE_COMMIT)
    a.run_once()
    b.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {"p.txt": b"the content"}


def test_what_went_from_a_folder_shared_since_this_devices_listing_goes_here_too(
    engines: tuple[SyncEngine, SyncEngine], inproc_cloud: Cloud, tmp_path: Path
) -> None:
    """A shares Team, then deletes and renames files in it, before B lists again: B's
    listing brought the mount point and what it holds now, but no deletion of what Team
    held before, so B kept the deleted file and the renamed one's old name for ever,
    "in sync"."""
    a, b = engines
    (a.folder / "Team").mkdir()
    for name in ("spec.md", "a.txt", "keep.txt"):
        (a.folder / "Team" / name).write_text(name)
    a.run_once()
    b.run_once()
    _an_editor_of(a, "Team", inproc_cloud, tmp_path).close()
    a.run_once()
    (a.folder / "Team" / "spec.md").unlink()
    (a.folder / "Team" / "a.txt").rename(a.folder / "Team" / "b.txt")
    a.run_once()
    assert not b.run_once().problems
    expected = {"Team": None, "Team/b.txt": b"a.txt", "Team/keep.txt": b"keep.txt"}
    assert snapshot(a.folder) == snapshot(b.folder) == expected


def _another_users_device(cloud: Cloud, tmp_path: Path) -> tuple[str, SyncEngine]:
    """A new user (signed in once) and their device "editor", with an empty folder."""
    email = cloud.user()
    home = sign_in(cloud, email, Home(tmp_path / "home-editor"), "editor")
    synced = tmp_path / "folder-editor"
    synced.mkdir()
    return email, SyncEngine(home, home.load_settings(), synced, Api(cloud.url, home))


def _an_editor_of(a: SyncEngine, folder: str, cloud: Cloud, tmp_path: Path) -> SyncEngine:
    """A device of a new user, editor of `a`'s `folder`, synced once."""
    email, editor = _another_users_device(cloud, tmp_path)
    _share_and_accept(a, f"/{folder}", email, editor)
    editor.run_once()
    return editor


def _share_and_accept(owner: SyncEngine, path: str, email: str, member: SyncEngine) -> None:
    """`owner` shares `path` with `email` as editor, and `member` (their device) accepts."""
    invited = owner.api.call("/v1/share", {"path": path, "email": email, "access": "editor"})
    member.api.call("/v1/shares/accept", {"ns_id": invited["ns_id"]})


def test_a_shared_folder_replaced_by_a_file_on_a_members_device_is_left(
    engines: tuple[SyncEngine, SyncEngine], inproc_cloud: Cloud, tmp_path: Path
) -> None:
    """An editor's `rm -rf Team` and a new file named Team between two rounds: planned as a
    folder turned into a file, every file of the share was deleted, for every member. The
    editor leaves the share instead, as for `rm -rf Team` alone; the file goes up as theirs."""
    a, _ = engines
    (a.folder / "Team" / "plan").mkdir(parents=True)
    (a.folder / "Team" / "spec.md").write_text("the spec")
    (a.folder / "Team" / "plan" / "q1.txt").write_text("the plan")
    a.run_once()
    editor = _an_editor_of(a, "Team", inproc_cloud, tmp_path)
    try:
        assert (editor.folder / "Team" / "spec.md").read_text() == "the spec"
        shutil.rmtree(editor.folder / "Team")
        (editor.folder / "Team").write_text("a note I called Team")
        assert not editor.run_once().problems
        assert a.run_once().paused_deletes == 0
        assert a.api.call("/v1/trash/list", {"path": ""})["entries"] == []
        assert editor.api.call("/v1/shares", {})["shares"] == []
        root = editor.api.call("/v1/list_folder", {"path": "", "recursive": True})["entries"]
        assert [(e[".tag"], e["path_display"]) for e in root] == [("file", "/Team")]
    finally:
        editor.close()
    expected = {"Team": None, "Team/plan": None, "Team/plan/q1.txt": b"the plan",
                "Team/spec.md": b"the spec"}  # fmt: skip
    assert snapshot(a.folder) == expected


@pytest.mark.parametrize(
    "holds", ["own files", "a private spec", "the share's files", "an earlier spec"]
)
def test_a_share_mounted_where_an_unsynced_folder_of_the_members_is_keeps_it_theirs(
    engines: tuple[SyncEngine, SyncEngine], inproc_cloud: Cloud, tmp_path: Path, holds: str
) -> None:
    """The member made a `Team` folder while the device was off, and a folder `Team` was
    shared with them before it synced (the server mounts it at `/Team`: nothing of theirs
    was there): its private files went up into the owner's folder, for every member to
    read, as did a file named as one of the share's (as its conflicted copy). It is set
    aside as the member's own. A copy of the share itself is merged, also one holding an
    earlier version of a file the owner edited since (as after a reset cursor, or an
    ignore rule lifted): the owner's version replaces it."""
    a, _ = engines
    (a.folder / "Team").mkdir()
    for text in ("an earlier spec", "the owner's spec"):
        (a.folder / "Team" / "spec.md").write_text(text)
        a.run_once()
    email, member = _another_users_device(inproc_cloud, tmp_path)
    try:
        member.run_once()
        (member.folder / "Team").mkdir()
        mine = "private.txt" if holds == "own files" else "spec.md"
        texts = {"own files": "the member's private notes", "the share's files": "the owner's spec"}
        text = texts.get(holds, holds)
        set_aside = holds in ("own files", "a private spec")
        (member.folder / "Team" / mine).write_text(text)
        _share_and_accept(a, "/Team", email, member)
        assert not member.run_once().problems
        member.run_once()
        a.run_once()
        copy = f"Team (editor's conflicted copy {date.today()})"
        expected = {"Team": None, "Team/spec.md": b"the owner's spec"}
        if set_aside:
            expected |= {copy: None, f"{copy}/{mine}": text.encode()}
            [conflict] = member.state.conflicts()
            assert conflict.reason == "the folder Team shared with you took its name"
        else:
            assert member.state.conflicts() == []
        assert snapshot(member.folder) == expected
        root = member.api.call("/v1/list_folder", {"path": "", "recursive": True})["entries"]
        assert {e["path_display"] for e in root} == {f"/{p}" for p in expected}
    finally:
        member.close()
    assert snapshot(a.folder) == {"Team": None, "Team/spec.md": b"the owner's spec"}


def _saved_again_after_the_scan(a: SyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A round of `a` whose scan saw `doc.txt` gone, saved again ("v2, saved") before the
    round's operations run; then the round after it."""
    gate = SyncEngine._mass_delete_gate

    def written_meanwhile(self: SyncEngine, *args: Any, **kwargs: Any) -> Any:
        (self.folder / "doc.txt").write_text("v2, saved")  # after the scan, before the ops
        return gate(self, *args, **kwargs)

    monkeypatch.setattr(SyncEngine, "_mass_delete_gate", written_meanwhile)
    a.run_once()
    monkeypatch.undo()
    a.run_once()


def test_a_file_made_again_after_the_scan_saw_it_deleted_is_no_delete(
    engines: tuple[SyncEngine, SyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save that deletes the file, then writes it, across a scan: the round's delete went
    to the server anyway, the file with its history to the trash, and it came back as a new
    file. The delete looks at the disk first: the next round sends the edit."""
    a, b = engines
    synced_on_both(a, b, "doc.txt", "v1")
    (a.folder / "doc.txt").unlink()
    _saved_again_after_the_scan(a, monkeypatch)
    b.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {"doc.txt": b"v2, saved"}
    revs = a.api.call("/v1/revisions", {"path": "/doc.txt"})["entries"]
    assert [e["rev"] for e in revs] == [2, 1]  # one file, its history kept
    assert a.api.call("/v1/trash/list", {"path": ""})["entries"] == []


def test_a_save_that_renames_to_a_backup_across_a_scan_keeps_the_files_history(
    engines: tuple[SyncEngine, SyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """emacs saves by renaming the file to its backup (`doc.txt~`), then writing it anew.
    Across a scan, the round moved the file to the backup on the server, its id and
    history along, and the saved file came back as a new one, on every device. The move
    looks at the disk first: the next round sends the save as an edit, the backup as new."""
    a, b = engines
    synced_on_both(a, b, "doc.txt", "v1")
    fid = a.api.call("/v1/metadata", {"path": "/doc.txt"})["file_id"]
    (a.folder / "doc.txt").rename(a.folder / "doc.txt~")
    _saved_again_after_the_scan(a, monkeypatch)
    b.run_once()
    assert snapshot(a.folder) == snapshot(b.folder) == {"doc.txt": b"v2, saved", "doc.txt~": b"v1"}
    saved = a.api.call("/v1/metadata", {"path": "/doc.txt"})
    assert (saved["file_id"], saved["rev"]) == (fid, 2)  # one file, its history kept
    revs = a.api.call("/v1/revisions", {"path": "/doc.txt"})["entries"]
    assert [e["rev"] for e in revs] == [2, 1]


class _DriveAt(RealFilesystem):
    """A folder on disk where, while `mounted`, `Drive` and what it holds are on another
    filesystem (as `st_dev` tells; mounting needs privileges a test has not)."""

    mounted = False

    def _moved(self, rel: str, st: Stat) -> Stat:
        inside = rel == "Drive" or rel.startswith("Drive/")
        return replace(st, dev=st.dev + 1) if self.mounted and inside else st

    def lstat(self, rel: str) -> Stat:
        return self._moved(rel, super().lstat(rel))

    def scandir(self, rel: str) -> list[tuple[str, Stat]]:
        return [
            (name, self._moved(f"{rel}/{name}" if rel else name, st))
            for name, st in super().scandir(rel)
        ]


def test_a_drive_mounted_inside_the_folder_and_unmounted_deletes_nothing(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """A drive mounted at `Drive`, once unmounted, leaves an empty folder: what it held read
    as deleted here, and went from the server and every device (three files, under the
    mass-delete gate). A mount point is left alone for good: nothing of it goes up, and
    what the server held there (synced before it was mounted) comes back once unmounted."""
    a, b = engines
    (a.folder / "Drive").mkdir()
    for name in ("x.txt", "y.txt", "z.txt"):
        (a.folder / "Drive" / name).write_text(name)
    (a.folder / "top.txt").write_text("top")
    a.run_once()
    b.run_once()
    drive = _DriveAt(a.folder)
    a.scanner = Scanner(SafeFilesystem(drive))
    drive.mounted = True
    (a.folder / "Drive" / "new.txt").write_text("on the drive only")
    said: list[str] = []
    a.reporter.problem = said.append  # type: ignore[method-assign,assignment]
    a.run_once()
    assert said == [f"skipped Drive: {MOUNT_POINT}"]  # once, not every round
    b.run_once()
    assert snapshot(b.folder)["Drive/x.txt"] == b"x.txt"  # nothing deleted
    assert "Drive/new.txt" not in snapshot(b.folder)  # nor sent
    for name in ("x.txt", "y.txt", "z.txt", "new.txt"):  # unmounted: an empty folder
        (a.folder / "Drive" / name).unlink()
    drive.mounted = False
    a.run_once()
    b.run_once()
    want = {"Drive": None, "Drive/x.txt": b"x.txt", "Drive/y.txt": b"y.txt"}
    want |= {"Drive/z.txt": b"z.txt", "top.txt": b"top"}
    assert snapshot(a.folder) == snapshot(b.folder) == want
    assert a.api.call("/v1/trash/list", {"path": ""})["entries"] == []


def test_a_conflicted_copy_is_named_within_this_filesystems_longest_name(
    engines: tuple[SyncEngine, SyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """eCryptfs takes names of 143 bytes: a copy named to the server's 255 failed its
    rename every round, and the conflict never ended. (The limit is the filesystem's
    `NAME_MAX`, made 143 here.)"""
    a, b = engines
    name = "n" * 120 + ".txt"
    synced_on_both(a, b, name, "v1")
    monkeypatch.setattr(RealFilesystem, "_limits", lambda self: (143, 4096))
    (a.folder / name).write_text("A's edit")
    (b.folder / name).write_text("B's edit")
    a.run_once()
    assert not b.run_once().problems
    files = snapshot(b.folder)
    [copy] = [n for n in files if n != name]
    assert len(copy.encode()) <= 143 and "conflicted copy" in copy
    assert (files[name], files[copy]) == (b"A's edit", b"B's edit")


def test_a_file_in_place_of_a_share_waits_with_its_paused_leaving(
    engines: tuple[SyncEngine, SyncEngine], inproc_cloud: Cloud, tmp_path: Path
) -> None:
    """The gate pauses the leaving (its files count as deletions): the file made in the
    share's place went up each round meanwhile, refused (422: the share is still mounted
    there). It waits, and goes up once the leaving is approved."""
    a, _ = engines
    (a.folder / "Team").mkdir()
    (a.folder / "Team" / "spec.md").write_text("the spec")
    a.run_once()
    editor = _an_editor_of(a, "Team", inproc_cloud, tmp_path)
    try:
        editor.settings = replace(editor.settings, mass_delete_files=0)
        shutil.rmtree(editor.folder / "Team")
        (editor.folder / "Team").write_text("a note I called Team")
        paused = editor.run_once()
        assert paused.paused_deletes == 1
        assert [p for p in paused.problems if not p.startswith("paused:")] == []
        editor.allow_mass_delete = True
        assert not editor.run_once().problems
        root = editor.api.call("/v1/list_folder", {"path": "", "recursive": True})["entries"]
        assert [(e[".tag"], e["path_display"]) for e in root] == [("file", "/Team")]
    finally:
        editor.close()


def test_the_gates_window_counts_shares_left_not_moves_across_a_shares_edge(
    engines: tuple[SyncEngine, SyncEngine], inproc_cloud: Cloud, tmp_path: Path
) -> None:
    """Files moved into a shared folder go as an upload and a delete of their source: the
    delete counted in the window, and one deletion after paused the sync. Leaving a share,
    its files gone from here, counts: a slow `rm -rf` of the shares, one a round, added up
    to nothing."""
    a, _ = engines
    for team in ("T1", "T2"):
        (a.folder / team).mkdir()
        for i in range(3):
            (a.folder / team / f"{i}.txt").write_text(f"{team} {i}")
    a.run_once()
    email, editor = _another_users_device(inproc_cloud, tmp_path)
    try:
        for team in ("T1", "T2"):
            _share_and_accept(a, f"/{team}", email, editor)
        for i in range(8):
            (editor.folder / f"own{i}.txt").write_text(f"own {i}")
        editor.run_once()
        editor.settings = replace(editor.settings, mass_delete_files=5)
        for i in range(5):  # moved into a share: uploaded there, deleted from here
            (editor.folder / f"own{i}.txt").rename(editor.folder / "T1" / f"own{i}.txt")
        assert editor.run_once().paused_deletes == 0
        (editor.folder / "own5.txt").unlink()
        assert editor.run_once().paused_deletes == 0  # one deletion, not six
        shutil.rmtree(editor.folder / "T1")  # 8 files left behind: over the 5
        editor.allow_mass_delete = True
        assert editor.run_once().paused_deletes == 0
        shutil.rmtree(editor.folder / "T2")
        assert editor.run_once().paused_deletes == 0  # T1's were approved: 3 of …
        editor.settings = replace(editor.settings, mass_delete_files=2)
        (editor.folder / "own6.txt").unlink()
        paused = editor.run_once()  # 1 now, 3 with T2 in the window
        assert paused.paused_deletes == 1 and "(1 now, 3 in the last" in paused.problems[0]
    finally:
        editor.close()
