"""list_folder / continue / longpoll and cursors, against real PostgreSQL and LISTEN/NOTIFY."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import threading
import time
import zlib
from datetime import timedelta
from unittest import mock

import pytest

from tessera.domain import files, listing, sharing
from tessera.domain.errors import InvalidCursor, InvalidPath, NotFound
from tessera.domain.models import (
    DeleteRequest,
    InvitationRequest,
    ListFolderResponse,
    LongpollRequest,
    MoveRequest,
    ShareRequest,
    UnshareRequest,
    dump,
)
from tessera.domain.services import Services
from tessera.ports import Principal

from .conftest import put_file, share_with


def _paths(result: ListFolderResponse) -> list[tuple[str, str]]:
    return [(e.tag, e.path_display) for e in result.entries]


def _drain(
    svc: Services, who: Principal, cursor: str, limit: int | None = None
) -> tuple[list[tuple[str, str]], str]:
    out: list[tuple[str, str]] = []
    while True:
        page = listing.list_folder_continue(svc, who, cursor, limit)
        out += _paths(page)
        cursor = page.cursor
        if not page.has_more:
            return out, cursor


@pytest.mark.parametrize("letter", ["a", "é", "中", "😀"])
def test_a_page_of_long_names_stays_within_what_a_lambda_answer_holds(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch, letter: str
) -> None:
    """A page was bounded by its count alone: 2,000 entries of long non-Latin paths came
    to 8.7 MB in Lambda's envelope (escaped twice), past its 6 MB, so the same page failed
    on every retry. Pages now end at `PAGE_BYTES` (lowered here), each entry once."""
    monkeypatch.setattr(listing, "PAGE_BYTES", 40_000)
    longest = letter * (250 // len(letter.encode()))  # a name holds 255 bytes
    names = [f"{n:02}{longest}" for n in range(12)]
    for name in names:
        files.create_folder(services, alice, f"/{name}")
    page = listing.list_folder(services, alice, "", True, None)
    seen, pages = [e.name for e in page.entries], [page]
    while page.has_more:
        page = listing.list_folder_continue(services, alice, page.cursor, None)
        seen += [e.name for e in page.entries]
        pages.append(page)
    assert sorted(seen) == names  # each once
    if letter != "a":
        assert len(pages) > 1
    for p in pages:  # the body as the api function answers it, in Lambda's envelope
        enveloped = json.dumps({"body": json.dumps(dump(p), separators=(",", ":"))})
        assert len(enveloped) <= listing.PAGE_BYTES


def test_list_non_recursive_and_recursive(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/a.txt", b"a")
    put_file(services, alice, "/Docs/b.txt", b"b")
    put_file(services, alice, "/Docs/Sub/c.txt", b"c")
    top = listing.list_folder(services, alice, "/", False, None)
    assert _paths(top) == [("file", "/a.txt"), ("folder", "/Docs")]
    docs = listing.list_folder(services, alice, "/docs", False, None)
    assert _paths(docs) == [("file", "/Docs/b.txt"), ("folder", "/Docs/Sub")]
    everything = listing.list_folder(services, alice, "", True, None)
    assert [p for _, p in _paths(everything)] == [
        "/a.txt",
        "/Docs",
        "/Docs/b.txt",
        "/Docs/Sub",
        "/Docs/Sub/c.txt",
    ]


def test_listing_a_mount_spelled_with_another_length(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """The listed folder is found inside a mount reached in a spelling of another length
    (case folding: "ß" → "ss")."""
    put_file(services, alice, "/Straße/Sub/a", b"a")
    sharing.account(services, bob)
    assert share_with(services, alice, "/Straße", bob, "viewer").path_display == "/Straße"
    for who in (alice, bob):
        sub = listing.list_folder(services, who, "/STRASSE/sub", False, None)
        assert _paths(sub) == [("file", "/Straße/Sub/a")]


def test_paging_then_continue_sees_only_changes(services: Services, alice: Principal) -> None:
    for i in range(7):
        put_file(services, alice, f"/f{i}", b"x")
    first = listing.list_folder(services, alice, "/", True, 3)
    assert first.has_more and len(first.entries) == 3
    rest, cursor = _drain(services, alice, first.cursor, 3)
    assert sorted(p for _, p in _paths(first)) + sorted(p for _, p in rest) == [
        f"/f{i}" for i in range(7)
    ]
    assert _drain(services, alice, cursor)[0] == []
    put_file(services, alice, "/f1", b"y", parent_rev=1)
    files.delete(services, alice, DeleteRequest(path="/f2"))
    files.move(services, alice, MoveRequest(from_path="/f3", to_path="/moved/f3"))
    changes, cursor = _drain(services, alice, cursor)
    assert changes == [
        ("file", "/f1"),
        ("deleted", "/f2"),
        ("folder", "/moved"),
        ("deleted", "/f3"),
        ("file", "/moved/f3"),
    ]
    assert _drain(services, alice, cursor)[0] == []


def test_continue_is_scoped_to_the_listed_folder(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/A/x", b"x")
    cursor = listing.list_folder(services, alice, "/A", False, None).cursor
    put_file(services, alice, "/B/y", b"y")  # outside
    put_file(services, alice, "/A/deep/z", b"z")  # below a child: only the child folder shows
    put_file(services, alice, "/A/w", b"w")
    changes, _ = _drain(services, alice, cursor)
    assert changes == [("folder", "/A/deep"), ("file", "/A/w")]


def test_listing_missing_or_file_or_bad_path(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/f", b"f")
    with pytest.raises(NotFound):
        listing.list_folder(services, alice, "/nope", False, None)
    with pytest.raises(Exception, match="not a folder"):
        listing.list_folder(services, alice, "/f", False, None)
    with pytest.raises(InvalidPath):
        listing.list_folder(services, alice, "/../x", False, None)


def test_a_forged_cursor_loads_no_key(services: Services, alice: Principal) -> None:
    """A cursor names the key version it is signed with, and anyone signed in can send one:
    the version is checked against the known ones before any secret is loaded (on AWS,
    loading an unknown version was an SSM GetParameter per forged cursor)."""
    real_load = services.keys._load_secret
    loaded: list[int] = []

    def load(version: int) -> bytes:
        loaded.append(version)
        return real_load(version)

    with mock.patch.object(services.keys, "_load_secret", load):
        for version in ("99", "0", "-1", "9" * 1200):
            with pytest.raises(InvalidCursor):
                listing.list_folder_continue(services, alice, f"c1.{version}.e30.AAAA", None)
    assert loaded == []


def test_a_cursor_issued_before_compression_still_continues(
    services: Services, alice: Principal
) -> None:
    """Devices hold c1 cursors (plain JSON) from before c2 (compressed): they go on."""
    put_file(services, alice, "/a", b"a")
    cursor = listing.list_folder(services, alice, "/", True, None).cursor
    tag, version, payload, _ = cursor.split(".")
    assert tag == "c2"
    plain = zlib.decompress(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body = f"c1.{version}." + base64.urlsafe_b64encode(plain).decode().rstrip("=")
    key = listing._cursor_key(services.keys, int(version))
    sig = hmac.new(key, body.encode(), hashlib.sha256).digest()
    old = body + "." + base64.urlsafe_b64encode(sig).decode().rstrip("=")
    put_file(services, alice, "/b", b"b")
    page = listing.list_folder_continue(services, alice, old, None)
    assert [e.path_display for e in page.entries] == ["/b"]


def test_forged_and_foreign_cursors(services: Services, alice: Principal, bob: Principal) -> None:
    put_file(services, alice, "/private", b"p")
    cursor = listing.list_folder(services, alice, "/", True, None).cursor
    with pytest.raises(InvalidCursor, match="another user"):
        listing.list_folder_continue(services, bob, cursor, None)
    tag, version, payload, sig = cursor.split(".")
    tampered = ".".join(
        [tag, version, payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1], sig]
    )
    for bad in [tampered, "garbage", cursor[:-3], "c1.999.e30.AAAA", ""]:
        with pytest.raises(InvalidCursor):
            listing.list_folder_continue(services, alice, bad, None)
    with pytest.raises(InvalidCursor):
        listing.longpoll(services, bob, LongpollRequest(cursor=cursor, timeout=1))


def test_longpoll_wakes_on_commit_and_times_out(services: Services, alice: Principal) -> None:
    put_file(services, alice, "/seed", b"s")
    cursor = listing.list_folder(services, alice, "/", True, None).cursor
    started = time.monotonic()
    quiet = listing.longpoll(services, alice, LongpollRequest(cursor=cursor, timeout=1))
    assert quiet.changes is False and time.monotonic() - started >= 0.9
    threading.Timer(0.3, lambda: put_file(services, alice, "/new", b"n")).start()
    started = time.monotonic()
    woke = listing.longpoll(services, alice, LongpollRequest(cursor=cursor, timeout=8))
    assert woke.changes is True and time.monotonic() - started < 5


def test_a_configured_backoff_is_in_every_long_poll_answer(
    services: Services, alice: Principal
) -> None:
    """`longpoll_backoff_s` sheds load: each answer tells the device to wait before its
    next long-poll (0, the default, says nothing)."""
    cursor = listing.list_folder(services, alice, "/", True, None).cursor
    request = LongpollRequest(cursor=cursor, timeout=1)
    assert listing.longpoll(services, alice, request).backoff is None
    shed = dataclasses.replace(
        services, settings=dataclasses.replace(services.settings, longpoll_backoff_s=7)
    )
    assert listing.longpoll(shed, alice, request).backoff == 7


def test_a_cursor_older_than_the_feeds_memory_is_told_to_list(
    services: Services, alice: Principal
) -> None:
    # The changes table keeps 7 days: a long-poll on an older cursor waited for changes it
    # no longer holds, while list_folder/continue had them. Now it answers at once.
    put_file(services, alice, "/seed", b"s")
    cursor = listing.list_folder(services, alice, "/", True, None).cursor
    request = LongpollRequest(cursor=cursor, timeout=30)
    assert listing.plan_longpoll(services, alice, request).ready is False
    later = services.clock.now() + timedelta(seconds=services.settings.longpoll_cursor_max_age_s)
    aged = dataclasses.replace(services, clock=mock.Mock(now=lambda: later + timedelta(hours=1)))
    assert listing.plan_longpoll(aged, alice, request).ready is True
    fresh = listing.list_folder_continue(aged, alice, cursor, None).cursor  # what it does next
    assert listing.plan_longpoll(aged, alice, LongpollRequest(cursor=fresh)).ready is False


def test_share_and_unshare_show_up_in_continue(
    services: Services, alice: Principal, bob: Principal
) -> None:
    put_file(services, alice, "/Team/plan.txt", b"plan")
    put_file(services, bob, "/Team/bobs.txt", b"bob already has a /Team")
    a_cursor = listing.list_folder(services, alice, "/", True, None).cursor
    b_cursor = listing.list_folder(services, bob, "/", True, None).cursor
    invited = sharing.share(
        services, alice, ShareRequest(path="/Team", email=bob.email, access="editor")
    )
    invitation_changes, polled = _drain(services, bob, b_cursor)
    assert invitation_changes == []  # invited only: his view is the same until he accepts
    done = threading.Event()

    def poll() -> None:
        if listing.longpoll(services, bob, LongpollRequest(cursor=polled, timeout=8)).changes:
            done.set()

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.2)
    accepted = sharing.accept(services, bob, InvitationRequest(ns_id=invited.ns_id))
    assert accepted.path_display == "/Team (2)"
    poller.join(10)
    assert done.is_set()  # bob's long-poll woke on the new mount (his accept)
    b_changes, b_cursor = _drain(services, bob, b_cursor)
    assert ("folder", "/Team (2)") in b_changes and ("file", "/Team (2)/plan.txt") in b_changes
    a_changes, _ = _drain(services, alice, a_cursor)
    assert ("file", "/Team/plan.txt") in a_changes
    assert ("deleted", "/Team") not in a_changes  # the owner's files never disappear
    sharing.unshare(services, alice, UnshareRequest(path="/Team", email=bob.email))
    b_changes, _ = _drain(services, bob, b_cursor)
    assert ("deleted", "/Team (2)") in b_changes


@pytest.mark.parametrize("listed", ["/Docs", "/Team (2)/Docs"], ids=["own", "in-a-share"])
def test_a_listed_folder_deleted_as_the_shares_change_still_reports_its_deletion(
    services: Services, alice: Principal, bob: Principal, listed: str
) -> None:
    """Bob lists a folder, deletes it, and then a share changes (his view is re-scoped):
    the listing dropped every namespace, so the deletion never came and nothing did
    again; listed inside a mounted share, the whole mount was sent deleted."""
    put_file(services, alice, "/Team/Docs/t.txt", b"team")
    put_file(services, bob, "/Team/mine.txt", b"bob's own /Team")
    put_file(services, bob, "/Docs/d.txt", b"docs")
    assert share_with(services, alice, "/Team", bob, "editor").path_display == "/Team (2)"
    cursor = listing.list_folder(services, bob, listed, True, None).cursor
    files.delete(services, bob, DeleteRequest(path=listed))
    put_file(services, alice, "/Other/o.txt", b"o")  # a share change: bob's view moves
    assert share_with(services, alice, "/Other", bob, "viewer").path_display == "/Other"
    changes, cursor = _drain(services, bob, cursor)
    assert ("deleted", listed) in changes
    assert ("deleted", "/Team (2)") not in changes
    put_file(services, bob, f"{listed}/new.txt", b"again")
    changes, _ = _drain(services, bob, cursor)
    assert ("file", f"{listed}/new.txt") in changes


@pytest.mark.parametrize("own_team", [False, True], ids=["same-path", "new-path"])
def test_a_share_left_and_rejoined_is_sent_again(
    services: Services, alice: Principal, bob: Principal, own_team: bool
) -> None:
    """Bob leaves a shared folder and is added back between two continues: his cursor
    sends the mount point's deletion, so it must send what the folder holds again, whether
    it is mounted at the same path or (his own /Team took that) at another."""
    put_file(services, alice, "/Team/a", b"a")
    sharing.account(services, bob)
    assert share_with(services, alice, "/Team", bob).path_display == "/Team"
    cursor = listing.list_folder(services, bob, "/", True, None).cursor
    files.delete(services, bob, DeleteRequest(path="/Team"))  # bob leaves
    if own_team:
        put_file(services, bob, "/Team/mine", b"mine")
    mount = "/Team (2)" if own_team else "/Team"
    assert share_with(services, alice, "/Team", bob).path_display == mount  # added back
    changes, _ = _drain(services, bob, cursor)
    assert changes[-2:] == [("folder", mount), ("file", f"{mount}/a")]
    assert changes.index(("deleted", "/Team")) < changes.index(("folder", mount))


@pytest.mark.parametrize("listed", ["/Team", "/team/Sub"])
@pytest.mark.parametrize("recursive", [False, True])
def test_a_listing_inside_a_rejoined_share_learns_what_went_meanwhile(
    services: Services, alice: Principal, bob: Principal, listed: str, recursive: bool
) -> None:
    """Bob lists a folder inside a shared folder (no journal of his holds its mount point),
    leaves, and is added back after Alice deleted a file there: his continue snapshots the
    folder again, and first sends the listed folder's `deleted` entry. It re-sent only what
    is there now, so his copy kept the deleted file."""
    put_file(services, alice, "/Team/Sub/old", b"old")
    sharing.account(services, bob)
    assert share_with(services, alice, "/Team", bob).path_display == "/Team"
    cursor = listing.list_folder(services, bob, listed, recursive, None).cursor
    files.delete(services, bob, DeleteRequest(path="/Team"))  # bob leaves
    files.delete(services, alice, DeleteRequest(path="/Team/Sub/old"))
    put_file(services, alice, "/Team/Sub/new", b"new")
    assert share_with(services, alice, "/Team", bob).path_display == "/Team"  # added back
    changes, cursor = _drain(services, bob, cursor)
    assert changes[0] == ("deleted", listed)
    shallow = listed == "/Team" and not recursive  # lists /Team/Sub, not what it holds
    assert (("folder", "/Team/Sub") if shallow else ("file", "/Team/Sub/new")) in changes
    assert ("file", "/Team/Sub/old") not in changes
    assert _drain(services, bob, cursor)[0] == []  # sent once


@pytest.mark.parametrize("listed", ["/Team", "/Team/Sub"])
def test_a_listing_inside_a_share_left_reads_on_in_the_callers_own_folders(
    services: Services, alice: Principal, bob: Principal, listed: str
) -> None:
    """Bob lists a folder inside a shared folder, then leaves it: the listing kept only the
    namespaces still mounted where they were, none, and what Bob made at that path since
    (in his own folders) never came."""
    put_file(services, alice, "/Team/Sub/t.txt", b"team")
    sharing.account(services, bob)
    assert share_with(services, alice, "/Team", bob).path_display == "/Team"
    cursor = listing.list_folder(services, bob, listed, True, None).cursor
    files.delete(services, bob, DeleteRequest(path="/Team"))  # bob leaves
    changes, cursor = _drain(services, bob, cursor)
    assert ("deleted", "/Team") in changes or ("deleted", listed) in changes
    put_file(services, bob, f"{listed}/mine.txt", b"bob's own now")
    changes, cursor = _drain(services, bob, cursor)
    assert ("file", f"{listed}/mine.txt") in changes
    assert _drain(services, bob, cursor)[0] == []  # sent once


def test_a_root_listing_of_a_rejoined_share_gets_no_extra_deletion(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """The caller's root holds the mount point, so its journal already tells of the
    leaving: the listed root itself is never sent as deleted."""
    put_file(services, alice, "/Team/a", b"a")
    sharing.account(services, bob)
    assert share_with(services, alice, "/Team", bob).path_display == "/Team"
    cursor = listing.list_folder(services, bob, "", True, None).cursor
    files.delete(services, bob, DeleteRequest(path="/Team"))
    assert share_with(services, alice, "/Team", bob).path_display == "/Team"  # added back
    changes, _ = _drain(services, bob, cursor)
    assert [c for c in changes if c[0] == "deleted"] == [("deleted", "/Team")]


def test_longpoll_returns_at_once_with_pending_pages(services: Services, alice: Principal) -> None:
    for i in range(3):
        put_file(services, alice, f"/p{i}", b"p")
    page = listing.list_folder(services, alice, "/", False, 1)
    assert page.has_more
    assert listing.longpoll(services, alice, LongpollRequest(cursor=page.cursor)).changes
