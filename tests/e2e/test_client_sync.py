"""Real clients (subprocesses, separate homes and folders) against the local cloud."""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tessera_client.api import Api, ApiError
from tessera_client.config import Home, hold_device_lock
from tessera_client.engine import SyncEngine
from tessera_client.fs import FOLDER_MARKER
from tessera_client.reporting import Reporter, SyncError
from tessera_client.state import MARKED_META
from tests.e2e.conftest import (
    PASSWORD,
    Cloud,
    Device,
    make_device,
    sign_in,
    snapshot,
    synced_on_both,
)

pytestmark = pytest.mark.e2e


def test_create_edit_rename_delete_undelete_across_devices(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email, cli=True)
    b = make_device(devices, tmp_path, inproc_cloud, "B", email)
    a.write("hello.txt", "hello")
    a.write("Docs/Ünïcödé — 日本語.md", "ünicode")
    a.write("Docs/deep/er/still/n.txt", "nested")
    (a.folder / "empty-folder").mkdir(parents=True)
    a.write("zero.bin", b"")
    a.sync()
    b.sync()
    assert snapshot(b.folder) == snapshot(a.folder)
    [moved_id] = {e["file_id"] for e in a.json("history", "Docs/deep/er/still/n.txt")["entries"]}

    # B edits, renames (a move, not a re-upload) and deletes; A follows
    b.write("hello.txt", "hello, edited")
    (b.folder / "Docs" / "deep" / "er" / "still" / "n.txt").rename(b.folder / "Docs" / "moved.txt")
    (b.folder / "zero.bin").unlink()
    b.sync()
    assert b.stats()["blocks_up"] == 1  # the edit; the move sent no block
    a.sync()
    assert snapshot(a.folder) == snapshot(b.folder)
    assert not (a.folder / "zero.bin").exists()
    assert (a.folder / "Docs" / "moved.txt").read_text() == "nested"

    # the move kept the file (its id and history: no delete and upload); the edit made a rev
    revs = a.json("history", "Docs/moved.txt")["entries"]
    assert {e["file_id"] for e in revs} == {moved_id}
    assert not any(e["path_display"].endswith("/n.txt") for e in a.json("trash"))
    assert [e["rev"] for e in a.json("history", "hello.txt")["entries"]][:2] == [2, 1]

    # undelete from the trash, and it comes back on both devices
    assert any(e["path_display"] == "/zero.bin" for e in a.json("trash"))
    a.run("undelete", "zero.bin")
    a.sync()
    b.sync()
    assert (a.folder / "zero.bin").exists() and (b.folder / "zero.bin").exists()

    # restore an old version
    a.run("restore", "hello.txt", "--rev", "1")
    a.sync()
    assert (a.folder / "hello.txt").read_text() == "hello"
    names = [e["name"] for e in a.json("ls")]
    assert {"hello.txt", "Docs", "zero.bin", "empty-folder"} <= set(names)


def test_large_multi_block_file_and_small_edit(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    b = make_device(devices, tmp_path, inproc_cloud, "B", email)
    data = bytearray(os.urandom(24 * 1024 * 1024))
    a.write("big/video.bin", bytes(data))
    a.sync()
    first = a.stats()
    assert first["blocks_up"] >= 6
    b.sync()
    assert (b.folder / "big" / "video.bin").read_bytes() == bytes(data)
    # one byte in the middle: only the block(s) around it go up
    data[len(data) // 2] ^= 0xFF
    a.write("big/video.bin", bytes(data))
    a.sync()
    assert a.stats()["block_bytes_up"] <= 8 * 1024 * 1024
    b.sync()
    assert (b.folder / "big" / "video.bin").read_bytes() == bytes(data)
    # and only they come down: the rest is read from B's copy (it fetched all 24 MiB)
    _only_changed_blocks_came_down(b, len(data))


def _only_changed_blocks_came_down(device: Device, size: int) -> None:
    """`device`'s last sync fetched a block or two (≤ 8 MiB) of a `size`-byte file, and
    read the rest from its own copy."""
    down = device.stats()
    assert down["block_bytes_down"] <= 8 * 1024 * 1024, down
    assert down["block_bytes_down"] + down["block_bytes_reused"] == size


def test_a_conflicts_server_side_comes_down_as_its_changed_blocks_only(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """The local file is moved aside as the conflicted copy first: the server's version,
    one block away from it, is read from the copy but for that block."""
    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    b = make_device(devices, tmp_path, inproc_cloud, "B", email)
    data = bytearray(os.urandom(16 * 1024 * 1024))
    a.write("big.bin", bytes(data))
    a.sync()
    b.sync()
    theirs, mine = bytearray(data), bytearray(data)
    theirs[100] ^= 0xFF
    mine[-100] ^= 0xFF
    a.write("big.bin", bytes(theirs))
    b.write("big.bin", bytes(mine))
    a.sync()
    b.sync()
    files = snapshot(b.folder)
    [copy] = [k for k in files if "conflicted copy" in k]
    assert (files["big.bin"], files[copy]) == (bytes(theirs), bytes(mine))
    _only_changed_blocks_came_down(b, len(theirs))


def test_conflict_from_two_devices_keeps_both(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    b = make_device(devices, tmp_path, inproc_cloud, "B", email)
    a.write("plan.txt", "v1")
    a.sync()
    b.sync()
    a.write("plan.txt", "A's edit")
    b.write("plan.txt", "B's edit!")
    a.sync()
    b.sync()
    a.sync()
    assert snapshot(a.folder) == snapshot(b.folder)
    files = snapshot(a.folder)
    assert files["plan.txt"] == b"A's edit"
    [copy] = [k for k in files if "conflicted copy" in k]
    assert copy.startswith("plan (B's conflicted copy ") and copy.endswith(").txt")
    assert files[copy] == b"B's edit!"
    assert [c["path"] for c in b.json("conflicts")] == [copy]


def test_modify_vs_delete_keeps_the_modification(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    b = make_device(devices, tmp_path, inproc_cloud, "B", email)
    a.write("notes.txt", "v1")
    a.write("other.txt", "v1")
    a.sync()
    b.sync()
    (a.folder / "notes.txt").unlink()  # A deletes, B edits
    b.write("notes.txt", "B kept working")
    a.write("other.txt", "A edits")  # and the other way round
    (b.folder / "other.txt").unlink()
    a.sync()
    b.sync()
    a.sync()
    assert (a.folder / "notes.txt").read_text() == "B kept working"
    assert (b.folder / "other.txt").read_text() == "A edits"
    assert snapshot(a.folder) == snapshot(b.folder)


def _team_with_a_viewer(
    cloud: Cloud, devices: list[Device], tmp_path: Path, path: str, text: str
) -> tuple[Device, Device]:
    """An owner's device with `path` (under `Team`) holding `text`, `Team` shared with a
    viewer, and the viewer's device: (owner, viewer)."""
    return _shared_team(cloud, devices, tmp_path, {path: text}, "viewer")


def _shared_team(
    cloud: Cloud, devices: list[Device], tmp_path: Path, files: dict[str, str], access: str
) -> tuple[Device, Device]:
    """An owner's device holding `files` (by path: under `Team`, or not), `Team` shared
    with a member of `access`, and the member's device (named as the access): (owner,
    member)."""
    owner = make_device(devices, tmp_path, cloud, "owner", cloud.user())
    member_email = cloud.user()
    member = make_device(devices, tmp_path, cloud, access, member_email)
    for path, text in files.items():
        owner.write(path, text)
    owner.sync()
    owner.run("share", "Team", member_email, "--access", access)
    member.run("accept", "Team")
    return owner, member


def test_a_share_reaches_the_member_only_once_they_accept_it(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """Sharing invites: nothing of the folder reaches the invitee's devices until they
    accept it (a stranger put any folder into anyone's tree, and made their devices
    download it). A declined invitation is gone, and the owner may invite them again; two
    invitations of one name are told apart by number."""
    owner = make_device(devices, tmp_path, inproc_cloud, "owner", inproc_cloud.user())
    email = inproc_cloud.user()
    member = make_device(devices, tmp_path, inproc_cloud, "member", email)
    owner.write("Team/spec.md", "the spec")
    owner.sync()
    said = " ".join(owner.run("share", "Team", email).stdout.split())
    assert f"Invited {email} to /Team as editor" in said
    told = " ".join(member.sync().stderr.split())
    assert f"{owner.email} invited you to the shared folder Team as editor" in told
    assert snapshot(member.folder) == {}
    [waiting] = member.json("shares")["invitations"]
    assert (waiting["name"], waiting["owner_email"], waiting["access"]) == (
        "Team",
        owner.email,
        "editor",
    )
    assert "tessera accept" in " ".join(member.run("shares").stdout.split())
    [share] = owner.json("shares")["shares"]
    assert [m["email"] for m in share["invited"]] == [email]
    missing = " ".join(member.run("accept", "Other", check=1).stderr.split())
    assert "no invitation named 'Other' is waiting for you (waiting: Team)" in missing

    assert "Declined Team" in member.run("decline", "team").stdout  # case aside
    assert member.json("shares") == {"shares": [], "invitations": []}
    assert owner.json("shares")["shares"][0]["invited"] == []
    owner.write("Plans/p.txt", "p")
    owner.sync()
    owner.run("share", "Plans", email)
    owner.run("share", "Team", email)
    said = " ".join(member.run("decline", "--from", owner.email.upper()).stdout.split())
    assert f"Declined Plans of {owner.email}. Declined Team of {owner.email}." in said
    assert member.json("shares")["invitations"] == []

    other = make_device(devices, tmp_path, inproc_cloud, "other", inproc_cloud.user())
    other.write("team/notes.txt", "other notes")
    other.sync()
    other.run("share", "team", email)
    owner.run("share", "Team", email, "--access", "Viewer")  # case aside
    neither = " ".join(member.run("decline", check=1).stderr.split())
    assert "name the invitation to decline, or give --from EMAIL" in neither
    both = " ".join(member.run("accept", "Team", check=1).stderr.split())
    assert "2 invitations are named 'Team'" in both and "give its number" in both
    mine = next(i for i in member.json("shares")["invitations"] if i["owner_email"] == owner.email)
    said = " ".join(member.run("accept", str(mine["ns_id"])).stdout.split())
    assert f"Joined Team of {owner.email} as viewer, at /Team" in said
    member.sync()
    assert snapshot(member.folder) == {"Team": None, "Team/spec.md": b"the spec"}
    assert [s["access"] for s in member.json("shares")["shares"]] == ["viewer"]
    said = " ".join(member.run("rm", "Team").stdout.split())  # a member's rm leaves
    assert "Left /Team: its files stay for the others" in said and "undelete" not in said


def test_shared_folder_viewer_cannot_change_it(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    owner, viewer = _team_with_a_viewer(inproc_cloud, devices, tmp_path, "Team/spec.md", "the spec")
    assert [s["access"] for s in viewer.json("shares")["shares"]] == ["viewer"]
    viewer.sync()
    assert (viewer.folder / "Team" / "spec.md").read_text() == "the spec"

    viewer.write("Team/spec.md", "viewer scribbles")
    viewer.sync()
    assert (viewer.folder / "Team" / "spec.md").read_text() == "the spec"
    [c] = viewer.json("conflicts")
    assert c["local_only"] and c["original"] == "Team/spec.md"
    assert (viewer.folder / c["path"]).read_text() == "viewer scribbles"
    owner.sync()
    assert (owner.folder / "Team" / "spec.md").read_text() == "the spec"
    assert not [p for p in snapshot(owner.folder) if "conflicted" in p]
    viewer.sync()  # quiescent: the local-only copy is never uploaded
    assert (viewer.folder / c["path"]).exists()


@pytest.mark.parametrize("then", ["made editor", "left"])
def test_a_viewers_local_only_copy_syncs_once_the_folder_may_take_it(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, then: str
) -> None:
    """A viewer's refused edit is kept in a local-only copy. Made an editor, or gone from
    the share (the folder theirs now), the copy stayed unsynced for good: the promoted
    editor's edit never reached the share, and a left folder was "kept here, deleted
    elsewhere" every round. Now it syncs as any file of theirs."""
    owner, viewer = _team_with_a_viewer(inproc_cloud, devices, tmp_path, "Team/spec.md", "the spec")
    viewer.sync()
    viewer.write("Team/spec.md", "viewer scribbles")
    viewer.sync()
    [c] = viewer.json("conflicts")
    assert c["local_only"]
    if then == "made editor":
        owner.run("share", "Team", viewer.email, "--access", "editor")
    else:
        viewer.run("unshare", "Team")
    said = " ".join(viewer.sync().stderr.split())
    assert "kept Team here" not in said
    [c] = viewer.json("conflicts")
    assert not c["local_only"]
    if then == "made editor":
        owner.sync()
        assert (owner.folder / c["path"]).read_text() == "viewer scribbles"
    else:
        listed = {e["path_display"] for e in viewer.json("ls", "Team")}
        assert "/" + c["path"] in listed  # the viewer's own folder now
        owner.sync()
        assert not (owner.folder / c["path"]).exists()


def test_a_viewers_deleted_folder_comes_back_with_its_files(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """The refused folder delete dropped the folder's contents from the device's copy of
    the server's listing: nothing recorded them any more, so they never came back."""
    owner, viewer = _team_with_a_viewer(inproc_cloud, devices, tmp_path, "Team/sub/x.txt", "x")
    viewer.sync()
    shutil.rmtree(viewer.folder / "Team" / "sub")
    viewer.sync()  # both deletes refused
    viewer.sync()
    assert (viewer.folder / "Team" / "sub" / "x.txt").read_text() == "x"
    owner.sync()
    assert (owner.folder / "Team" / "sub" / "x.txt").read_text() == "x"


def test_a_second_refused_edit_the_same_day_keeps_the_first_copy(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A viewer's refused edit is kept in a local-only conflicted copy; a second one the
    same day, after the owner changed the file, must not be renamed onto the first."""
    owner, viewer = _team_with_a_viewer(inproc_cloud, devices, tmp_path, "Team/x.txt", "owner v1")
    viewer.sync()
    viewer.write("Team/x.txt", "viewer edit #1")
    viewer.sync()
    owner.write("Team/x.txt", "owner v2")
    owner.sync()
    viewer.write("Team/x.txt", "viewer edit #2")
    viewer.sync()
    files = snapshot(viewer.folder)
    assert files["Team/x.txt"] == b"owner v2"
    copies = sorted(v or b"" for k, v in files.items() if "conflicted copy" in k)
    assert copies == [b"viewer edit #1", b"viewer edit #2"]


def test_mass_delete_pauses_until_confirmed(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    for i in range(12):
        a.write(f"f{i:02}.txt", f"file {i}")
    a.sync()
    for i in range(11):
        (a.folder / f"f{i:02}.txt").unlink()
    r = a.sync(check=3)
    assert "--allow-mass-delete" in r.stderr
    said = " ".join(r.stderr.split())
    assert "(11 gone here, to go from the server and every device)" in said
    assert len(a.json("ls")) == 12  # nothing deleted on the server
    a.sync("--allow-mass-delete")
    assert [e["name"] for e in a.json("ls")] == ["f11.txt"]


def test_client_killed_mid_upload_resumes_with_what_is_missing(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:

    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    data = os.urandom(40 * 1024 * 1024)
    a.write("big.bin", data)
    sent = a.sync_killed_midway(3)
    assert sent >= 3, "the upload finished before it could be killed"
    a.sync()
    stats = a.stats()
    total_blocks = (
        len(a.run("blocks", str(a.folder / "big.bin"), "--json").stdout.split('"id"')) - 1
    )
    assert stats["blocks_up"] <= total_blocks - sent
    b = make_device(devices, tmp_path, inproc_cloud, "B", email)
    b.sync()
    assert (b.folder / "big.bin").read_bytes() == data


def test_client_killed_mid_download_resumes_with_what_is_missing(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A device killed while a big file comes down keeps the blocks it wrote (its partial
    download): the next sync fetches only the rest, and no temp file is left after."""
    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    data = os.urandom(40 * 1024 * 1024)
    a.write("big.bin", data)
    a.sync()
    b = make_device(devices, tmp_path, inproc_cloud, "B", email)
    held = b.sync_killed_midway(8 * 1024 * 1024, progress="partial_bytes")
    assert held >= 8 * 1024 * 1024, "the download finished before it could be killed"
    assert not (b.folder / "big.bin").exists()
    b.sync()
    assert (b.folder / "big.bin").read_bytes() == data
    stats = b.stats()
    assert stats["block_bytes_reused"] >= held - 4 * 1024 * 1024  # (a torn last block)
    assert stats["block_bytes_down"] + stats["block_bytes_reused"] == len(data)
    assert b.partial_bytes() == 0


def test_a_file_longer_than_a_request_goes_up_in_parts(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A file of more blocks than one request carries (10,000, ~10 GiB: here 2, through
    the device's `batch_blocks`) goes up with its block list in parts, killed midway too,
    and comes down whole on another device."""
    import dataclasses

    import psycopg

    from tessera_client.config import Home

    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    home = Home(a.home)
    home.save_settings(dataclasses.replace(home.load_settings(), batch_blocks=2))
    data = os.urandom(12 * 1024 * 1024)  # ~12 blocks of ~1 MiB
    a.write("video.bin", data)
    a.write("small.txt", "a file in a batch of its own")
    a.sync_killed_midway()
    a.sync()
    assert sorted(e["name"] for e in a.json("ls")) == ["small.txt", "video.bin"]
    with psycopg.connect(inproc_cloud.conninfo) as db:
        appended = db.execute(
            "SELECT f.block_count FROM upload_files f JOIN upload_sessions s USING (upload_id)"
            " JOIN users u USING (user_id) WHERE u.email = %s",
            (email,),
        ).fetchall()
    # the whole list went in parts (a session killed while appending holds only some)
    manifest = json.loads(a.run("blocks", str(a.folder / "video.bin"), "--json").stdout)
    assert len(manifest["blocks"]) > 2
    assert max(count for (count,) in appended) == len(manifest["blocks"])
    b = make_device(devices, tmp_path, inproc_cloud, "B", email)
    b.sync()
    assert (b.folder / "video.bin").read_bytes() == data


def test_a_refused_sync_of_another_folder_leaves_the_commands_on_the_synced_one(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """`tessera sync DIR` for a folder this device does not sync (a subfolder, a typo) is
    refused, and `rm`, `restore` and `share` still map paths from the synced folder: they
    had been sent to the wrong files, `docs/report.txt` deleted as `/report.txt`."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    a.write("report.txt", "top")
    a.write("docs/report.txt", "in docs")
    a.sync()
    r = a.run("sync", str(a.folder / "docs"), "--once", check=None)
    assert r.returncode != 0 and "to sync both, use another TESSERA_HOME" in " ".join(
        r.stderr.split()
    )
    a.run("rm", str(a.folder / "docs" / "report.txt"))
    assert [e["path_display"] for e in a.json("trash")] == ["/docs/report.txt"]
    assert [e["name"] for e in a.json("ls")] == ["docs", "report.txt"]


def test_a_file_dated_past_2262_syncs(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """ext4 keeps mtimes up to 2446 (an archive's bogus date, `touch -d 2400-01-01`); past
    2262 the nanoseconds overflow SQLite's 64-bit integers, and every round failed as it
    recorded the file."""
    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    f = a.write("from-the-future.txt", "dated 2400")
    year_2400_ns = 13_569_465_600 * 10**9
    os.utime(f, ns=(year_2400_ns, year_2400_ns))
    if os.stat(f).st_mtime_ns < 2**63:
        pytest.skip("this filesystem keeps no mtime past 2262")
    a.sync()
    a.sync()  # and the next round finds it as it was recorded
    assert a.stats()["files_up"] == 0
    b = make_device(devices, tmp_path, inproc_cloud, "B", email)
    b.sync()
    assert (b.folder / "from-the-future.txt").read_text() == "dated 2400"


def test_an_expired_upload_session_is_dropped_and_started_afresh(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    import sqlite3
    import time

    from tessera_client.state import StateDB

    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    f = a.write("doc.bin", os.urandom(300_000))
    manifest = json.loads(a.run("blocks", str(f), "--json").stdout)
    a.home.mkdir(parents=True, exist_ok=True)
    state = StateDB(a.home / "state.db")
    needed = {
        b["id"]: [1, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="] for b in manifest["blocks"]
    }
    state.put_pending(
        "upload",
        "doc.bin",
        {
            "upload_id": "up_gone",
            "expires_at": time.time() + 3600,
            "content_hash": manifest["content_hash"],
            "needed": needed,
            "sent": [],
            "idempotency_key": "A-stale",
        },
    )
    state.close()
    a.sync(check=None)  # the stale session fails this round...
    a.sync()  # ...and a fresh one succeeds
    with sqlite3.connect(a.home / "state.db") as db:
        assert db.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
    assert [e["name"] for e in a.json("ls")] == ["doc.bin"]


def test_a_missing_synced_folder_is_not_created_empty(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """The synced folder is gone (an unmounted drive, a move): `tessera sync` refuses with
    what to do, instead of creating it empty, where every file reads as deleted here (up to
    9 files were below the mass-delete gate, and deleted on the server)."""
    import shutil

    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    for i in range(3):
        a.write(f"f{i}.txt", f"file {i}")
    a.sync()
    shutil.rmtree(a.folder)
    r = a.run("sync", str(a.folder), "--once", check=None)
    assert r.returncode != 0 and "missing" in r.stderr and "mount" in r.stderr
    assert not a.folder.exists()
    assert len(a.json("ls")) == 3  # nothing deleted on the server


def _numbered_files_synced(device: SyncEngine, count: int) -> None:
    """`count` files `f000.txt`, … synced from `device`."""
    for i in range(count):
        (device.folder / f"f{i:03}.txt").write_text(f"file {i}")
    device.run_once()


def _delete_numbered(device: SyncEngine, first: int, count: int) -> None:
    for i in range(first, first + count):
        (device.folder / f"f{i:03}.txt").unlink()


def test_more_deletions_than_the_file_limit_pause_whatever_their_share(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """The absolute limit (`mass_delete_files`, 50 by default: 200 of 1,000 files is only
    20 %) pauses on its own; the limit is lowered here so that the share rule, which needs
    at least `mass_delete_min` (10) deletions, cannot be what fires."""
    a, _ = engines
    a.settings = replace(a.settings, mass_delete_files=5)
    _numbered_files_synced(a, 30)
    _delete_numbered(a, 0, 6)  # 20 % of the files, fewer than mass_delete_min
    result = a.run_once()
    assert result.paused_deletes == 6 and len(a.state.base_tree()) == 30
    listed = a.api.call("/v1/list_folder", {"path": "", "recursive": True})["entries"]
    assert len(listed) == 30  # nothing deleted on the server


def test_deletions_a_few_files_a_round_add_up_to_a_mass_delete(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """A slow `rm -rf` (a network drive, a tool deleting file by file) reaches the daemon's
    rounds a few files at a time: each round below the thresholds, every file went, with no
    pause. The deletions of the last `mass_delete_window_s` count together; older ones do not."""
    a, _ = engines
    _numbered_files_synced(a, 100)
    _delete_numbered(a, 0, 20)
    assert a.run_once().paused_deletes == 0  # 20 of 100: below both limits
    _delete_numbered(a, 20, 20)
    paused = a.run_once()  # 20 of 80 alone, but 40 of 100 within the window
    assert paused.paused_deletes == 20 and len(a.state.base_tree()) == 80
    assert "(20 now, 20 in the last 10 minutes)" in paused.problems[0], paused.problems
    a.settings = replace(a.settings, mass_delete_window_s=0.0)  # the earlier ones are old
    assert a.run_once().paused_deletes == 0 and len(a.state.base_tree()) == 60


def test_deletions_the_server_refused_for_a_while_count_once(
    engines: tuple[SyncEngine, SyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate's window counts deletions done, not planned: four deletes the server
    refused for two rounds, planned again each round, had counted as twelve and paused."""
    a, _ = engines
    _numbered_files_synced(a, 20)
    _delete_numbered(a, 0, 4)
    call = a.api.call

    def refused(route: str, *args: Any, **kwargs: Any) -> Any:
        if route == "/v1/delete":
            raise ApiError(503, "unavailable", "try again", {})
        return call(route, *args, **kwargs)

    monkeypatch.setattr(a.api, "call", refused)
    for _ in range(2):
        assert a.round().paused_deletes == 0
    monkeypatch.undo()
    assert a.round().paused_deletes == 0 and len(a.state.base_tree()) == 16


class ProgressLog(Reporter):
    """The transfer progress an engine reports, per file, in order."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[int, int]]] = {}

    def transfer(self, path: str, done: int, total: int) -> None:
        self.seen.setdefault(path, []).append((done, total))


def test_a_large_transfers_progress_ends_at_its_size_and_is_forgotten(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """An upload counted its compressed bytes against the file's size, so a compressible
    file's bar stopped short and stayed on screen; and every file a daemon ever sent kept
    its counters for good."""
    a, b = engines
    a.reporter, b.reporter = ProgressLog(), ProgressLog()
    (a.folder / "log.txt").write_bytes(b"a line of a log that compresses well\n" * 300_000)
    a.run_once()
    b.run_once()
    for engine in (a, b):
        assert isinstance(engine.reporter, ProgressLog)
        steps = engine.reporter.seen["log.txt"]
        # counted to the end by the transfer itself, then ended (as any transfer is)
        assert steps[-2:] == [(11_100_000, 11_100_000)] * 2, steps[-3:]
        assert all(done <= total for done, total in steps)
        assert not engine._sizes and not engine._progress


def test_an_approved_mass_delete_approves_only_that_one(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """`--allow-mass-delete` lets the paused deletion through, not every later one: a daemon
    started with it pauses the next mass delete again."""
    a, _ = engines
    _numbered_files_synced(a, 24)
    _delete_numbered(a, 0, 12)
    a.allow_mass_delete = True  # what `tessera sync --allow-mass-delete` sets
    first = a.run_once()
    assert first.paused_deletes == 0 and len(a.state.base_tree()) == 12
    _delete_numbered(a, 12, 12)
    second = a.run_once()
    assert second.paused_deletes == 12 and len(a.state.base_tree()) == 12


def test_an_empty_mount_point_pauses_even_a_few_deletes(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """A drive not mounted under the synced folder leaves its mount point empty: below the
    mass-delete thresholds, every file was deleted on the server and the other device. A
    folder the user emptied still holds the hidden marker, and its deletions go."""
    a, b = engines
    for name in ("a.txt", "b.txt"):
        (a.folder / name).write_text(name)
    a.run_once()
    b.run_once()
    assert (a.folder / FOLDER_MARKER).is_file()

    (b.folder / "a.txt").unlink()  # emptied by its user: the marker stays
    (b.folder / "b.txt").unlink()
    assert b.run_once().paused_deletes == 0
    a.run_once()
    assert snapshot(a.folder) == {}

    (a.folder / "c.txt").write_text("c")
    a.run_once()
    b.run_once()
    for entry in a.folder.iterdir():  # the drive is unmounted: nothing at all is left
        entry.unlink()
    paused = a.run_once()
    assert paused.paused_deletes == 1 and "is the drive" in paused.problems[0], paused
    b.run_once()
    assert snapshot(b.folder) == {"c.txt": b"c"}


def test_a_folder_without_its_marker_syncs_nothing_until_it_is_back(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """Only the deletions of an empty mount point paused: the server's new files came down
    into it, and the next round, the folder no longer empty, deleted every other file on
    the server and the other devices. Another drive mounted there went up whole."""
    a, b = engines
    for name in ("a.txt", "b.txt", "c.txt"):
        (a.folder / name).write_text(name)
    a.run_once()
    b.run_once()
    for entry in a.folder.iterdir():  # a's drive is unmounted
        entry.unlink()
    (b.folder / "new.txt").write_text("made on b")
    b.run_once()
    for _ in range(2):
        paused = a.run_once()
        assert paused.paused_deletes == 3 and "is the drive" in paused.problems[0], paused
        assert snapshot(a.folder) == {}  # nothing came down into the mount point
    (a.folder / "other-drive.txt").write_text("not this folder's")  # another drive
    assert a.run_once().paused_deletes == 3
    b.run_once()
    assert set(snapshot(b.folder)) == {"a.txt", "b.txt", "c.txt", "new.txt"}

    (a.folder / "other-drive.txt").unlink()  # the drive is back, marker and all
    for name in ("a.txt", "b.txt", "c.txt", FOLDER_MARKER):
        shutil.copyfile(b.folder / name, a.folder / name)
    assert a.run_once().paused_deletes == 0
    assert set(snapshot(a.folder)) == {"a.txt", "b.txt", "c.txt", "new.txt"}


def test_a_marker_an_older_client_left_counts_as_this_folders(
    engines: tuple[SyncEngine, SyncEngine],
) -> None:
    """A client from before the note left the marker but no note in its state: the note is
    taken from the marker found there, or such a device never held anything back."""
    a, b = engines
    for name in ("a.txt", "b.txt"):
        (a.folder / name).write_text(name)
    a.run_once()
    b.run_once()
    a.state.set_meta(MARKED_META, None)  # an older client's state
    a.run_once()
    (a.folder / FOLDER_MARKER).unlink()  # another drive, holding one of the names
    (a.folder / "a.txt").unlink()
    paused = a.run_once()
    assert paused.paused_deletes == 1 and FOLDER_MARKER in paused.problems[0], paused
    b.run_once()
    assert set(snapshot(b.folder)) == {"a.txt", "b.txt"}


def test_a_round_that_could_read_nothing_says_so(engines: tuple[SyncEngine, SyncEngine]) -> None:
    """`.tesseraignore` that cannot be read (here a folder): the round looks at nothing, and
    `sync --once` had ended with "In sync"."""
    a, _ = engines
    (a.folder / "x.txt").write_text("x")
    (a.folder / ".tesseraignore").mkdir()
    result = a.run_once()
    assert any("nothing here was synced" in p for p in result.problems), result


def test_a_403_that_is_not_a_viewers_refusal_undoes_nothing(
    engines: tuple[SyncEngine, SyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A firewall's 403 (AWS WAF's rate rule answers `{"message": "Forbidden"}`) is not the
    server refusing a viewer: the edit stays where it is and goes up once the block lifts,
    instead of being renamed to a local-only conflicted copy and the server's file put
    back over it."""
    from tessera_client.api import ApiError

    a, b = engines
    synced_on_both(a, b, "notes.txt", "draft")
    (a.folder / "notes.txt").write_text("my edit")
    call = a.api.call

    def firewall(path: str, body: object = None, **kwargs: object) -> object:
        if path in ("/v1/uploads", "/v1/commit", "/v1/commit_batch"):
            raise ApiError(403, "http_error", "Forbidden", {})
        return call(path, body, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(a.api, "call", firewall)
    result = a.run_once()
    assert result.problems
    assert snapshot(a.folder) == {"notes.txt": b"my edit"}
    monkeypatch.undo()
    assert a.run_once().problems == []
    b.run_once()
    assert snapshot(b.folder) == {"notes.txt": b"my edit"}


def test_a_file_moved_into_or_out_of_a_shared_folder_moves_not_copies(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """The server moves only within a namespace (422 across a shared folder's edge): the
    client then deletes the source, if still the rev moved, and uploads the destination as
    a new file. Before, the source came back from the server: every such move was a copy."""
    files = {"Team/spec.md": "the spec", "notes.txt": "owner's notes"}
    owner, editor = _shared_team(inproc_cloud, devices, tmp_path, files, "editor")
    editor.sync()

    (owner.folder / "notes.txt").rename(owner.folder / "Team" / "notes.txt")  # in
    owner.sync()
    (editor.folder / "Team" / "spec.md").rename(editor.folder / "spec.md")  # out
    editor.sync()
    owner.sync()

    assert snapshot(owner.folder) == {"Team": None, "Team/notes.txt": b"owner's notes"}
    assert snapshot(editor.folder) == {
        "Team": None,
        "Team/notes.txt": b"owner's notes",
        "spec.md": b"the spec",
    }
    trash = {e["path_display"] for e in owner.json("trash")}
    assert {"/notes.txt", "/Team/spec.md"} <= trash


@pytest.mark.parametrize("how", ["deleted", "renamed"])
def test_a_member_removing_a_shared_folder_here_leaves_it_for_the_others(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, how: str
) -> None:
    """An editor's `rm -rf Team` was planned as a delete of each file: the folder was
    emptied for every member, then the editor left it. Renamed (a mount point moves nowhere
    on the server), each file was uploaded into the editor's own space and deleted from the
    share, past the mass-delete gate. Removing the mount point leaves the share now: its
    files stay for the others, and a renamed one's go up as the editor's own."""
    files = {"Team/spec.md": "the spec", "Team/plan/q1.txt": "the plan"}
    owner, editor = _shared_team(inproc_cloud, devices, tmp_path, files, "editor")
    editor.sync()
    team = snapshot(owner.folder)
    _remove_team(editor, how)
    editor.sync()
    owner.sync()
    assert snapshot(owner.folder) == team  # nothing left the owner's folder
    assert not owner.json("trash")
    members = {m["email"] for s in owner.json("shares")["shares"] for m in s["members"]}
    assert editor.email not in members  # the editor left
    mine = {"Team copy": None, "Team copy/spec.md": b"the spec", "Team copy/plan": None,
            "Team copy/plan/q1.txt": b"the plan"} if how == "renamed" else {}  # fmt: skip
    assert snapshot(editor.folder) == mine
    editor.sync()  # and it stays so
    assert snapshot(editor.folder) == mine


def _remove_team(device: Device, how: str) -> None:
    """`rm -rf Team` ("deleted") or `mv Team "Team copy"` ("renamed") on `device`."""
    if how == "deleted":
        shutil.rmtree(device.folder / "Team")
    else:
        (device.folder / "Team").rename(device.folder / "Team copy")


@pytest.mark.parametrize("how", ["deleted", "renamed"])
def test_the_owner_removing_a_folder_shared_with_others_here_keeps_it_for_them(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path, how: str
) -> None:
    """The owner's `rm -rf Team` was planned as a delete of each file: every member's files
    went to the trash, then the server refused the folder's own delete (others are in
    it), every round after. Renamed, each file went up into her own folders and was
    deleted from the share. Now the folder's own delete goes first: refused, the share
    stays whole for the others and comes back here (a renamed copy stays hers too), and
    she is told to unshare it first. Alone in it, the owner deletes it to the trash."""
    files = {"Team/spec.md": "the spec", "Team/plan/q1.txt": "the plan"}
    owner, editor = _shared_team(inproc_cloud, devices, tmp_path, files, "editor")
    editor.sync()
    team = snapshot(editor.folder)
    _remove_team(owner, how)
    said = " ".join(owner.sync(check=None).stderr.split())
    assert "Team stays shared, and comes back here: others are members" in said
    assert "(`tessera unshare Team`)" in said
    owner.sync()
    editor.sync()
    assert snapshot(editor.folder) == team  # nothing left the share
    assert not owner.json("trash")
    mine = {k.replace("Team", "Team copy", 1): v for k, v in team.items()}
    assert snapshot(owner.folder) == (team | mine if how == "renamed" else team)
    owner.sync()  # and it stays so, without a problem
    owner.run("unshare", "Team")
    shutil.rmtree(owner.folder / "Team")
    said = " ".join(owner.sync().stderr.split())
    assert "deleted Team, shared with nobody else (to the trash)" in said
    assert {e["path_display"] for e in owner.json("trash")} >= {"/Team", "/Team/spec.md"}


def test_the_owner_removes_a_member_and_the_share_leaves_their_device(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """`tessera unshare Team EMAIL`: the owner takes a member's access away (the API had
    it, the CLI had no way to say it). The folder leaves the member's device at its next
    sync, except an edit of theirs not yet synced, and stays the owner's."""
    files = {"Team/spec.md": "the spec", "Team/plan.txt": "the plan"}
    owner, editor = _shared_team(inproc_cloud, devices, tmp_path, files, "editor")
    editor.sync()
    team = snapshot(owner.folder)
    editor.write("Team/notes.txt", "not synced yet")
    said = owner.run("unshare", "Team", editor.email).stdout
    assert f"{editor.email} no longer has /Team, nor an invitation to it." in said
    [share] = owner.json("shares")["shares"]
    assert [m["email"] for m in share["members"]] == [owner.email]
    assert editor.json("shares") == {"shares": [], "invitations": []}
    editor.sync()
    assert snapshot(editor.folder) == {"Team": None, "Team/notes.txt": b"not synced yet"}
    owner.sync()
    assert snapshot(owner.folder) == team


def test_a_member_leaves_a_share_and_the_others_keep_it(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """`tessera unshare Team` by a member leaves it; the owner and their files stay."""
    owner, viewer = _team_with_a_viewer(inproc_cloud, devices, tmp_path, "Team/x.txt", "x")
    viewer.sync()
    assert "Left /Team" in viewer.run("unshare", "Team").stdout
    viewer.sync()
    assert snapshot(viewer.folder) == {}
    [share] = owner.json("shares")["shares"]
    assert viewer.email not in {m["email"] for m in share["members"]}
    owner.sync()
    assert (owner.folder / "Team" / "x.txt").read_text() == "x"
    said = owner.run("unshare", "Team").stdout  # everyone else: no one is left to remove
    assert "/Team is shared with no one now" in said


def test_account_shows_the_storage_used_of_the_quota(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """The storage used was shown once, at login: `tessera account` shows it any time."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    a.write("a.bin", "x" * 3000)
    a.sync()
    info = a.json("account")
    assert (info["email"], info["used_bytes"]) == (a.email, 3000)
    percent = 100 * 3000 / info["quota_bytes"]
    assert a.run("account").stdout.strip() == (
        f"{a.email}: 2.9 KiB of {info['quota_bytes'] / 2**30:.1f} GiB used ({percent:.0f} %)"
    )


def _folder_elsewhere(tmp_path: Path) -> Path:
    """A folder outside the synced one, for `tessera get` to save into."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return elsewhere


def test_get_saves_a_file_or_an_earlier_version_without_syncing(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """`tessera get`: a version seen in `history` could only be looked at by restoring it
    (a new version for every device), and a file only had by syncing the whole tree."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    first = os.urandom(9 * 1024 * 1024)  # several blocks, and a progress bar
    a.write("Docs/report.bin", first)
    a.sync()
    a.write("Docs/report.bin", first[:1000] + b"edited" + first[1000:])
    a.sync()
    elsewhere = _folder_elsewhere(tmp_path)
    said = a.run("get", "Docs/report.bin", "--rev", "1", "--to", str(elsewhere)).stdout
    assert said == f"Saved /Docs/report.bin (rev 1) as {elsewhere / 'report.bin'}.\n"
    assert (elsewhere / "report.bin").read_bytes() == first
    a.run("get", "Docs/report.bin", "--to", str(elsewhere / "now.bin"))
    assert (elsewhere / "now.bin").read_bytes() == (a.folder / "Docs/report.bin").read_bytes()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["now.bin", "report.bin"]  # no temp
    # never over a file, and nothing changed on the server
    refused = a.run("get", "Docs/report.bin", "--to", str(elsewhere / "now.bin"), check=1)
    assert "exists" in refused.stderr
    assert [e["rev"] for e in a.json("history", "Docs/report.bin")["entries"]] == [2, 1]
    assert "a folder has none" in a.run("get", "Docs", "--rev", "1", check=1).stderr


def test_get_saves_a_file_from_the_trash_without_bringing_it_back(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A deleted file could only be looked at by an undelete, which put it back on every
    device. `get` takes it (any version) from the trash; it stays deleted."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    a.write("Docs/plan.txt", "first plan")
    a.sync()
    a.write("Docs/plan.txt", "last plan")
    a.sync()
    (a.folder / "Docs" / "plan.txt").unlink()
    a.sync()
    elsewhere = _folder_elsewhere(tmp_path)
    said = a.run("get", "Docs/plan.txt", "--to", str(elsewhere)).stdout
    assert said == f"Saved /Docs/plan.txt (from the trash) as {elsewhere / 'plan.txt'}.\n"
    assert (elsewhere / "plan.txt").read_text() == "last plan"
    a.run("get", "Docs/plan.txt", "--rev", "1", "--to", str(elsewhere / "first.txt"))
    assert (elsewhere / "first.txt").read_text() == "first plan"
    # a new file at the path is the one `get PATH` takes; the deleted one is had by its id
    [trashed] = a.json("trash")
    a.write("Docs/plan.txt", "a new plan")
    a.sync()
    a.run("get", "--id", trashed["file_id"], "--to", str(elsewhere / "by-id.txt"))
    assert (elsewhere / "by-id.txt").read_text() == "last plan"
    a.sync()
    assert (a.folder / "Docs" / "plan.txt").read_text() == "a new plan"
    assert [e["file_id"] for e in a.json("trash")] == [trashed["file_id"]]  # still deleted
    # a deleted folder is not a file: said so, with what to do
    shutil.rmtree(a.folder / "Docs")
    a.sync()
    refused = a.run("get", "Docs", check=1).stderr
    assert "Docs is a deleted folder" in refused and "tessera undelete" in refused


def test_get_saves_a_folder_and_runs_again_for_what_is_missing(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A folder comes whole (an empty one too). Run again, it takes what is missing and
    never writes over a file, which it reports."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    a.write("Docs/a.txt", "a")
    a.write("Docs/c.txt", "c")
    a.write("Docs/sub/b.bin", os.urandom(2 * 1024 * 1024))
    (a.folder / "Docs" / "empty").mkdir()
    a.sync()
    elsewhere = _folder_elsewhere(tmp_path)
    said = a.run("get", "Docs", "--to", str(elsewhere)).stdout
    assert said == f"Saved /Docs as {elsewhere / 'Docs'}: 3 files.\n"
    assert snapshot(elsewhere) == {
        k: v for k, v in snapshot(a.folder).items() if k.startswith("Docs")
    }
    (elsewhere / "Docs" / "a.txt").unlink()
    (elsewhere / "Docs" / "sub" / "b.bin").write_bytes(b"the user's own")
    again = a.run("get", "Docs", "--to", str(elsewhere), check=1)
    assert again.stdout.endswith(": 1 file, 1 there already.\n")
    assert "left out sub/b.bin: something else is there" in again.stderr
    assert (elsewhere / "Docs" / "a.txt").read_text() == "a"
    assert (elsewhere / "Docs" / "sub" / "b.bin").read_bytes() == b"the user's own"
    # a file where the folder would go: said in words, not "[Errno 17] File exists"
    (elsewhere / "old.txt").write_text("the user's own")
    refused = a.run("get", "Docs", "--to", str(elsewhere / "old.txt"), check=1).stderr
    assert "is a file, not a folder; give --to a folder, or a new name" in " ".join(refused.split())
    assert (elsewhere / "old.txt").read_text() == "the user's own"
    # a rev below 1: typer's own words, before any call (pydantic's had come back)
    assert "--rev" in a.run("get", "Docs/a.txt", "--rev", "0", check=2).stderr


def test_unsharing_a_folder_that_is_not_shared_says_so(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user())
    a.write("Mine/x.txt", "x")
    a.sync()
    assert "not a shared folder" in a.run("unshare", "Mine", check=1).stderr


def test_leaving_a_large_share_waits_for_the_mass_delete_approval(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """Leaving takes its files off every device of the user, and the member cannot undo
    it (only the owner can share again): an `rm -rf ~/Tessera/*` left every share at once,
    unasked. The files of the shares a round would leave count as its deletions."""
    files = {f"Team/f{i:02}.txt": f"file {i}" for i in range(12)}
    owner, viewer = _shared_team(inproc_cloud, devices, tmp_path, files, "viewer")
    viewer_email = viewer.email
    viewer.sync()
    shutil.rmtree(viewer.folder / "Team")
    r = viewer.sync(check=3)
    assert "--allow-mass-delete" in r.stderr
    said = " ".join(r.stderr.split())  # it said "deleting them everywhere" before
    assert "(12 in shared folders left, to go from your other devices)" in said
    members = {m["email"] for s in owner.json("shares")["shares"] for m in s["members"]}
    assert viewer_email in members  # not left: paused
    viewer.sync("--allow-mass-delete")
    members = {m["email"] for s in owner.json("shares")["shares"] for m in s["members"]}
    assert viewer_email not in members
    assert len(owner.json("ls", "Team")) == 12


def test_a_file_moved_into_a_read_only_share_stays_on_the_server(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """The server refuses the move (422: across a shared folder's edge), then the upload
    into the viewer's share (403). The client deleted the source before the upload was
    refused: the file was gone from the server and every other device."""
    owner, viewer = _team_with_a_viewer(inproc_cloud, devices, tmp_path, "Team/spec.md", "x")
    laptop = make_device(devices, tmp_path, inproc_cloud, "laptop", viewer.email)
    viewer.write("notes.txt", "the viewer's notes")
    viewer.sync()
    laptop.sync()

    (viewer.folder / "notes.txt").rename(viewer.folder / "Team" / "notes.txt")
    viewer.sync()
    viewer.sync()
    laptop.sync()
    owner.sync()

    assert (viewer.folder / "notes.txt").read_text() == "the viewer's notes"
    [c] = viewer.json("conflicts")
    assert c["local_only"] and c["original"] == "Team/notes.txt"
    assert (viewer.folder / c["path"]).read_text() == "the viewer's notes"
    assert (laptop.folder / "notes.txt").read_text() == "the viewer's notes"
    assert not viewer.json("trash")
    assert "Team/notes.txt" not in snapshot(owner.folder)


def test_a_viewers_rename_of_a_file_edited_since_records_nothing_the_server_lacks(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A viewer renames a file the owner has edited since: the move is refused (403), and
    the edit's download planned where the file was to go had come down there all the same,
    recorded as synced: a `spec2.md` no server holds, and the viewer's own rename lost."""
    owner, viewer = _team_with_a_viewer(inproc_cloud, devices, tmp_path, "Team/spec.md", "v1")
    viewer.sync()
    owner.write("Team/spec.md", "v2, the owner's")
    owner.sync()
    (viewer.folder / "Team" / "spec.md").rename(viewer.folder / "Team" / "spec2.md")
    viewer.sync()
    viewer.sync()
    owner.sync()
    assert (viewer.folder / "Team" / "spec.md").read_text() == "v2, the owner's"
    kept = {p: text for p, text in snapshot(viewer.folder).items() if "spec2" in p}
    assert list(kept.values()) == [b"v1"], kept  # the viewer's rename, not the owner's edit
    assert not any("spec2" in p for p in snapshot(owner.folder))


def test_a_viewers_rename_in_case_only_is_put_back_once(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A viewer renames a shared file in case only: the move is refused (403), and its
    record forgotten. The next round had recorded the server's spelling and the one after
    sent the move again, refused again: a problem every other sync, without end. Now the
    server's spelling, found with neither spelling synced, is put back here, once."""
    owner, viewer = _team_with_a_viewer(inproc_cloud, devices, tmp_path, "Team/spec.md", "v1")
    viewer.sync()
    (viewer.folder / "Team" / "spec.md").rename(viewer.folder / "Team" / "SPEC.md")
    first = viewer.sync(check=None)
    assert "may not change it" in first.stderr
    for _ in range(2):
        viewer.sync()  # and no problem again
    assert sorted(os.listdir(viewer.folder / "Team")) == ["spec.md"]
    owner.sync()
    assert sorted(os.listdir(owner.folder / "Team")) == ["spec.md"]


def test_undelete_by_id_reaches_either_of_two_files_deleted_at_one_path(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A path names the file deleted last: the one deleted before it is reached by its id."""
    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user(), cli=True)
    for text in ("first notes", "second notes"):
        a.write("notes.txt", text)
        a.sync()
        (a.folder / "notes.txt").unlink()
        a.sync()
    trashed = sorted(
        (e for e in a.json("trash") if e["path_display"] == "/notes.txt"),
        key=lambda e: e["deleted_at"],
    )
    assert len(trashed) == 2 and trashed[0]["file_id"] != trashed[1]["file_id"]
    assert trashed[0]["file_id"] in a.run("trash").stdout  # the table shows the ids

    both = a.run("undelete", "notes.txt", "--id", trashed[0]["file_id"], check=1)
    assert "not both" in both.stdout + both.stderr
    a.run("undelete", "--id", trashed[0]["file_id"])
    a.sync()
    assert (a.folder / "notes.txt").read_text() == "first notes"


def test_logout_ends_the_session_on_the_server_too(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """`tessera logout` only deleted the device's tokens: a copy of its refresh token (a
    stolen laptop's backup) kept working for 30 days. And a running sync wrote the tokens
    back at its next refresh, so the device was logged in again."""
    import httpx

    a = make_device(devices, tmp_path, inproc_cloud, "A", inproc_cloud.user(), cli=True)
    refresh = json.loads((a.home / "tokens.json").read_text())["refresh_token"]
    with closing(hold_device_lock(Home(a.home))):  # a sync running on this device
        busy = a.run("logout", check=1)
        assert "a sync is running on this device" in " ".join((busy.stdout + busy.stderr).split())
    assert (a.home / "tokens.json").exists()  # still logged in
    out = a.run("logout").stdout
    assert "ended on the server too" in " ".join(out.split())
    assert not (a.home / "tokens.json").exists()
    r = httpx.post(inproc_cloud.url + "/v1/auth/token", json={"refresh_token": refresh})
    assert r.status_code == 401 and "signed out" in r.json()["error"]["message"]
    assert "Not logged in" in a.run("logout").stdout


def _folder_of_length(base: Path, length: int) -> Path:
    """A new folder under `base` whose absolute path is exactly `length` bytes."""
    path = base
    while (room := length - len(os.fsencode(path)) - 1) > 0:  # 1: the slash
        path = path / ("d" * (room if room <= 200 else min(200, room - 2)))  # never 0 left
    assert len(os.fsencode(path)) == length, path
    path.mkdir(parents=True)
    return path


@dataclass
class _DeepDevice(Device):
    """A device whose synced folder is `deep` (its home stays short: SQLite's own limit on
    a database's path is far below PATH_MAX)."""

    deep: Path = Path()

    @property
    def folder(self) -> Path:
        return self.deep


def test_a_path_too_long_for_this_device_is_refused_before_its_blocks_come(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """B's synced folder is deep: the server's path fits A's disk, not B's PATH_MAX. The
    temp file's short name fitted where the file's did not, so every round fetched the
    whole file only to fail at the final rename."""
    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    rel = "/".join(["p" * 200] * 8 + ["f" * 200 + ".bin"])  # 1,812 bytes: the server keeps it
    a.write(rel, os.urandom(300_000))
    a.write("short.txt", "fits everywhere")
    a.sync()
    # B's folder is as deep as leaves the file's folder (and a temp file in it) within
    # PATH_MAX, and the file itself over it
    limit = os.pathconf(tmp_path, "PC_PATH_MAX")
    parent = len(rel) - len("f" * 200 + ".bin") - 1
    deep = _folder_of_length(tmp_path / "b-root", limit - parent - 100 - 1)
    b = _DeepDevice("B", tmp_path, inproc_cloud.url, email, deep=deep)
    sign_in(inproc_cloud, email, Home(b.home), "B")
    devices.append(b)
    synced = b.sync(check=None)
    assert "would be" in synced.stdout + synced.stderr, synced.stdout + synced.stderr
    assert (b.folder / "short.txt").read_text() == "fits everywhere"
    assert b.stats()["block_bytes_down"] < 300_000  # short.txt's, not the long one's


def test_a_block_lost_from_the_store_is_reported_and_mended_within_one_sync(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """A bug deletes a stored block. The device that meets it tells the server, whose scrub
    brings it back at once (the store kept what the delete removed), and the same `tessera
    sync` downloads the file on its next try: no wait for the weekly scrub, no problem left."""
    from tessera.adapters.local.block_store import FilesystemBlockStore
    from tessera.blocks import scan_file
    from tessera.domain.object_keys import canonical_key

    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    b = make_device(devices, tmp_path, inproc_cloud, "B", email)
    data = os.urandom(5 * 1024 * 1024)  # past the 4 MiB largest block: two at least
    a.write("photo.raw", data)
    a.sync()
    lost = scan_file(a.folder / "photo.raw").blocks[1].id
    store = FilesystemBlockStore(inproc_cloud.root / "state" / "blocks", "http://x", bytes(32))

    def ready() -> bool:
        """Dedup verified the block, and the cloud's first scrub is over (its inventory
        would find the loss itself)."""
        with psycopg.connect(inproc_cloud.conninfo) as conn:
            runs = conn.execute("SELECT 1 FROM maintenance_runs WHERE step = 'scrub'").fetchall()
        return bool(runs) and store.head(canonical_key(lost)) is not None

    deadline = time.monotonic() + 60
    while not ready():
        assert time.monotonic() < deadline, "the local cloud's maintenance never ran"
        time.sleep(0.2)
    store.delete(canonical_key(lost))
    r = b.sync()
    assert (b.folder / "photo.raw").read_bytes() == data
    assert "reported: a check of the stored block is queued" in r.stderr


def test_a_folder_synced_for_one_account_is_not_synced_into_another(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    """Logged in as another user on a device that syncs a folder: the next sync put every
    file of the first user's into the second's account, and the second's into the folder."""
    frank, carol = inproc_cloud.user(), inproc_cloud.user()
    d = make_device(devices, tmp_path, inproc_cloud, "D", frank, cli=True)
    d.write("frank.txt", "frank's own")
    d.sync()
    d.email = carol
    login = d.run("login", "--server", d.server, "--email", carol, "--password", PASSWORD)
    assert f"syncs {d.folder} for {frank}" in " ".join(login.stderr.split())  # (unwrapped)
    refused = " ".join(d.sync(check=1).stderr.split())
    assert f"holds files synced for {frank}" in refused and "another TESSERA_HOME" in refused
    assert d.json("ls") == []  # nothing of frank's in carol's account
    d.email = frank
    d.login()
    assert "In sync" in d.sync().stdout
    assert snapshot(d.folder) == {"frank.txt": b"frank's own"}


def test_a_device_may_sync_another_folder_instead(inproc_cloud: Cloud, tmp_path: Path) -> None:
    """A device bound to one folder (a typo `tessera sync` created, a folder moved) had no
    way to sync another but a new TESSERA_HOME. `--instead` leaves the old one as it is,
    and the new one starts as at a first sync: nothing in either is taken for deleted."""
    home = sign_in(inproc_cloud, inproc_cloud.user(), Home(tmp_path / "home"), "D")
    old, new = tmp_path / "Tesera", tmp_path / "Tessera"

    def engine(folder: Path, *, instead: bool = False) -> SyncEngine:
        api = Api(inproc_cloud.url, home)
        return SyncEngine(home, home.load_settings(), folder, api, instead=instead)

    with closing(engine(old)) as first:  # (created: it did not exist)
        (old / "notes.txt").write_text("kept on the server")
        assert not first.run_once().problems
        first.state.set_meta("paused_deletes", "60")  # (the old folder's, as paused)
        first.state.set_meta("status", f"{old}: up to date")
        first.state.add_conflict("notes (copy).txt", "notes.txt", "edited", local_only=False)
    with pytest.raises(SyncError, match="--instead"):
        engine(new)
    new.mkdir()
    (new / "mine.txt").write_text("only here")
    with closing(engine(new, instead=True)) as second:
        # nothing of the old folder's is told of the new one
        assert second.state.get_meta("status") is None and second.state.conflicts() == []
        assert second.state.get_meta("paused_deletes") is None
        assert not second.run_once().problems
    assert snapshot(new) == {"notes.txt": b"kept on the server", "mine.txt": b"only here"}
    assert snapshot(old) == {"notes.txt": b"kept on the server"}  # left as it was
    with closing(engine(new)) as again:  # bound to the new one from now on
        assert again.run_once().ops == 0
