"""A file whose block list is longer than one request may carry: declared without blocks,
its list appended in parts (`uploads.append_blocks`), committed by naming the session.

The services here carry 3 blocks a request, so a 7-block file stands for one of more than
10,000 blocks (about 10 GiB) without writing gigabytes."""

from __future__ import annotations

import base64
import dataclasses
import secrets
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import psycopg
import pytest

from tessera.blocks import block_id, content_hash
from tessera.domain import commits, sharing, uploads
from tessera.domain.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unavailable,
    Unprocessable,
)
from tessera.domain.files import create_folder
from tessera.domain.models import (
    BlockSpec,
    CommitBatchRequest,
    CommitRequest,
    ShareRequest,
    UploadBlocksRequest,
    UploadFileSpec,
    UploadStartRequest,
    UploadUrlBlock,
    UploadUrlsRequest,
)
from tessera.domain.services import Services
from tessera.metadata.store import Store
from tessera.ports import Principal

from .conftest import Caller, commit_request, get_file, send_needed, upload_blocks
from .test_domain_files import race_held

CHUNKS = [f"block {n} of a long file ".encode() * (n + 1) for n in range(7)]


@pytest.fixture
def limited(services: Services) -> Services:
    """The services with 3 blocks a request and 10 a file."""
    settings = dataclasses.replace(
        services.settings, max_blocks_per_request=3, max_blocks_per_file=10
    )
    return dataclasses.replace(services, settings=settings)


def specs(chunks: list[bytes]) -> list[BlockSpec]:
    return [BlockSpec(id=block_id(c), size=len(c)) for c in chunks]


def in_parts(path: str, chunks: list[bytes]) -> UploadFileSpec:
    """`chunks` at `path`, declared without its block list."""
    return UploadFileSpec(
        path=path,
        size=sum(len(c) for c in chunks),
        content_hash=content_hash(block_id(c) for c in chunks),
        blocks=None,
    )


def start_in_parts(svc: Services, who: Principal, path: str, chunks: list[bytes]) -> str:
    """Declare `chunks` at `path` without its block list; the upload_id."""
    started = uploads.start_upload(svc, who, UploadStartRequest(files=[in_parts(path, chunks)]))
    assert started.needed == []  # the blocks come with the parts
    return started.upload_id


def append(
    svc: Services, who: Principal, upload_id: str, path: str, first: int, chunks: list[bytes]
) -> list[str]:
    """Append `chunks` from index `first`, send what is needed; the ids that were needed."""
    req = UploadBlocksRequest(upload_id=upload_id, path=path, first=first, blocks=specs(chunks))
    needed = uploads.append_blocks(svc, who, req).needed
    send_needed(svc, who, upload_id, needed, chunks)
    return [n.id for n in needed]


def append_all(svc: Services, who: Principal, upload_id: str, path: str) -> None:
    for first in range(0, len(CHUNKS), 3):
        append(svc, who, upload_id, path, first, CHUNKS[first : first + 3])


def commit_from_session(path: str, upload_id: str | None, chunks: list[bytes]) -> CommitRequest:
    req = commit_request(path, chunks, upload_id)
    return req.model_copy(update={"blocks": None})


def test_a_long_file_goes_up_in_parts_and_comes_back_whole(
    limited: Services, alice: Principal
) -> None:
    with pytest.raises(PayloadTooLarge, match="in parts"):  # what a client must do instead
        uploads.start_upload(
            limited,
            alice,
            UploadStartRequest(
                files=[
                    UploadFileSpec(
                        path="/long.bin",
                        size=sum(len(c) for c in CHUNKS),
                        content_hash=content_hash(block_id(c) for c in CHUNKS),
                        blocks=specs(CHUNKS),
                    )
                ]
            ),
        )
    upload_id = start_in_parts(limited, alice, "/long.bin", CHUNKS)
    append_all(limited, alice, upload_id, "/long.bin")
    with pytest.raises(PayloadTooLarge, match="in parts"):  # the list inline: too long
        commits.commit(limited, alice, commit_request("/long.bin", CHUNKS, upload_id))
    entry = commits.commit(limited, alice, commit_from_session("/long.bin", upload_id, CHUNKS))
    assert entry.size == sum(len(c) for c in CHUNKS)
    assert get_file(limited, alice, "/long.bin") == b"".join(CHUNKS)


def test_a_file_whose_view_path_is_longer_than_an_index_entry_goes_up_in_parts(
    limited: Services, alice: Principal, bob: Principal
) -> None:
    """A shared folder's mount point in front of a path makes a view path of up to 4,096
    bytes. The session's rows were keyed by it, past the 2,704 bytes of a btree entry:
    such a file answered 413, though its owner with a shorter mount could upload it."""
    # names that do not compress (the index compresses a long key before it measures it)
    mount = "/" + "/".join(secrets.token_hex(100) for _ in range(10))  # 2,010 bytes
    create_folder(limited, alice, mount)
    sharing.account(limited, bob)
    sharing.share(limited, alice, ShareRequest(path=mount, email=bob.email, access="editor"))
    path = mount + "/" + "/".join(secrets.token_hex(100) for _ in range(5))  # 3,015 bytes
    upload_id = start_in_parts(limited, alice, path, CHUNKS)
    append_all(limited, alice, upload_id, path)
    entry = commits.commit(limited, alice, commit_from_session(path, upload_id, CHUNKS))
    assert entry.size == sum(len(c) for c in CHUNKS)
    assert get_file(limited, alice, path) == b"".join(CHUNKS)


def test_a_retried_part_appends_nothing_twice(limited: Services, alice: Principal) -> None:
    upload_id = start_in_parts(limited, alice, "/long.bin", CHUNKS)
    req = UploadBlocksRequest(
        upload_id=upload_id, path="/long.bin", first=0, blocks=specs(CHUNKS[:3])
    )
    first = uploads.append_blocks(limited, alice, req).needed
    again = uploads.append_blocks(limited, alice, req).needed  # its answer was lost
    assert [n.id for n in again] == [n.id for n in first] == [block_id(c) for c in CHUNKS[:3]]
    # a part overlapping the list's end appends only what is new
    append(limited, alice, upload_id, "/long.bin", 2, CHUNKS[2:5])
    append(limited, alice, upload_id, "/long.bin", 5, CHUNKS[5:])
    send_needed(limited, alice, upload_id, first, CHUNKS[:3])
    commits.commit(limited, alice, commit_from_session("/long.bin", upload_id, CHUNKS))
    assert get_file(limited, alice, "/long.bin") == b"".join(CHUNKS)


def test_parts_come_in_order_and_never_rewrite_the_list(
    limited: Services, alice: Principal
) -> None:
    upload_id = start_in_parts(limited, alice, "/long.bin", CHUNKS)
    append(limited, alice, upload_id, "/long.bin", 0, CHUNKS[:3])
    with pytest.raises(Unprocessable, match="first=3"):  # a gap
        append(limited, alice, upload_id, "/long.bin", 4, CHUNKS[4:6])
    with pytest.raises(Conflict, match="other blocks"):
        append(limited, alice, upload_id, "/long.bin", 1, [CHUNKS[6], CHUNKS[5]])


def test_parts_stay_within_the_declared_size_and_the_block_cap(
    limited: Services, alice: Principal
) -> None:
    upload_id = start_in_parts(limited, alice, "/short.bin", CHUNKS[:2])
    with pytest.raises(Unprocessable, match="more than its size"):
        append(limited, alice, upload_id, "/short.bin", 0, CHUNKS[:3])
    tiny = [bytes([n]) for n in range(11)]  # 1-byte blocks: over 10 a file
    upload_id = start_in_parts(limited, alice, "/tiny.bin", tiny)
    for first in range(0, 9, 3):
        append(limited, alice, upload_id, "/tiny.bin", first, tiny[first : first + 3])
    with pytest.raises(PayloadTooLarge, match="more than 10 blocks"):
        append(limited, alice, upload_id, "/tiny.bin", 9, tiny[9:])


def test_an_unfinished_list_is_refused_at_commit(limited: Services, alice: Principal) -> None:
    upload_id = start_in_parts(limited, alice, "/long.bin", CHUNKS)
    append(limited, alice, upload_id, "/long.bin", 0, CHUNKS[:3])
    with pytest.raises(Unprocessable, match="not the sum of its block sizes"):
        commits.commit(limited, alice, commit_from_session("/long.bin", upload_id, CHUNKS))


def test_a_list_is_only_the_callers_own_session_and_path(
    limited: Services, alice: Principal, bob: Principal
) -> None:
    upload_id = start_in_parts(limited, alice, "/long.bin", CHUNKS)
    append_all(limited, alice, upload_id, "/long.bin")
    with pytest.raises(Unprocessable, match="names the upload session"):
        commits.commit(limited, alice, commit_from_session("/long.bin", None, CHUNKS))
    with pytest.raises(NotFound, match="no block list"):  # declared at another path
        commits.commit(limited, alice, commit_from_session("/other.bin", upload_id, CHUNKS))
    with pytest.raises(NotFound):  # another user's session: as if there were none
        commits.commit(limited, bob, commit_from_session("/long.bin", upload_id, CHUNKS))
    with pytest.raises(NotFound):
        append(limited, bob, upload_id, "/long.bin", 7, CHUNKS[:1])


def test_a_part_naming_another_users_session_waits_for_no_lock_of_theirs(
    limited: Services, alice: Principal, bob: Principal, database_url: str
) -> None:
    """The part locked the session's row before it looked whose it was: another user's
    upload_id held back that user's own parts, and waited on them."""
    upload_id = start_in_parts(limited, alice, "/long.bin", CHUNKS)
    answered: list[object] = []

    def bobs_part() -> None:
        try:
            append(limited, bob, upload_id, "/long.bin", 0, CHUNKS[:1])
        except NotFound as e:
            answered.append(e)

    with psycopg.connect(database_url) as alices_part:  # holds her session's row
        alices_part.execute(
            "SELECT 1 FROM upload_sessions WHERE upload_id = %s FOR NO KEY UPDATE", (upload_id,)
        )
        bob_asks = threading.Thread(target=bobs_part)
        bob_asks.start()
        bob_asks.join(10)
        assert not bob_asks.is_alive(), "bob's part waited for alice's lock"
        alices_part.rollback()
    bob_asks.join()
    assert len(answered) == 1  # as if there were no such session


def test_blocks_the_caller_can_read_are_not_needed_again(
    limited: Services, alice: Principal
) -> None:
    upload_id = start_in_parts(limited, alice, "/long.bin", CHUNKS)
    append_all(limited, alice, upload_id, "/long.bin")
    commits.commit(limited, alice, commit_from_session("/long.bin", upload_id, CHUNKS))
    copy_id = start_in_parts(limited, alice, "/copy.bin", CHUNKS)
    assert append(limited, alice, copy_id, "/copy.bin", 0, CHUNKS[:3]) == []
    assert append(limited, alice, copy_id, "/copy.bin", 3, CHUNKS[3:6]) == []


def test_a_batch_entry_without_its_list_fails_alone(limited: Services, alice: Principal) -> None:
    upload_id = start_in_parts(limited, alice, "/long.bin", CHUNKS)
    append_all(limited, alice, upload_id, "/long.bin")
    batch = CommitBatchRequest(
        entries=[
            commit_from_session("/long.bin", upload_id, CHUNKS),
            commit_from_session("/lost.bin", upload_id, CHUNKS),
        ]
    )
    result = commits.commit_batch(limited, alice, batch)
    assert [(e.tag, e.status) for e in result.entries] == [("success", 200), ("failure", 404)]
    assert get_file(limited, alice, "/long.bin") == b"".join(CHUNKS)


def test_a_batch_reads_lists_sent_in_parts_up_to_a_largest_files_worth(
    limited: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each entry naming a list sent in parts read it whole: a thousand entries naming one
    list of 262,144 blocks (a 250 KB request) read 262 M rows. A batch now reads lists up
    to one largest file's worth (10 blocks here); later such entries are refused unread."""
    upload_id = start_in_parts(limited, alice, "/long.bin", CHUNKS)  # 7 blocks
    append_all(limited, alice, upload_id, "/long.bin")
    reads: list[object] = []
    read = Store.session_file_blocks

    def counted(self: Store, *args: Any) -> Any:
        reads.append(args)
        return read(self, *args)

    monkeypatch.setattr(Store, "session_file_blocks", counted)
    entry = commit_from_session("/long.bin", upload_id, CHUNKS)
    result = commits.commit_batch(limited, alice, CommitBatchRequest(entries=[entry] * 6))
    assert len(reads) == 2  # 7, then 7 more past the 10: the rest unread
    assert result.entries[0].tag == "success"
    assert [e.status for e in result.entries[2:]] == [413] * 4
    assert get_file(limited, alice, "/long.bin") == b"".join(CHUNKS)


def test_a_commit_retried_after_its_session_is_gone_gets_its_first_answer(
    limited: Services, alice: Principal
) -> None:
    """The list was read before the idempotency key was claimed: a commit retried after gc
    had deleted its session (48 h on at most) answered 404, not its first sending's answer."""
    upload_id = start_in_parts(limited, alice, "/long.bin", CHUNKS)
    append_all(limited, alice, upload_id, "/long.bin")
    req = commit_from_session("/long.bin", upload_id, CHUNKS).model_copy(
        update={"idempotency_key": "long-1"}
    )
    first = commits.commit(limited, alice, req)
    with limited.db.transaction() as store:  # what gc's expire_uploads ends with
        store.conn.execute("DELETE FROM upload_sessions WHERE upload_id = %s", (upload_id,))
    assert commits.commit(limited, alice, req) == first
    batch = commits.commit_batch(limited, alice, CommitBatchRequest(entries=[req]))
    assert [e.entry for e in batch.entries] == [first]
    with pytest.raises(Unprocessable, match="different request"):  # the key, another file
        commits.commit(limited, alice, req.model_copy(update={"size": first.size - 1}))
    with pytest.raises(NotFound, match="no block list"):  # no key: no answer to give
        commits.commit(limited, alice, req.model_copy(update={"idempotency_key": None}))


def test_the_api_takes_parts(call: Caller, services: Services, alice: Principal) -> None:
    chunks = CHUNKS[:2]
    ids = [block_id(c) for c in chunks]
    status, started, _ = call(
        "POST",
        "/v1/uploads",
        {
            "files": [
                {
                    "path": "/a.bin",
                    "size": sum(len(c) for c in chunks),
                    "content_hash": content_hash(ids),
                    "blocks": None,
                }
            ]
        },
        alice,
    )
    assert status == 200, started
    part = {"id": ids[0], "size": len(chunks[0])}
    body = {"upload_id": started["upload_id"], "path": "/a.bin", "first": 0, "blocks": [part]}
    status, answer, _ = call("POST", "/v1/uploads/blocks", body, alice)
    assert status == 200, answer
    assert [n["id"] for n in answer["needed"]] == [ids[0]]
    status, answer, _ = call("POST", "/v1/uploads/blocks", {**body, "first": 5}, alice)
    assert status == 422, answer
    status, doc, _ = call("GET", "/v1/openapi.json")
    assert "/v1/uploads/blocks" in doc["paths"]


def test_urls_come_a_bounded_number_at_a_time(services: Services, alice: Principal) -> None:
    """Each signed URL is ~2 KB on AWS: an answer of 10,000 broke Lambda's 6 MB limit."""
    limited = dataclasses.replace(
        services, settings=dataclasses.replace(services.settings, max_urls_per_request=2)
    )
    ids = [block_id(c) for c in CHUNKS[:3]]
    spec = UploadFileSpec(
        path="/three.bin",
        size=sum(len(c) for c in CHUNKS[:3]),
        content_hash=content_hash(ids),
        blocks=specs(CHUNKS[:3]),
    )
    started = uploads.start_upload(limited, alice, UploadStartRequest(files=[spec]))
    sha = base64.b64encode(b"\0" * 32).decode()
    asked = [UploadUrlBlock(id=block_id(c), size=len(c), sha256=sha) for c in CHUNKS[:3]]
    with pytest.raises(PayloadTooLarge, match="at most 2 URLs"):
        uploads.upload_urls(
            limited, alice, UploadUrlsRequest(upload_id=started.upload_id, blocks=asked)
        )
    answer = uploads.upload_urls(
        limited, alice, UploadUrlsRequest(upload_id=started.upload_id, blocks=asked[:2])
    )
    assert len(answer.urls) == 2


def test_a_late_copy_of_an_earlier_part_changes_nothing(
    limited: Services, alice: Principal
) -> None:
    """A part sent again after the next (its answer lost, a gateway's 504) set the list's
    count back: the next part was refused (422 "first=3"), and the block cap could be
    passed by a part's worth."""
    upload_id = start_in_parts(limited, alice, "/long.bin", CHUNKS)
    append(limited, alice, upload_id, "/long.bin", 0, CHUNKS[:3])
    append(limited, alice, upload_id, "/long.bin", 3, CHUNKS[3:6])
    append(limited, alice, upload_id, "/long.bin", 0, CHUNKS[:3])  # the late copy
    append(limited, alice, upload_id, "/long.bin", 6, CHUNKS[6:])
    commits.commit(limited, alice, commit_from_session("/long.bin", upload_id, CHUNKS))
    tiny = [bytes([n]) for n in range(11)]
    upload_id = start_in_parts(limited, alice, "/tiny.bin", tiny)
    for first in range(0, 9, 3):
        append(limited, alice, upload_id, "/tiny.bin", first, tiny[first : first + 3])
    append(limited, alice, upload_id, "/tiny.bin", 7, tiny[7:8])  # late
    with pytest.raises(PayloadTooLarge, match="more than 10 blocks"):
        append(limited, alice, upload_id, "/tiny.bin", 8, tiny[8:])


def test_parts_of_two_files_at_once_stage_under_distinct_keys(
    limited: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """The keys a part adds are numbered on from the session's count: two parts of two
    files at once took the same numbers, and S3's listing of a commit's run of keys
    (one key a number) missed its own."""
    other = [c + b"!" for c in CHUNKS]
    files = [in_parts("/a.bin", CHUNKS), in_parts("/b.bin", other)]
    upload_id = uploads.start_upload(limited, alice, UploadStartRequest(files=files)).upload_id
    race_held(
        monkeypatch,
        database_url,
        "expected_block_count",
        lambda: append(limited, alice, upload_id, "/a.bin", 0, CHUNKS[:3]),
        lambda: append(limited, alice, upload_id, "/b.bin", 0, other[:3]),
    )
    with limited.db.transaction() as store:
        keys = store.conn.execute(
            "SELECT staged_key FROM upload_blocks WHERE upload_id = %s", (upload_id,)
        ).fetchall()
    ordinals = [k.rsplit("/", 1)[1].split("-")[0] for (k,) in keys]
    assert len(ordinals) == 6 and len(set(ordinals)) == 6


def test_a_path_declared_twice_with_parts_is_refused(limited: Services, alice: Principal) -> None:
    """The quota counts a path's last declaration: an inline one of 1 byte after one of
    50 GiB in parts let the parts stage 50 GiB past the quota."""
    long_spec = in_parts("/a.bin", CHUNKS)
    short = UploadFileSpec(
        path="/A.bin", size=1, content_hash=content_hash([block_id(b"x")]), blocks=specs([b"x"])
    )
    for files in ([long_spec, short], [short, long_spec]):
        with pytest.raises(Unprocessable, match="declared twice"):
            uploads.start_upload(limited, alice, UploadStartRequest(files=files))


def test_a_session_in_use_outlives_its_first_hour(services: Services, alice: Principal) -> None:
    """A session's expiry was fixed at its start: an upload that took longer than the hour
    (10 GiB below ~25 Mbit/s) failed at the hour and started over, every round. Each use
    (URLs, parts) now moves it on an hour; a session left idle still expires."""
    now = [datetime.now(UTC)]
    clocked = dataclasses.replace(services, clock=mock.Mock(now=lambda: now[0]))
    chunks = CHUNKS[:2]
    spec = UploadFileSpec(
        path="/slow.bin",
        size=sum(len(c) for c in chunks),
        content_hash=content_hash(block_id(c) for c in chunks),
        blocks=specs(chunks),
    )
    started = uploads.start_upload(clocked, alice, UploadStartRequest(files=[spec]))
    for needed in started.needed:  # a block every 50 minutes
        now[0] += timedelta(minutes=50)
        send_needed(clocked, alice, started.upload_id, [needed], chunks)
    commits.commit(clocked, alice, commit_request("/slow.bin", chunks, started.upload_id))
    now[0] += timedelta(minutes=61)
    with pytest.raises(NotFound, match="expired"):
        send_needed(clocked, alice, started.upload_id, started.needed, chunks)


def test_uploads_in_progress_hold_no_more_than_the_quota(
    services: Services, alice: Principal
) -> None:
    """Staged blocks count against no quota, and sessions in use live two days: open
    sessions could hold any multiple of a user's quota. What they expect, uncommitted, is
    held to the quota (or the largest file, if more)."""
    limited = dataclasses.replace(
        services,
        settings=dataclasses.replace(
            services.settings, default_quota_bytes=3000, max_file_size=2000
        ),
    )
    files = {f"/f{n}.bin": [bytes([n]) * 1000] for n in range(4)}
    started = {path: upload_blocks(limited, alice, path, chunks) for path, chunks in files.items()
               if path != "/f3.bin"}  # fmt: skip
    with pytest.raises(TooManyRequests, match="not yet committed") as refused:
        upload_blocks(limited, alice, "/f3.bin", files["/f3.bin"])
    assert refused.value.retry_after == 60
    # the same block in another session: a staged object of its own, counted again (once,
    # one made-up block list declared in any number of sessions held any multiple of it)
    with pytest.raises(TooManyRequests, match="not yet committed"):
        upload_blocks(limited, alice, "/again.bin", files["/f0.bin"])
    commits.commit(limited, alice, commit_request("/f1.bin", files["/f1.bin"], started["/f1.bin"]))
    upload_blocks(limited, alice, "/f3.bin", files["/f3.bin"])  # f1's block is committed


def test_uploads_in_progress_expect_no_more_than_max_pending_blocks(
    services: Services, alice: Principal
) -> None:
    """Their bytes were held to the quota, but not their count: blocks of one byte made a
    row each for up to two days, 10,000 a call, 300,000 rows (260 MB) in 30 calls against
    300,000 bytes of a 100 GiB quota."""
    limited = dataclasses.replace(
        services, settings=dataclasses.replace(services.settings, max_pending_blocks=3)
    )
    two = [b"a", b"b"]
    upload_blocks(limited, alice, "/two.bin", two, put=False)
    with pytest.raises(TooManyRequests, match="or 3 blocks not yet committed") as refused:
        upload_blocks(limited, alice, "/more.bin", [b"c", b"d"], put=False)
    assert refused.value.retry_after == 60
    upload_blocks(limited, alice, "/one.bin", [b"e"], put=False)  # 3 of 3
    with pytest.raises(PayloadTooLarge, match="4 blocks: over the 3"):
        upload_blocks(limited, alice, "/big.bin", [b"f", b"g", b"h", b"i"], put=False)


def test_two_uploads_started_at_once_cannot_both_pass_the_cap(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """Each start read the sum of the uploads in progress before the other had written
    its session: both saw room, and together they held more than the cap lets them. The
    second now waits for the first and is refused."""
    limited = dataclasses.replace(
        services,
        settings=dataclasses.replace(
            services.settings, default_quota_bytes=3000, max_file_size=2000
        ),
    )

    def start(n: int) -> str:
        return upload_blocks(limited, alice, f"/f{n}.bin", [bytes([n]) * 2000], put=False)

    first, second = race_held(
        monkeypatch, database_url, "pending_uploads", lambda: start(1), lambda: start(2)
    )
    assert isinstance(first, str)
    assert isinstance(second, TooManyRequests)


def test_a_part_refused_for_its_keys_records_nothing(
    limited: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys refused (503) after the part was recorded: its blocks counted against the
    user's uploads in progress at every retry. The key is loaded first now."""
    upload_id = start_in_parts(limited, alice, "/long.bin", CHUNKS)

    def refused(version: int) -> bytes:
        raise Unavailable("the server's block keys do not match its database")

    monkeypatch.setattr(limited.keys, "secret", refused)
    req = UploadBlocksRequest(
        upload_id=upload_id, path="/long.bin", first=0, blocks=specs(CHUNKS[:3])
    )
    with pytest.raises(Unavailable):
        uploads.append_blocks(limited, alice, req)
    with limited.db.transaction() as store:
        assert store.expected_block_count(upload_id) == 0
