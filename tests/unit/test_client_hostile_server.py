"""A hostile server (real HTTP, in a thread) never gets a byte outside the folder or a corrupt file
in place: traversal paths, symlink tricks, wrong block content, wrong hashes, a full disk."""

from __future__ import annotations

import base64
import errno
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tessera.blocks import block_id, content_hash, encode_block, iter_chunks
from tessera_client import transfer
from tessera_client.api import Api, ApiError, RetriesStopped, RetryPolicy, ServerUnreachable
from tessera_client.cli import app
from tessera_client.config import Home, Settings, Tokens
from tessera_client.engine import MAX_LONGPOLL_BACKOFF_S, SyncEngine
from tessera_client.fs import (
    FOLDER_MARKER,
    PARTIAL_PREFIX,
    TEMP_PREFIX,
    DiskFullError,
    FakeFilesystem,
)
from tessera_client.planner import Entry, EntryKind
from tessera_client.reporting import RoundResult, SyncError
from tessera_client.transfer import REPORT_RETRY_S, REPORT_WAITS

KEY = bytes(range(32))


@dataclass
class Evil:
    """What the fake server lists and serves."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # file_id -> download answer
    blobs: dict[str, bytes] = field(default_factory=dict)  # url path -> stored bytes
    base: str = ""
    restoring: int = 0  # answer this many downloads with 202 (cold storage) first
    restoring_after: Any = 1  # the 202's retry_after
    # when set: the first page says has_more, the next is this (or what it makes of the body)
    continue_page: Any = None
    reset_cursors: bool = False  # answer list_folder/continue with invalid_cursor
    posted: list[str] = field(default_factory=list)  # the routes the client called
    fetched: list[str] = field(default_factory=list)  # the blocks served, by URL path
    page_blocks: int = 10**6  # blocks per /v1/download answer
    expired: set[str] = field(default_factory=set)  # block URLs that answer 403 until renewed
    stuck_pages: bool = False  # answer every page after the first with no blocks
    renew_wrong: bool = False  # a renewal answers with the next block instead
    put_paths: list[str] = field(default_factory=list)  # the block PUTs, in order
    blob_delay: float = 0.0  # seconds each block GET takes
    gone: set[str] = field(default_factory=set)  # file ids whose download answers 404
    # upload routes (`/v1/uploads`, ...) -> how they answer a request body: a JSON value
    # (status 200), or (status, JSON value)
    answers: dict[str, Callable[[dict[str, Any]], Any]] = field(default_factory=dict)
    outage: bool = False  # block GETs answer 503, Retry-After: 60 (the store down)
    outage_met: threading.Event = field(default_factory=threading.Event)  # one was answered

    def add_file(
        self,
        path: str,
        data: bytes,
        *,
        fid: str,
        served: bytes | None = None,
        claimed_hash: str | None = None,
        claimed_size: int | None = None,
    ) -> None:
        """List a file; `served`/`claimed_*` let the server lie about it."""
        bid = block_id(data)
        stored = encode_block(served if served is not None else data, bid, KEY, 1)
        self.blobs[f"/blk/{fid}"] = bytes(stored)
        entry = {
            ".tag": "file",
            "name": path.rsplit("/", 1)[-1],
            "path_display": path,
            "path_lower": path.lower(),
            "file_id": fid,
            "rev": 1,
            "size": claimed_size if claimed_size is not None else len(data),
            "content_hash": claimed_hash or content_hash([bid]),
            "server_modified": "2026-11-26T01:00:00Z",
            "ns_id": 1,
        }
        self.entries.append(entry)
        self.files[fid] = {
            "entry": entry,
            "blocks": [
                {
                    "id": bid,
                    "offset": 0,
                    "size": len(data),
                    "method": "GET",
                    "url": f"{self.base}/blk/{fid}",
                    "headers": {},
                    "key_version": 1,
                    "key": base64.b64encode(KEY).decode(),
                }
            ],
        }

    def add_folder(self, path: str, *, fid: str) -> None:
        """List a folder."""
        name = path.rsplit("/", 1)[-1]
        self.entries.append(
            {
                ".tag": "folder",
                "name": name,
                "path_display": path,
                "path_lower": path.lower(),
                "file_id": fid,
                "ns_id": 1,
            }
        )

    def add_blocks_file(self, path: str, pieces: list[bytes], *, fid: str) -> None:
        """List a file of several blocks, honestly."""
        self.add_file(path, pieces[0], fid=fid)
        ids = [block_id(p) for p in pieces]
        entry = self.files[fid]["entry"]  # (also the listed one)
        entry["size"], entry["content_hash"] = sum(map(len, pieces)), content_hash(ids)
        blocks, offset = [], 0
        for i, (piece, bid) in enumerate(zip(pieces, ids, strict=True)):
            self.blobs[f"/blk/{fid}/{i}"] = bytes(encode_block(piece, bid, KEY, 1))
            blocks.append({**self.files[fid]["blocks"][0], "id": bid, "offset": offset,
                           "size": len(piece), "url": f"{self.base}/blk/{fid}/{i}"})  # fmt: skip
            offset += len(piece)
        self.files[fid]["blocks"] = blocks

    def download_page(self, body: dict[str, Any]) -> dict[str, Any]:
        """A page of the answer, as the server pages it; a renewal (`limit`) gets new URLs."""
        answer = self.files[body["file_id"]]
        first, limit = body.get("from_block", 0), body.get("limit")
        size = min(limit or self.page_blocks, self.page_blocks)
        blocks = answer["blocks"][first : first + size]
        if self.stuck_pages and first:
            blocks = []
        if limit:
            if self.renew_wrong:
                blocks = answer["blocks"][first + 1 : first + 2]
            blocks = [{**b, "url": b["url"] + "?renewed"} for b in blocks]
        after = first + len(blocks)
        more = after < len(answer["blocks"]) or (self.stuck_pages and not blocks)
        return {**answer, "blocks": blocks, "next_block": after if more else None}


@pytest.fixture
def evil() -> Iterator[Evil]:
    state = Evil()

    class Handler(BaseHTTPRequestHandler):
        def _send(
            self, status: int, payload: Any, raw: bytes | None = None, retry_after: str = ""
        ) -> None:
            data = raw if raw is not None else json.dumps(payload).encode()
            self.send_response(status)
            if retry_after:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path in state.blobs and state.outage:
                self._send(503, None, b"<Error><Code>SlowDown</Code></Error>", retry_after="60")
                state.outage_met.set()
            elif path in state.expired and query != "renewed":
                self._send(403, None, b"<Error><Code>AccessDenied</Code>Request has expired")
            elif path in state.blobs:
                time.sleep(state.blob_delay)
                state.fetched.append(path)
                self._send(200, None, state.blobs[path])
            elif path.startswith("/blk/"):  # a block whose object is gone
                self._send(404, None, b"<Error><Code>NoSuchKey</Code></Error>")
            else:
                self._send(200, {"used_bytes": 0, "quota_bytes": 1})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)) or b"{}")
            state.posted.append(self.path)
            if self.path == "/v1/list_folder":
                more = state.continue_page is not None
                self._send(200, {"entries": state.entries, "cursor": "c1", "has_more": more})
            elif self.path == "/v1/list_folder/continue" and state.reset_cursors:
                self._send(400, {"error": {"code": "invalid_cursor", "message": "unknown key"}})
            elif self.path == "/v1/list_folder/continue" and state.continue_page is not None:
                page = state.continue_page
                self._send(200, page(body) if callable(page) else page)
            elif self.path == "/v1/list_folder/continue":
                self._send(200, {"entries": [], "cursor": "c1", "has_more": False})
            elif self.path == "/v1/download" and body.get("file_id") in state.gone:
                self._send(404, {"error": {"code": "not_found", "message": "no such file"}})
            elif self.path == "/v1/download" and state.restoring > 0:
                state.restoring -= 1
                self._send(
                    202, {"restoring": True, "retry_after": state.restoring_after, "blocks": []}
                )
            elif self.path == "/v1/download":
                self._send(200, state.download_page(body))
            elif self.path in state.answers:
                answer = state.answers[self.path](body)
                self._send(*(answer if isinstance(answer, tuple) else (200, answer)))
            else:
                self._send(404, {"error": {"code": "not_found", "message": self.path}})

        def do_PUT(self) -> None:  # a presigned block PUT
            self.rfile.read(int(self.headers["Content-Length"] or 0))
            state.put_paths.append(self.path)
            if "/expired/" in self.path:
                self._send(403, None, b"<Error><Code>AccessDenied</Code>Request has expired")
            elif "/gone/" in self.path:  # a bucket that is not there
                self._send(404, None, b"<Error><Code>NoSuchBucket</Code></Error>")
            else:
                self._send(200, None, b"")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_port}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def _engine(tmp_path: Path, evil: Evil, fs: FakeFilesystem | None = None) -> SyncEngine:
    home = Home(tmp_path / "home")
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=2e9))
    settings = Settings(server_url=evil.base, device_name="dev")
    api = Api(evil.base, home, policy=RetryPolicy(attempts=2, base=0.01))
    folder = tmp_path / "root" / "sync"
    folder.mkdir(parents=True)
    return SyncEngine(home, settings, folder, api, filesystem=fs)


def _real_blocks(tmp_path: Path, size: int) -> list[bytes]:
    """`size` random bytes cut as the client cuts them (its scan must find the same hash)."""
    sample = tmp_path / "sample.bin"
    sample.write_bytes(random.Random(size).randbytes(size))
    pieces = [data for _ref, data in iter_chunks(sample)]
    sample.unlink()
    return pieces


def _quiet_longpoll() -> bool:
    """A long-poll that never has news (the daemon tests drive the rounds themselves)."""
    time.sleep(0.05)
    return False


def _outside_files(tmp_path: Path) -> list[str]:
    return sorted(
        p.relative_to(tmp_path).as_posix()
        for p in tmp_path.rglob("*")
        if p.is_file()
        and not p.is_relative_to(tmp_path / "root" / "sync")
        and not p.is_relative_to(tmp_path / "home")
    )


def _theirs(paths: Iterable[Path]) -> list[Path]:
    """`paths` but the client's own marker of a synced folder."""
    return [p for p in paths if p.name != FOLDER_MARKER]


def test_traversal_and_absolute_paths_never_touch_the_disk(tmp_path: Path, evil: Evil) -> None:
    bad = ["/../escape.txt", "/a/../../escape2.txt", "/C:/x.txt", "//etc/x.txt", "/a\\..\\b.txt"]
    bad += ["/nul\x00.txt", "/../", "/invoice\u202efdp.exe"]
    for i, p in enumerate(bad):
        evil.add_file(p, b"evil", fid=f"bad{i}")
    evil.add_file("/ok.txt", b"fine", fid="ok")
    engine = _engine(tmp_path, evil)
    result = engine.run_once()
    engine.close()
    folder = tmp_path / "root" / "sync"
    assert (folder / "ok.txt").read_bytes() == b"fine"
    assert sorted(p.name for p in _theirs(folder.rglob("*"))) == ["ok.txt"]
    assert _outside_files(tmp_path) == []
    assert not result.problems or all("escape" not in p for p in result.problems)


def test_an_answer_that_does_not_fit_fails_alone(tmp_path: Path, evil: Evil) -> None:
    """A malformed listing entry or download answer (a server bug, a lie, a newer shape) is
    reported and left out; the round goes on with the rest instead of crashing."""
    evil.add_file("/listed-badly.txt", b"x", fid="lb")
    evil.entries[-1]["rev"] = "not a number"
    evil.add_file("/served-badly.txt", b"y", fid="sb")
    evil.files["sb"] = {"entry": evil.files["sb"]["entry"], "blocks": "not a list"}
    evil.add_file("/ok.txt", b"fine", fid="ok")
    problems: list[str] = []
    engine = _engine(tmp_path, evil)
    engine.reporter.problem = problems.append  # type: ignore[method-assign,assignment]
    result = engine.run_once()
    engine.close()
    folder = tmp_path / "root" / "sync"
    assert sorted(p.name for p in _theirs(folder.iterdir())) == ["ok.txt"]
    reported = problems + result.problems
    assert any("listed-badly.txt" in p and "does not fit" in p for p in reported), reported
    assert any("served-badly.txt" in p and "does not fit" in p for p in reported), reported


def test_a_block_url_that_cannot_be_sent_fails_its_file_alone(tmp_path: Path, evil: Evil) -> None:
    """A bad port or a line break in a header raised ValueError out of the HTTP layer:
    not a transport error, so it ended every round (downloads come first) and the daemon."""
    evil.add_file("/bad-port.txt", b"x", fid="bp")
    evil.files["bp"]["blocks"][0]["url"] = evil.base.rsplit(":", 1)[0] + ":99999/blk/bp"
    evil.add_file("/bad-header.txt", b"y", fid="bh")
    evil.files["bh"]["blocks"][0]["headers"] = {"x-amz-meta": "v\r\nInjected: yes"}
    evil.add_file("/ok.txt", b"fine", fid="ok")
    engine = _engine(tmp_path, evil)
    result = engine.run_once()
    engine.close()
    folder = tmp_path / "root" / "sync"
    assert sorted(p.name for p in _theirs(folder.iterdir())) == ["ok.txt"]
    assert any("bad-port.txt" in p and "99999" in p for p in result.problems), result
    assert any("bad-header.txt" in p and "control character" in p for p in result.problems)


@pytest.fixture
def bystander() -> Iterator[tuple[str, list[str]]]:
    """Another service on this machine: its URL, and the methods of the requests it got."""
    received: list[str] = []

    class Bystander(BaseHTTPRequestHandler):
        def _record(self) -> None:
            received.append(self.command)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_DELETE = do_POST = do_PUT = _record

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Bystander)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()
    server.server_close()


def test_a_block_url_with_another_method_is_never_sent(
    tmp_path: Path, evil: Evil, bystander: tuple[str, list[str]]
) -> None:
    """The server picks each block request's method: a `DELETE` (or `POST`) at a service
    on this machine was sent as asked, blind. A block is fetched with GET, nothing else."""
    url, received = bystander
    evil.add_file("/wipe.txt", b"x", fid="w")
    block = evil.files["w"]["blocks"][0]
    block["method"], block["url"] = "DELETE", f"{url}/_all"
    engine = _engine(tmp_path, evil)
    result = engine.run_once()
    engine.close()
    assert received == []
    assert any("wipe.txt" in p and "DELETE" in p for p in result.problems), result.problems


def test_symlinked_folder_is_never_written_through(tmp_path: Path, evil: Evil) -> None:
    outside = tmp_path / "root" / "outside"
    outside.mkdir(parents=True)
    engine = _engine(tmp_path, evil)
    os.symlink(outside, tmp_path / "root" / "sync" / "link")
    evil.add_folder("/link", fid="d1")
    evil.add_file("/link/pwned.txt", b"pwned", fid="p")
    problems: list[str] = []
    engine.reporter.problem = problems.append  # type: ignore[method-assign,assignment]
    engine.run_once()
    engine.close()
    assert list(outside.iterdir()) == []
    assert os.path.islink(tmp_path / "root" / "sync" / "link")
    # reported, not silently dropped: what is under the link is left alone on both sides
    assert any("link" in p and "symlink" in p for p in problems), problems
    assert "/v1/delete" not in evil.posted and "/v1/download" not in evil.posted


def test_a_folder_whose_files_could_not_all_be_deleted_stays_deleted_here(
    tmp_path: Path, evil: Evil
) -> None:
    """The delete of a file in a folder deleted here failed (a 5xx), so the folder's own
    delete met 409 (not empty): its base was forgotten, the next round made the folder
    here again, and it stayed, empty, on every device. It keeps its base while a synced
    file below it is still to be deleted, and the next round finishes the job."""
    evil.add_folder("/d", fid="d1")
    evil.add_file("/d/a.txt", b"a", fid="fa")
    engine = _engine(tmp_path, evil)
    engine.run_once()
    shutil.rmtree(tmp_path / "root" / "sync" / "d")
    unwell = {"error": {"code": "internal", "message": "unwell"}}
    refusal = {"error": {"code": "conflict", "message": "/d is not empty"}}
    evil.answers["/v1/delete"] = lambda body: (
        (500, unwell) if body["path"] == "/d/a.txt" else (409, refusal)
    )
    engine.run_once(max_rounds=1)
    kept = set(engine.state.base_tree())
    engine.close()
    assert {"d", "d/a.txt"} <= kept  # both still to be deleted
    assert not (tmp_path / "root" / "sync" / "d").exists()


def test_a_rename_reaches_a_server_from_before_the_move_guard(tmp_path: Path, evil: Evil) -> None:
    """A server from before `parent_file_id` refuses the field (422, nothing done): the
    move is sent again without it, where every rename had become a copy."""
    evil.add_file("/a.txt", b"hello", fid="f1")
    engine = _engine(tmp_path, evil)
    engine.run_once()
    folder = tmp_path / "root" / "sync"
    (folder / "a.txt").rename(folder / "b.txt")
    sent: list[dict[str, Any]] = []

    def old_server(body: dict[str, Any]) -> Any:
        sent.append(body)
        if "parent_file_id" in body:
            field = [{"field": "parent_file_id", "message": "extra inputs are not permitted"}]
            return 422, {"error": {"code": "invalid", "message": "invalid", "fields": field}}
        moved = dict(evil.entries[0])
        moved.update(name="b.txt", path_display="/b.txt", path_lower="/b.txt")
        return moved

    evil.answers["/v1/move"] = old_server
    engine.run_once(max_rounds=1)  # (the listing, the server's, never shows the move)
    engine.close()
    assert [("parent_file_id" in b) for b in sent] == [True, False]
    assert "/v1/uploads" not in evil.posted  # moved, not copied


def test_a_folder_the_server_keeps_comes_back_here_once(tmp_path: Path, evil: Evil) -> None:
    """A folder deleted here that the server keeps (409: it holds what this device never
    lists, such as a name it refuses) was planned for deletion again every round, without
    end: the base is forgotten, and the next round makes the folder here as the server
    has it."""
    evil.add_folder("/d", fid="d1")
    folder = tmp_path / "root" / "sync" / "d"
    engine = _engine(tmp_path, evil)
    engine.run_once()
    assert folder.is_dir()
    folder.rmdir()
    refusal = {"error": {"code": "conflict", "message": "/d is not empty"}}
    evil.answers["/v1/delete"] = lambda body: (409, refusal)
    result = engine.run_once()
    engine.close()
    assert folder.is_dir()  # made again, as the server has it
    assert evil.posted.count("/v1/delete") == 1
    assert not any("quiescent" in p for p in result.problems), result.problems


@pytest.mark.parametrize(
    "lie",
    [
        {"served": b"other bytes entirely"},  # block decodes to another id
        {"claimed_hash": "b3:" + "0" * 64},  # content hash does not match the blocks
        {"claimed_size": 999},  # sizes do not add up
    ],
)
def test_wrong_content_is_never_put_in_place(
    tmp_path: Path, evil: Evil, lie: dict[str, Any]
) -> None:
    evil.add_file("/doc.txt", b"the real content", fid="d", **lie)
    engine = _engine(tmp_path, evil)
    folder = tmp_path / "root" / "sync"
    result = engine.run_once()
    engine.close()
    assert not (folder / "doc.txt").exists()
    _assert_only_verified_partials(folder, b"the real content")
    assert result.problems


def _assert_only_verified_partials(folder: Path, content: bytes) -> None:
    """No temp file is left in `folder` but partial downloads (kept for the next attempt),
    and those hold only blocks that verified: the start of `content`."""
    temps = [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert all(p.name.startswith(PARTIAL_PREFIX) for p in temps), temps
    assert all(content.startswith(p.read_bytes()) for p in temps)


def test_corrupt_update_leaves_the_local_file_alone(tmp_path: Path, evil: Evil) -> None:
    evil.add_file("/doc.txt", b"version one", fid="d")
    engine = _engine(tmp_path, evil)
    folder = tmp_path / "root" / "sync"
    assert engine.run_once().problems == []
    assert (folder / "doc.txt").read_bytes() == b"version one"
    # the server now claims rev 2, but serves a block that is not what it says
    evil.entries.clear()
    evil.add_file("/doc.txt", b"version two", fid="d", served=b"garbage!!")
    evil.entries[0]["rev"] = 2
    engine.state.set_meta("cursor", None)  # force a full re-list
    result = engine.run_once()
    engine.close()
    assert (folder / "doc.txt").read_bytes() == b"version one"
    assert result.problems and "could not report it" in result.problems[0]  # an older server


def _answer_reports(evil: Evil, *, queued: bool) -> list[dict[str, Any]]:
    """Have the server take block reports (answering `queued`); the reports it gets."""
    got: list[dict[str, Any]] = []

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        got.append(body)
        detail = "a check is queued" if queued else "checked a moment ago: it is intact"
        return {"block_id": body["block_id"], "queued": queued, "detail": detail}

    evil.answers["/v1/blocks/report"] = answer
    return got


def test_a_block_that_does_not_verify_is_reported_and_tried_again_soon(
    tmp_path: Path, evil: Evil
) -> None:
    """The server learns of a damaged block from the device that met it, and checks it at
    once rather than at its weekly scrub: the device tries again once that is done."""
    got = _answer_reports(evil, queued=True)
    evil.add_file("/doc.txt", b"the real bytes", fid="d", served=b"a damaged block")
    engine = _engine(tmp_path, evil)
    result = engine.round()
    engine.close()
    bid = block_id(b"the real bytes")
    assert [(r["file_id"], r["rev"], r["block_id"]) for r in got] == [("d", 1, bid)]
    assert got[0]["reason"].startswith(f"block {bid} does not verify")
    # not a problem (yet): the server may well mend it before the next try
    assert (result.retry_after, result.problems) == (REPORT_RETRY_S, [])
    assert not (tmp_path / "root" / "sync" / "doc.txt").exists()


def test_a_device_waits_for_a_check_that_never_comes_a_few_times_only(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose checks never run (its maintenance off, its queue broken) answers
    "queued" for ever: one `sync --once` waited for it 30 rounds."""
    monkeypatch.setattr("tessera_client.transfer.REPORT_RETRY_S", 0.01)
    got = _answer_reports(evil, queued=True)
    evil.add_file("/doc.txt", b"the real bytes", fid="d", served=b"a damaged block")
    engine = _engine(tmp_path, evil)
    result = engine.run_once()
    engine.close()
    assert len(got) == REPORT_WAITS + 1
    assert result.problems and "not checked yet" in result.problems[0]


def test_a_block_that_came_whole_is_waited_for_afresh_when_it_fails_again(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon that waited for a block's check once, and got the block whole, waits for
    it the full `REPORT_WAITS` times when it is lost again (the count had only grown)."""
    monkeypatch.setattr("tessera_client.transfer.REPORT_RETRY_S", 0.01)
    got = _answer_reports(evil, queued=True)
    data = b"the real bytes"
    evil.add_file("/doc.txt", data, fid="d", served=b"a damaged block")
    engine = _engine(tmp_path, evil)
    assert engine.round().retry_after > 0  # waited for once
    evil.blobs["/blk/d"] = bytes(encode_block(data, block_id(data), KEY, 1))  # mended
    assert engine.run_once().problems == []
    got.clear()
    evil.add_file("/copy.txt", data, fid="e", served=b"a damaged block")  # lost again
    engine.state.set_meta("cursor", None)  # a full listing: it sees the new file
    result = engine.run_once()
    engine.close()
    assert len(got) == REPORT_WAITS + 1 and "not checked yet" in result.problems[0]


def test_a_block_missing_from_the_store_is_reported(tmp_path: Path, evil: Evil) -> None:
    got = _answer_reports(evil, queued=False)
    evil.add_file("/doc.txt", b"gone", fid="d")
    del evil.blobs["/blk/d"]  # its object is gone: the store answers 404
    engine = _engine(tmp_path, evil)
    result = engine.round()
    engine.close()
    assert got and "is not in the store (404)" in got[0]["reason"]
    # checked a moment ago: trying again soon would meet the same fault
    assert result.retry_after == 0
    assert "the server says: checked a moment ago" in result.problems[0]


def test_an_outage_during_downloads_stops_the_rest_and_records_what_came(
    tmp_path: Path, evil: Evil
) -> None:
    """The block store out of reach: the first download to give up ended the round while
    the others went on, each waiting out its own retries (minutes), and those that did
    come were renamed into place but never recorded (a later server edit of one then
    looked like a conflict with itself)."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    evil.blob_delay = 0.2
    evil.add_file("/a0.txt", b"out of reach", fid="f0")
    evil.files["f0"]["blocks"][0]["url"] = f"{dead}/blk/f0"
    for n in range(1, 12):
        evil.add_file(f"/a{n}.txt", f"file {n}".encode(), fid=f"f{n}")
    engine = _engine(tmp_path, evil)
    with pytest.raises(ServerUnreachable):
        engine.round()
    folder = tmp_path / "root" / "sync"
    came = {p.name for p in folder.iterdir() if p.name.startswith("a")}
    recorded = {e.path for e in engine.state.base_tree().values()}
    engine.close()
    assert came == recorded, (came, recorded)  # whatever came is recorded
    assert len(came) < 11  # the queued ones were not each waited for


@pytest.mark.parametrize("full", [errno.ENOSPC, errno.EDQUOT], ids=["disk", "quota"])
def test_full_disk_stops_downloads_without_corruption(
    tmp_path: Path, evil: Evil, full: int
) -> None:
    """A full disk, or the user's disk quota used up (each file had failed on its own,
    every round), stops the downloads for the round and leaves nothing half-written."""
    fake = FakeFilesystem()
    fake.write_file("keep.txt", b"precious")
    fake.space_left, fake.full_errno = 3 * 1024 * 1024, full
    evil.add_file("/a-small.txt", b"s" * 1000, fid="s")
    # its first blocks fit, not all: what it wrote (its partial download) goes too
    evil.add_blocks_file("/big.bin", _real_blocks(tmp_path, 6 * 1024 * 1024), fid="b")
    evil.add_file("/c-after.bin", b"c" * 10, fid="c")
    engine = _engine(tmp_path, evil, fs=fake)
    result = engine.run_once()
    engine.close()
    assert result.disk_full
    assert any("disk is full" in p for p in result.problems)
    assert fake.read_file("keep.txt") == b"precious"
    assert "big.bin" not in fake.nodes
    for name, data in (("a-small.txt", b"s" * 1000), ("c-after.bin", b"c" * 10)):
        assert name not in fake.nodes or fake.read_file(name) == data  # whole, or not there
    assert not [n for n in fake.nodes if TEMP_PREFIX in n]


def test_no_room_for_a_new_file_stops_downloads_as_a_full_disk(tmp_path: Path, evil: Evil) -> None:
    """Out of inodes (or of room for a new folder), the temp file cannot be created: that
    ENOSPC came before the download's full-disk handling, so every queued download failed
    on its own, each with its own message, instead of the round stopping them once."""

    class NoInodesLeft(FakeFilesystem):
        def create_temp(self, folder: str, *, like: str | None = None) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device")

        def open_partial(self, folder: str, key: str) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device")

    for n in range(3):
        evil.add_file(f"/f{n}.txt", b"x" * 10, fid=f"f{n}")
    engine = _engine(tmp_path, evil, fs=NoInodesLeft())
    result = engine.run_once(max_rounds=1)
    engine.close()
    assert result.disk_full
    assert [p for p in result.problems if "disk is full" in p] == result.problems, result.problems


def test_a_modification_time_without_a_zone_is_taken_as_utc_not_a_crash(
    tmp_path: Path, evil: Evil
) -> None:
    """A naive `mtime` in year 1 failed `.timestamp()` (local time before the epoch's
    reach) with a ValueError out of the round: a traceback, every round."""
    evil.add_file("/old.txt", b"from the dawn of time", fid="o")
    evil.entries[0]["mtime"] = "0001-01-01T00:00:00"
    engine = _engine(tmp_path, evil)
    result = engine.run_once()
    engine.close()
    assert result.problems == []
    assert (tmp_path / "root" / "sync" / "old.txt").read_bytes() == b"from the dawn of time"


def test_a_full_disk_under_the_state_database_pauses_the_sync_and_loses_nothing(
    tmp_path: Path, evil: Evil
) -> None:
    files = {f"/doc-{i:03}-{'x' * 100}.txt": f"content {i}".encode() for i in range(200)}
    for i, (path, data) in enumerate(files.items()):
        evil.add_file(path, data, fid=f"f{i}")
    engine = _engine(tmp_path, evil)
    db = engine.state._db
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    stats = engine.home.log_dir / "last-sync.json"
    stats.parent.mkdir(parents=True, exist_ok=True)
    stats.symlink_to("/dev/full")  # the run's figures cannot be written either
    result = engine.run_once()
    assert result.disk_full
    assert any("state database" in p and "free some space" in p for p in result.problems)
    folder = tmp_path / "root" / "sync"
    for path, data in files.items():
        here = folder / path[1:]
        assert not here.exists() or here.read_bytes() == data  # whole, or not there
    db.execute("PRAGMA max_page_count = 1000000")
    stats.unlink()
    result = engine.run_once()
    engine.close()
    assert result.problems == [] and not result.disk_full
    assert sorted(p.name for p in _theirs(folder.iterdir())) == sorted(p[1:] for p in files)


def _daemon_after_a_failing_round(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch, failure: Exception, wait: str
) -> tuple[list[bool], list[str]]:
    """Run the daemon (its pause `wait` shortened) whose first round raises `failure` and
    whose second stops it: the rounds' `pull` and the problems reported."""
    engine = _engine(tmp_path, evil)
    monkeypatch.setattr(f"tessera_client.engine.{wait}", 0.01)
    engine.longpoll = _quiet_longpoll  # type: ignore[method-assign]
    problems: list[str] = []
    monkeypatch.setattr(engine.reporter, "problem", problems.append)
    rounds: list[bool] = []

    def round_(pull: bool = True) -> RoundResult:
        rounds.append(pull)
        if len(rounds) == 1:
            raise failure
        engine.stop()
        return RoundResult()

    engine.round = round_  # type: ignore[method-assign]
    engine.run_daemon()
    engine.close()
    return rounds, problems


def test_the_daemon_waits_out_a_full_disk_under_its_state_database(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = DiskFullError(errno.ENOSPC, "the disk is full: the state database x")
    rounds, problems = _daemon_after_a_failing_round(
        tmp_path, evil, monkeypatch, full, "DISK_FULL_WAIT_S"
    )
    assert len(rounds) == 2 and rounds[1]  # it went on, and pulled again
    assert any(p.startswith("sync paused: the disk is full") for p in problems)


def test_the_daemon_waits_out_a_failing_folder_disk(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error outside what the scan takes as unseen (the marker's check on a pulled
    drive or a stale network mount: EIO) ended the daemon with a traceback."""
    failing = OSError(errno.EIO, "Input/output error", ".tessera-folder")
    rounds, problems = _daemon_after_a_failing_round(
        tmp_path, evil, monkeypatch, failing, "FOLDER_ERROR_WAIT_S"
    )
    assert len(rounds) == 2 and rounds[1]  # it went on, and pulled again
    assert any("sync paused: cannot use" in p and "Input/output error" in p for p in problems)


def _daemon_rounds(
    engine: SyncEngine, monkeypatch: pytest.MonkeyPatch, rounds: int, each: Callable[[int], None]
) -> list[str]:
    """Run the daemon for `rounds` rounds (each one `each(n)` instead of a sync, full scans
    every 0.2 s); the problems it reported."""
    engine.settings = replace(engine.settings, scan_interval_s=0.2)
    engine.longpoll = _quiet_longpoll  # type: ignore[method-assign]
    problems: list[str] = []
    monkeypatch.setattr(engine.reporter, "problem", problems.append)
    done = itertools.count(1)

    def round_(pull: bool = True) -> RoundResult:
        n = next(done)
        each(n)
        if n >= rounds:
            engine.stop()
        return RoundResult()

    engine.round = round_  # type: ignore[method-assign]
    engine.run_daemon()
    engine.close()
    return [" ".join(p.split()) for p in problems]


@pytest.mark.parametrize(
    ("error", "where", "limit"),
    [
        (OSError(errno.ENOSPC, "inotify watch limit reached"), "start", "max_user_watches"),
        # inotify's instance limit (128 a user) is met as the observer is made
        (OSError(errno.EMFILE, "inotify instance limit reached"), "observer", "max_user_instances"),
    ],
    ids=["watches", "instances"],
)
def test_the_daemon_runs_on_full_scans_when_the_folder_cannot_be_watched(
    tmp_path: Path,
    evil: Evil,
    monkeypatch: pytest.MonkeyPatch,
    error: OSError,
    where: str,
    limit: str,
) -> None:
    """inotify's watch limit reached, the watcher's start raised and the daemon never ran;
    its instance limit raised as the watcher was made, and ended `tessera sync` with a
    traceback. Each full scan tries again, and the problem is said once."""
    from watchdog.observers.api import BaseObserver

    from tessera_client import watcher

    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    if where == "start":
        monkeypatch.setattr(BaseObserver, "start", refuse)
    else:
        monkeypatch.setattr(watcher, "Observer", refuse)
    problems = _daemon_rounds(_engine(tmp_path, evil), monkeypatch, 3, lambda n: time.sleep(0.25))
    said = [p for p in problems if "cannot watch" in p]
    assert len(said) == 1 and limit in said[0] and "full scan" in said[0], problems


def test_the_daemon_watches_a_folder_made_again_at_its_path(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synced folder deleted and made again (or unmounted and mounted again): the
    watch had gone with the old one, and nothing ever woke the daemon again but its full
    scans. The next full scan now watches the folder there."""
    from tessera_client.watcher import Watcher

    engine = _engine(tmp_path, evil)
    started: list[bool] = []
    start = Watcher.start

    def counted(self: Watcher) -> None:
        start(self)
        started.append(True)

    def replace_folder(n: int) -> None:
        if n == 1:
            shutil.rmtree(engine.folder)
            engine.folder.mkdir()
        time.sleep(0.25)  # a full scan is due at the next round

    monkeypatch.setattr(Watcher, "start", counted)
    problems = _daemon_rounds(engine, monkeypatch, 3, replace_folder)
    assert len(started) == 2, (started, problems)
    assert problems == []


def test_the_daemon_says_once_that_its_folder_is_gone_and_when_it_watches_again(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder away for a while (a drive unmounted): each full scan tries to watch it,
    says so once, and says when it watches again."""
    engine = _engine(tmp_path, evil)
    events: list[str] = []
    monkeypatch.setattr(engine.reporter, "event", events.append)

    def away_for_a_while(n: int) -> None:
        if n == 1:
            shutil.rmtree(engine.folder)
        if n == 3:
            engine.folder.mkdir()
        time.sleep(0.25)  # a full scan is due at the next round

    problems = _daemon_rounds(engine, monkeypatch, 5, away_for_a_while)
    assert [p for p in problems if "cannot watch" in p and "no such folder" in p] == problems
    assert len(problems) == 1, problems
    assert events == [f"watching {engine.folder} for changes again"]


def test_the_daemon_says_which_folders_are_not_watched(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """watchdog skips a subfolder it cannot watch without a word: changes in it woke
    nothing, and the user never learnt why they waited for the full scan."""
    from tessera_client.watcher import Watcher

    monkeypatch.setattr(Watcher, "unwatched_folders", lambda self: 3)
    problems = _daemon_rounds(_engine(tmp_path, evil), monkeypatch, 1, lambda n: None)
    assert any(
        "3 folder(s)" in p and "max_user_watches" in p and "restart the sync" in p for p in problems
    ), problems


def _outage(tmp_path: Path, evil: Evil) -> SyncEngine:
    """An engine waiting as a device does (its policy's own wait), and a file to download
    from a block store that answers 503 with a minute's Retry-After."""
    engine = _engine(tmp_path, evil)
    engine.api.policy = RetryPolicy(attempts=3)
    evil.add_file("/doc.bin", b"a file the store cannot serve now", fid="doc")
    evil.outage = True
    return engine


def test_a_daemon_told_to_stop_during_an_outage_stops_at_once(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while a download waits out the store's Retry-After: the daemon waited for
    it (a minute a retry, up to `max_wait`), past systemd's stop timeout. Its calls now
    give up their retries, and the stop is no problem to report."""
    engine = _outage(tmp_path, evil)
    engine.longpoll = _quiet_longpoll  # type: ignore[method-assign]
    problems: list[str] = []
    monkeypatch.setattr(engine.reporter, "problem", problems.append)
    daemon = threading.Thread(target=engine.run_daemon, daemon=True)
    daemon.start()
    assert evil.outage_met.wait(30)
    engine.stop()
    daemon.join(timeout=20)  # (a minute's wait, were it still waited out)
    stopped = not daemon.is_alive()
    engine.close()
    assert stopped
    assert problems == []
    assert not (engine.folder / "doc.bin").exists()


def test_ctrl_c_in_a_sync_once_ends_the_retry_waits_of_its_downloads(
    tmp_path: Path, evil: Evil
) -> None:
    """Ctrl-C raised KeyboardInterrupt on the main thread, which then waited for each
    download thread to finish waiting out its retries: a minute a retry here."""
    engine = _outage(tmp_path, evil)
    home, folder = engine.home, engine.folder
    engine.close()
    home.save_settings(Settings(server_url=evil.base, device_name="dev", retry_attempts=3))
    env = {**os.environ, "TESSERA_HOME": str(home.path)}
    cmd = [sys.executable, "-m", "tessera_client", "sync", "--once", str(folder)]
    restore_sigint = partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    proc = subprocess.Popen(cmd, env=env, preexec_fn=restore_sigint, stderr=subprocess.PIPE)
    try:
        assert evil.outage_met.wait(60)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)  # (a minute's wait, were it still waited out)
    finally:
        proc.kill()
        stderr = proc.communicate()[1].decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert "Stopped: nothing was lost" in stderr  # (it had ended without a word)
    assert not (folder / "doc.bin").exists()


def test_ctrl_c_ends_retry_waits_and_is_put_back_after(tmp_path: Path, evil: Evil) -> None:
    from tessera_client.commands import _ctrl_c_ends_retries

    engine = _engine(tmp_path, evil)
    # (set here: a suite run in the background, as by `nohup ... &`, ignores SIGINT)
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(typer.Exit) as stopped, _ctrl_c_ends_retries(engine.api, "Stopped."):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # (the signal is handled at once)
        assert stopped.value.exit_code == 130
        assert engine.api.policy.stop.is_set()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        # a process that ignores SIGINT (a job started with `&`) is left ignoring it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with _ctrl_c_ends_retries(engine.api, "Stopped."):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, original)
        engine.close()


def test_a_file_comes_in_pages_and_expired_block_urls_are_renewed(
    tmp_path: Path, evil: Evil
) -> None:
    pieces = _real_blocks(tmp_path, 6 * 1024 * 1024)
    assert len(pieces) >= 5
    evil.add_blocks_file("/big.bin", pieces, fid="big")
    evil.page_blocks = 2
    evil.expired = {"/blk/big/1", "/blk/big/4"}  # their URLs ran out while others came
    engine = _engine(tmp_path, evil)
    result = engine.run_once()
    engine.close()
    assert result.problems == []
    assert (tmp_path / "root" / "sync" / "big.bin").read_bytes() == b"".join(pieces)
    pages = (len(pieces) + 1) // 2
    assert evil.posted.count("/v1/download") == pages + 2  # and two renewals


@pytest.mark.parametrize("lie", ["pages for ever", "renews another block"])
def test_a_server_lying_in_its_pages_gets_no_file(tmp_path: Path, evil: Evil, lie: str) -> None:
    pieces = [b"one" * 500, b"two" * 500, b"six" * 500]  # (refused before any scan)
    evil.add_blocks_file("/doc.bin", pieces, fid="d")
    evil.page_blocks = 1
    if lie == "pages for ever":
        evil.stuck_pages = True
    else:  # block 1's bytes would be block 2's: the list and its hash are still right
        evil.expired = {"/blk/d/1"}
        evil.renew_wrong = True
    engine = _engine(tmp_path, evil)
    result = engine.run_once()
    engine.close()
    assert any("doc.bin" in p for p in result.problems), result.problems
    folder = tmp_path / "root" / "sync"
    assert not (folder / "doc.bin").exists()
    _assert_only_verified_partials(folder, b"".join(pieces))


def test_cold_blocks_are_waited_for_and_then_downloaded(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil.add_file("/archive.txt", b"from the glacier", fid="g")
    evil.restoring = 2
    engine = _engine(tmp_path, evil)
    events: list[str] = []
    monkeypatch.setattr(engine.reporter, "event", events.append)
    result = engine.run_once()
    engine.close()
    assert result.problems == []
    assert (tmp_path / "root" / "sync" / "archive.txt").read_bytes() == b"from the glacier"
    assert any("restoring from cold storage" in e for e in events)


def test_a_failed_rename_leaves_the_old_file_and_resumes_the_download(
    tmp_path: Path, evil: Evil
) -> None:
    fake = FakeFilesystem()
    evil.add_file("/doc.txt", b"server version", fid="d")
    engine = _engine(tmp_path, evil, fs=fake)
    assert engine.run_once().problems == []
    assert fake.read_file("doc.txt") == b"server version" and fake.fsyncs >= 1
    evil.entries.clear()
    evil.add_file("/doc.txt", b"server version 2", fid="d")
    evil.entries[0]["rev"] = 2
    engine.state.set_meta("cursor", None)
    fake.fail_rename = True
    result = engine.run_once()
    assert result.problems
    assert fake.read_file("doc.txt") == b"server version"
    [partial] = [n for n in fake.nodes if TEMP_PREFIX in n]
    # for the next attempt, its mtime now (the scan's sweep leaves it), not the server's
    assert fake.read_file(partial) == b"server version 2"
    fake.fail_rename = False
    fetched = len(evil.fetched)
    assert engine.run_once().problems == []
    engine.close()
    assert fake.read_file("doc.txt") == b"server version 2"
    assert len(evil.fetched) == fetched  # resumed: nothing fetched again
    assert not [n for n in fake.nodes if TEMP_PREFIX in n]


def _synced(engine: SyncEngine, tmp_path: Path, name: str, data: bytes) -> Path:
    """A file on disk that the state database records as synced (base and mirror)."""
    path = tmp_path / "root" / "sync" / name
    path.write_bytes(data)
    st = path.stat()
    entry = Entry(name, EntryKind.FILE, content_hash([block_id(data)]), len(data), "f-" + name, 1)
    engine.state.put_base(replace(entry, mtime_ns=st.st_mtime_ns, inode=st.st_ino))
    engine.state.put_remote(entry)
    return path


def test_a_cursor_the_server_no_longer_knows_deletes_nothing(tmp_path: Path, evil: Evil) -> None:
    """A server with new keys (or restored, or another account's) refuses the cursor: the
    fresh listing lacks the synced files, which read as deleted there against the old base,
    and were deleted here."""
    engine = _engine(tmp_path, evil)
    kept = [_synced(engine, tmp_path, f"notes{i}.txt", b"mine %d" % i) for i in range(3)]
    engine.state.set_meta("cursor", "issued-by-the-old-server")
    evil.reset_cursors = True
    engine.run_once()
    engine.close()
    assert all(p.read_bytes() == b"mine %d" % i for i, p in enumerate(kept))
    assert "/v1/list_folder" in evil.posted  # listed afresh
    assert "/v1/uploads" in evil.posted  # and offered as this device's files (refused here)


def test_another_account_on_the_same_home_deletes_nothing(tmp_path: Path, evil: Evil) -> None:
    engine = _engine(tmp_path, evil)
    kept = _synced(engine, tmp_path, "diary.txt", b"private")
    engine.state.set_meta("cursor", None)  # a listing from scratch, as after a fresh login
    engine.close()
    home = Home(tmp_path / "home")
    other = Settings(server_url=evil.base, email="someone.else@example.com", device_name="dev")
    api = Api(evil.base, home, policy=RetryPolicy(attempts=2, base=0.01))
    engine = SyncEngine(home, other, tmp_path / "root" / "sync", api)
    engine.run_once()
    engine.close()
    assert kept.read_bytes() == b"private"


def test_an_upload_the_server_keeps_refusing_ends_the_run(tmp_path: Path, evil: Evil) -> None:
    """A refusal the next round meets again (here the server has no upload route; over
    quota is the same) was counted as work done, so every round started the next at once:
    `--once` ran all its rounds, the daemon spun."""
    engine = _engine(tmp_path, evil)
    (tmp_path / "root" / "sync" / "big.bin").write_bytes(b"more than the quota allows")
    result = engine.run_once()
    engine.close()
    assert any("big.bin" in p for p in result.problems), result.problems
    assert evil.posted.count("/v1/uploads") == 1


def test_the_long_poll_waits_for_the_pull_after_news(tmp_path: Path, evil: Evil) -> None:
    """With news pending (or no cursor yet) the server answers a long-poll at once: asked
    again before the round pulled, the thread sent hundreds of requests a second (and with
    no cursor spun without any)."""
    engine = _engine(tmp_path, evil)
    asked: list[str | None] = []

    def news() -> bool:
        asked.append(engine.state.cursor)
        return True

    engine.longpoll = news  # type: ignore[method-assign]
    poller = threading.Thread(target=engine._longpoll_loop, daemon=True)
    poller.start()
    time.sleep(0.5)
    assert asked == [None]  # then it waits for a pull
    engine.pull()  # the round it woke
    time.sleep(0.3)
    engine.stop()
    poller.join(5)
    engine.close()
    assert asked == [None, "c1"]


def test_the_long_poll_outlives_an_unexpected_error(tmp_path: Path, evil: Evil) -> None:
    engine = _engine(tmp_path, evil)
    engine.state.set_meta("cursor", "c1")
    calls: list[int] = []

    def broken() -> bool:
        calls.append(1)
        raise AttributeError("'list' object has no attribute 'get'")  # a malformed answer

    engine.longpoll = broken  # type: ignore[method-assign]
    problems: list[str] = []
    engine.reporter.problem = problems.append  # type: ignore[method-assign,assignment]
    poller = threading.Thread(target=engine._longpoll_loop, daemon=True)
    poller.start()
    time.sleep(0.2)
    alive = poller.is_alive()
    engine.stop()
    poller.join(5)
    engine.close()
    assert alive and calls and any("waiting for the server" in p for p in problems)


def test_one_device_syncs_in_one_process_at_a_time(tmp_path: Path, evil: Evil) -> None:
    """The daemon and a `tessera sync --once` beside it both uploaded an edit: the loser of
    the race renamed it to a conflicted copy, and that rename went to every device."""
    first = _engine(tmp_path, evil)
    home = Home(tmp_path / "home")

    def another() -> SyncEngine:
        settings = Settings(server_url=evil.base, device_name="dev")
        return SyncEngine(home, settings, tmp_path / "root" / "sync", Api(evil.base, home))

    with pytest.raises(SyncError, match=f"already syncing \\(pid {os.getpid()}\\)"):
        another()
    first.close()
    another().close()  # free again once the first one is closed


def test_a_racily_recorded_file_found_unchanged_is_trusted_again(
    tmp_path: Path, evil: Evil
) -> None:
    engine = _engine(tmp_path, evil)
    path = _synced(engine, tmp_path, "report.txt", b"final")
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(an_hour_ago, an_hour_ago))
    synced = engine.state.base_tree()["report.txt"]
    engine.state.put_base(replace(synced, mtime_ns=0))  # recorded racily clean
    engine.state.set_meta("cursor", "c1")
    engine.round()
    recorded = engine.state.base_tree()["report.txt"]
    engine.close()
    assert (recorded.mtime_ns, recorded.content_hash) == (an_hour_ago, synced.content_hash)


def test_a_second_folder_on_one_device_is_refused_and_leaves_it_usable(
    tmp_path: Path, evil: Evil
) -> None:
    _engine(tmp_path, evil).close()  # binds the device to root/sync
    home = Home(tmp_path / "home")
    other = tmp_path / "elsewhere"
    other.mkdir()
    settings = Settings(server_url=evil.base, device_name="dev")
    with pytest.raises(SyncError, match="already syncs") as refused:
        SyncEngine(home, settings, other, Api(evil.base, home))
    # the refusal let go of the device (not only once the error is collected): the bound
    # folder still syncs while the caller still holds the error
    SyncEngine(home, settings, tmp_path / "root" / "sync", Api(evil.base, home)).close()
    assert refused.value is not None


class _NewsRightAfterTheCheck(threading.Event):
    """The long-poll thread's flag, set by that thread just after the daemon's second look
    at it (the moment between checking and clearing the flag)."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake, self._looks = wake, 0

    def is_set(self) -> bool:
        self._looks += 1
        seen = super().is_set()
        if self._looks == 2:
            self.set()
            self._wake.set()
        return seen


def test_news_arriving_as_the_daemon_checks_for_it_still_gets_a_pull(
    tmp_path: Path, evil: Evil
) -> None:
    engine = _engine(tmp_path, evil)
    engine._remote_changed = _NewsRightAfterTheCheck(engine._wake)
    engine.longpoll = _quiet_longpoll  # type: ignore[method-assign]
    pulls: list[bool] = []

    def round_(pull: bool = True) -> RoundResult:
        pulls.append(pull)
        if len(pulls) < 3:
            engine._wake.set()  # something changed here: another round, without news
        if len(pulls) == 3:
            engine.stop()
        return RoundResult()

    engine.round = round_  # type: ignore[method-assign]
    engine.run_daemon()
    engine.close()
    # the first round is a full one; the news came in as the second was decided
    assert pulls[0] and pulls[2], pulls


def _uploads_answer(key: bytes = KEY, key_version: int = 1) -> Callable[[dict[str, Any]], Any]:
    """`/v1/uploads`: every block needed, under `key` of `key_version`."""

    def answer(body: dict[str, Any]) -> Any:
        ids = {b["id"] for f in body["files"] for b in f["blocks"]}
        key64 = base64.b64encode(key).decode()
        needed = [{"id": i, "key_version": key_version, "key": key64} for i in ids]
        return {"upload_id": "u1", "expires_at": "2099-01-01T00:00:00Z", "needed": needed}

    return answer


def _urls_answer(evil: Evil, drop: int = 0) -> Callable[[dict[str, Any]], Any]:
    """`/v1/uploads/urls`: a PUT URL per block, less the last `drop` of them."""

    def answer(body: dict[str, Any]) -> Any:
        blocks = body["blocks"][: len(body["blocks"]) - drop]
        urls = [
            {"id": b["id"], "method": "PUT", "url": f"{evil.base}/put/{b['id']}"} for b in blocks
        ]
        return {"urls": urls}

    return answer


def _two_new_files(tmp_path: Path, evil: Evil, urls: Callable[[dict[str, Any]], Any]) -> SyncEngine:
    """An engine over two new files to upload, the server answering `/v1/uploads/urls`
    with `urls` (and the other upload routes honestly)."""
    evil.answers = {
        "/v1/uploads": _uploads_answer(),
        "/v1/uploads/urls": urls,
        "/v1/commit_batch": _commit_batch_answer(drop=0),
    }
    engine = _engine(tmp_path, evil)
    for name in ("a.txt", "b.txt"):
        (tmp_path / "root" / "sync" / name).write_bytes(name.encode() * 1000)
    return engine


def _commit_batch_answer(drop: int) -> Callable[[dict[str, Any]], Any]:
    """`/v1/commit_batch`: a result per entry, less the last `drop` of them."""

    def answer(body: dict[str, Any]) -> Any:
        entries = []
        for n, e in enumerate(body["entries"][: len(body["entries"]) - drop]):
            name = e["path"].rsplit("/", 1)[-1]
            entry = {".tag": "file", "name": name, "path_display": e["path"],
                     "path_lower": e["path"].lower(), "file_id": f"f{n}", "rev": 1,
                     "size": e["size"], "content_hash": e["content_hash"],
                     "server_modified": "2026-11-26T01:00:00Z", "ns_id": 1}  # fmt: skip
            entries.append({".tag": "success", "entry": entry})
        return {"entries": entries}

    return answer


@pytest.mark.parametrize(
    "lie",
    ["short key", "key version out of range", "missing URL", "missing commit result"],
)
def test_a_malformed_upload_answer_is_reported_not_a_crash(
    tmp_path: Path, evil: Evil, lie: str
) -> None:
    """A key of the wrong length, or fewer URLs or commit results than asked for, raised
    ValueError deep in the upload (the cipher, `zip(strict=True)`): not an `ApiError`, so
    it ended the round and the daemon. Now each is the server's malformed answer (502),
    reported, and the round ends normally."""
    evil.answers = {
        "/v1/uploads": _uploads_answer(
            KEY[:16] if lie == "short key" else KEY,
            2**32 if lie == "key version out of range" else 1,
        ),
        "/v1/uploads/urls": _urls_answer(evil, drop=1 if lie == "missing URL" else 0),
        "/v1/commit_batch": _commit_batch_answer(drop=1 if lie == "missing commit result" else 0),
    }
    engine = _engine(tmp_path, evil)
    for name in ("a.txt", "b.txt"):
        (tmp_path / "root" / "sync" / name).write_bytes(name.encode() * 1000)
    result = engine.run_once(max_rounds=1)
    engine.close()
    reported = "\n".join(result.problems)
    expected = {
        "short key": "does not fit at needed.0.key",
        "key version out of range": "does not fit at needed.0.key_version",
        "missing URL": "answered 1 block URLs for the 2 asked for",
        "missing commit result": "answered 1 commit results for the 2 asked for",
    }[lie]
    assert expected in reported, reported


def _another_version(entry: dict[str, Any], lie: str) -> dict[str, Any]:
    """`entry` with one field telling of another version than the one committed."""
    other = {
        "content_hash": entry["content_hash"][:-1]
        + ("0" if entry["content_hash"][-1] != "0" else "1"),
        "size": entry["size"] + 1,
        "path_display": "/other.txt",
    }
    return {**entry, lie: other[lie]}


@pytest.mark.parametrize("lie", ["content_hash", "size", "path_display"])
@pytest.mark.parametrize("count", [1, 2], ids=["commit", "batch"])
def test_a_commit_answered_with_another_version_is_not_recorded(
    tmp_path: Path, evil: Evil, lie: str, count: int
) -> None:
    """The client recorded whatever entry a commit's answer held. From a broken or lying
    server, another version stood for the file's content here: the file, held in sync,
    was never sent again while the server kept something else. Such an answer is now
    malformed: reported, nothing recorded, and the session kept for the next round."""
    honest = _commit_batch_answer(drop=0)

    def lying(body: dict[str, Any]) -> Any:
        answer = honest(body)
        for result in answer["entries"]:
            result["entry"] = _another_version(result["entry"], lie)
        return answer

    evil.answers = {
        "/v1/uploads": _uploads_answer(),
        "/v1/uploads/urls": _urls_answer(evil),
        "/v1/commit": lambda body: lying({"entries": [body]})["entries"][0]["entry"],
        "/v1/commit_batch": lying,
    }
    engine = _engine(tmp_path, evil)
    names = ["a.txt", "b.txt"][:count]
    for name in names:
        (tmp_path / "root" / "sync" / name).write_bytes(name.encode() * 1000)
    result = engine.run_once(max_rounds=1)
    reported = " ".join("\n".join(result.problems).split())
    for name in names:
        assert f"the server answered the commit of '/{name}' with another version" in reported
        assert engine.state.base_entry(name) is None
        assert engine.state.get_pending("upload", name) is not None
    engine.close()


def test_a_session_the_server_keeps_alive_is_resumed_past_its_first_hour(
    tmp_path: Path, evil: Evil
) -> None:
    """Each `/v1/uploads/urls` moves the session's expiry on (up to 48 h from its start).
    The client kept the first answer's hour: an upload interrupted past it started a new
    session, and sent every block again."""
    soon = datetime.now(UTC) + timedelta(hours=1)
    later = datetime(2099, 1, 1, tzinfo=UTC)
    start, urls = _uploads_answer(), _urls_answer(evil)
    evil.answers = {
        "/v1/uploads": lambda body: {**start(body), "expires_at": soon.isoformat()},
        "/v1/uploads/urls": lambda body: {**urls(body), "expires_at": later.isoformat()},
        "/v1/commit": lambda body: {},  # an answer that is none: the commit may pass later
    }
    engine = _engine(tmp_path, evil)
    (tmp_path / "root" / "sync" / "a.txt").write_bytes(b"a" * 1000)
    engine.run_once(max_rounds=1)
    pending = engine.state.get_pending("upload", "a.txt")
    assert pending is not None and pending["expires_at"] == soon.timestamp()
    assert engine.state.session_expiry(pending) == later.timestamp()
    engine.close()


def test_a_put_url_that_expired_before_its_turn_is_renewed(tmp_path: Path, evil: Evil) -> None:
    """A window's URLs are signed while the window before still sends: on a slow link (or
    after a suspend) they expire before their turn, and the store answers 403. That failed
    the upload, every round; now the block's URL is renewed, once."""
    asked: list[str] = []

    def urls(body: dict[str, Any]) -> Any:
        blocks = []
        for b in body["blocks"]:
            first = b["id"] not in asked
            asked.append(b["id"])
            path = f"/put/expired/{b['id']}" if first else f"/put/{b['id']}"
            blocks.append({"id": b["id"], "method": "PUT", "url": evil.base + path})
        return {"urls": blocks}

    engine = _two_new_files(tmp_path, evil, urls)
    result = engine.run_once(max_rounds=1)
    engine.close()
    assert not [p for p in result.problems if "upload" in p], result.problems
    assert "/v1/commit_batch" in evil.posted
    assert sorted(evil.put_paths) == sorted(
        [f"/put/expired/{b}" for b in set(asked)] + [f"/put/{b}" for b in set(asked)]
    )


def test_a_block_committed_in_its_session_meanwhile_starts_the_file_afresh(
    tmp_path: Path, evil: Evil
) -> None:
    """Two files sharing a block in one session, resumed in different calls: one sends
    the block and commits, and the other, whose record knows only its own sends, asks for
    the block's URL again: 409 (committed in this session). That ended every upload, each
    round, for as long as the session lived; the file now starts afresh next round."""
    urls = _urls_answer(evil)
    refused: list[str] = []

    def urls_once_refused(body: dict[str, Any]) -> Any:
        if not refused:
            refused.append(body["blocks"][0]["id"])
            message = f"block {refused[0]} is committed in this session; it cannot change"
            return 409, {"error": {"code": "conflict", "message": message}}
        return urls(body)

    engine = _two_new_files(tmp_path, evil, urls_once_refused)
    result = engine.run_once()
    engine.close()
    assert result.problems == [] and refused
    assert evil.posted.count("/v1/uploads") == 2  # a fresh session the next round
    assert "/v1/commit_batch" in evil.posted


def test_a_block_store_answering_404_is_reported_not_taken_for_a_lost_session(
    tmp_path: Path, evil: Evil
) -> None:
    """A missing bucket (or a proxy) answering 404 to every PUT was taken for an expired
    session: the files were forgotten without a word and started afresh, every round."""
    evil.answers = {
        "/v1/uploads": _uploads_answer(),
        "/v1/uploads/urls": lambda body: {
            "urls": [
                {"id": b["id"], "method": "PUT", "url": f"{evil.base}/put/gone/{b['id']}"}
                for b in body["blocks"]
            ]
        },
    }
    engine = _engine(tmp_path, evil)
    (tmp_path / "root" / "sync" / "a.txt").write_bytes(b"a" * 1000)
    result = engine.run_once(max_rounds=1)
    kept = engine.state.get_pending("upload", "a.txt")
    engine.close()
    assert any("(404)" in p and "upload" in p for p in result.problems), result.problems
    assert kept is not None  # kept for a retry


def test_an_upload_stopped_midway_names_only_the_files_it_left(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The problem said "upload of 3 file(s)" when the first was committed and recorded
    before the server stopped the upload: it names the files left now."""
    monkeypatch.setattr(transfer, "WINDOW_BLOCKS", 1)  # a window, a URL call, per file
    urls, commit = _urls_answer(evil), _commit_batch_answer(drop=0)
    asked: list[Any] = []

    def urls_until_the_third(body: dict[str, Any]) -> Any:
        asked.append(body)
        if len(asked) > 2:  # the first window is committed by then
            return 400, {"error": {"code": "invalid", "message": "no more"}}
        return urls(body)

    evil.answers = {
        "/v1/uploads": _uploads_answer(),
        "/v1/uploads/urls": urls_until_the_third,
        "/v1/commit": lambda body: commit({"entries": [body]})["entries"][0]["entry"],
        "/v1/commit_batch": commit,
    }
    engine = _engine(tmp_path, evil)
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / "root" / "sync" / name).write_bytes(name.encode() * 1000)
    result = engine.run_once(max_rounds=1)
    recorded = {e.path for e in engine.state.base_tree().values()}
    engine.close()
    assert "a.txt" in recorded
    assert [p for p in result.problems if "upload of" in p] == [
        "upload of 2 file(s): no more (400)"
    ]


@pytest.mark.parametrize(("backoff", "waited"), [(7, 7.0), (10**10, MAX_LONGPOLL_BACKOFF_S)])
def test_a_long_polls_backoff_is_waited_before_the_next(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch, backoff: int, waited: float
) -> None:
    """A server shedding load answers `backoff`: the device waits that long (or until it
    is stopped) before it long-polls again, instead of at once; at most
    `MAX_LONGPOLL_BACKOFF_S` (years had left the daemon deaf to the server; more than a
    timestamp holds raised in the wait, every 2 s)."""
    engine = _engine(tmp_path, evil)
    engine.state.set_meta("cursor", "c1")
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False  # not stopped

    sent: list[Any] = []

    def call(route: str, body: Any, **kwargs: Any) -> Any:
        sent.append(body)
        return {"changes": False, "backoff": backoff}

    engine.settings.longpoll_timeout_s = 90.0  # type: ignore[assignment]  # a hand-edited config
    monkeypatch.setattr(engine.api, "call", call)
    monkeypatch.setattr(engine._stop, "wait", wait)
    assert engine.longpoll() is False
    engine.close()
    assert waits == [waited]
    assert sent[0]["timeout"] == 90 and isinstance(sent[0]["timeout"], int)  # the server's type


def test_an_idle_long_poll_is_answered_not_timed_out(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server holds a long-poll for the whole wait it was asked for; the client's read
    timeout was that same wait (60 s), so every idle poll ended in a timeout, was retried,
    and after 8 tries read as the server unreachable. (Scaled down: 1 s waits.)"""
    monkeypatch.setattr("tessera_client.engine.LONGPOLL_GRACE_S", 1.0)

    def hold(body: dict[str, Any]) -> dict[str, Any]:
        time.sleep(body["timeout"] + 0.2)  # its wait, after reading the request
        return {"changes": False}

    evil.answers["/v1/list_folder/longpoll"] = hold
    home = Home(tmp_path / "home")
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=2e9))
    settings = Settings(server_url=evil.base, device_name="dev", longpoll_timeout_s=1)
    api = Api(evil.base, home, policy=RetryPolicy(attempts=1), timeout=1.0)
    (tmp_path / "sync").mkdir()
    engine = SyncEngine(home, settings, tmp_path / "sync", api)
    engine.state.set_meta("cursor", "c1")
    try:
        assert engine.longpoll() is False
    finally:
        engine.close()


def test_an_upload_url_with_another_method_is_never_sent(
    tmp_path: Path, evil: Evil, bystander: tuple[str, list[str]]
) -> None:
    """As for downloads: a block is stored with PUT, whatever method the server names."""
    url, received = bystander
    urls = _urls_answer(evil)
    evil.answers = {
        "/v1/uploads": _uploads_answer(),
        "/v1/uploads/urls": lambda body: {
            "urls": [{**u, "method": "POST", "url": f"{url}/api"} for u in urls(body)["urls"]]
        },
    }
    engine = _engine(tmp_path, evil)
    (tmp_path / "root" / "sync" / "a.txt").write_bytes(b"a" * 1000)
    result = engine.run_once(max_rounds=1)
    engine.close()
    assert received == []
    assert any("POST" in p for p in result.problems), result.problems


@pytest.mark.parametrize("retry_after", [1e12, "soon", None])
def test_a_cold_storage_answer_that_does_not_fit_ends_nothing(
    tmp_path: Path, evil: Evil, retry_after: Any
) -> None:
    """A 202 whose wait overflowed the daemon's timer (1e12 s) ended it; one that was not
    a number raised out of the round. The wait is bounded, and a malformed one reported."""
    evil.add_file("/frozen.bin", b"cold", fid="f")
    evil.restoring, evil.restoring_after = 1, retry_after
    engine = _engine(tmp_path, evil)
    result = engine.round()
    engine.close()
    if retry_after == 1e12:
        assert 1 <= result.retry_after <= 3600
    else:
        assert any("frozen.bin" in p for p in result.problems), result.problems


def test_a_listing_that_does_not_fit_ends_nothing(tmp_path: Path, evil: Evil) -> None:
    """An entry that is not an object raised AttributeError out of the round; it is left
    out, and the others are synced."""
    evil.add_file("/ok.txt", b"fine", fid="ok")
    evil.entries.append("x")  # type: ignore[arg-type]
    problems: list[str] = []
    engine = _engine(tmp_path, evil)
    engine.reporter.problem = problems.append  # type: ignore[method-assign,assignment]
    result = engine.run_once()
    engine.close()
    assert (tmp_path / "root" / "sync" / "ok.txt").read_bytes() == b"fine"
    assert any("not an object" in p for p in problems + result.problems)


@pytest.mark.parametrize(
    ("page", "reported"),
    [
        ({"entries": [], "cursor": "c1", "has_more": True}, "does not move on"),
        (["not", "a", "page"], "does not fit"),
    ],
)
def test_a_listing_that_never_moves_on_ends_the_pull(
    tmp_path: Path, evil: Evil, page: Any, reported: str
) -> None:
    """Pages that all say `has_more` with the same cursor kept the pull asking for ever,
    and a page that is not an object raised AttributeError out of the daemon; now the pull
    fails as on any malformed answer (the daemon reports it and retries)."""
    evil.continue_page = page
    engine = _engine(tmp_path, evil)
    with pytest.raises(ApiError, match=reported):
        engine.round()
    engine.close()
    assert evil.posted.count("/v1/list_folder/continue") == 1


def test_a_listing_of_empty_pages_without_end_ends_the_pull_and_a_stop_ends_it_at_once(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty pages, each under a new cursor: the same-cursor check never fired, and the
    pull (and the daemon's stop with it) asked for the next for ever."""
    monkeypatch.setattr("tessera_client.api.MAX_EMPTY_PAGES", 5)
    cursors = itertools.count()
    evil.continue_page = lambda body: {
        "entries": [],
        "cursor": f"c{next(cursors)}",
        "has_more": True,
    }
    engine = _engine(tmp_path, evil)
    with pytest.raises(ApiError, match="empty pages without end"):
        engine.pull()
    assert evil.posted.count("/v1/list_folder/continue") == 4  # (the first page is empty too)
    engine.api.policy.stop.set()  # what the daemon's stop does
    with pytest.raises(RetriesStopped):
        engine.pull()
    engine.close()
    assert evil.posted.count("/v1/list_folder/continue") == 5  # its first page, no next


def test_a_listing_that_never_moves_on_ends_ls(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tessera ls` (and `get` of a folder) read pages without the pull's checks: one
    repeating its cursor had them ask thousands of times a second, for ever."""
    evil.add_file("/a.txt", b"a", fid="a")
    evil.continue_page = {"entries": [], "cursor": "c1", "has_more": True}
    code, output = _cli(evil, tmp_path, monkeypatch, "ls")
    assert code != 0 and "does not move on" in output, output
    assert evil.posted.count("/v1/list_folder/continue") == 1


def _cli(
    evil: Evil, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str]:
    """`tessera ARGS` against the fake server: (exit code, output)."""
    home = Home(tmp_path / "home")
    monkeypatch.setenv("TESSERA_HOME", str(home.path))
    home.save_settings(Settings(server_url=evil.base, device_name="dev", retry_attempts=1))
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=2e9))
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())  # (as the terminal wraps it)


def _get(
    evil: Evil, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str]:
    """`tessera get ARGS` against the fake server (its metadata answers by path):
    (exit code, output)."""
    evil.answers["/v1/metadata"] = lambda body: next(
        e for e in evil.entries if e["path_display"] == body["path"]
    )
    return _cli(evil, tmp_path, monkeypatch, "get", *args)


def test_get_never_saves_under_a_name_that_leads_elsewhere(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil.add_file("/x.bin", b"payload", fid="f1")
    evil.entries[0]["name"] = "../escape.bin"
    saved = tmp_path / "saved"
    saved.mkdir()
    code, said = _get(evil, tmp_path, monkeypatch, "x.bin", "--to", str(saved))
    assert code == 1 and "give --to FILE" in said
    assert _outside_files(tmp_path) == [] and "/v1/download" not in evil.posted


def test_get_of_content_that_does_not_verify_saves_nothing(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil.add_file("/x.bin", b"the file", fid="f1", served=b"something else")
    saved = tmp_path / "saved"
    saved.mkdir()
    code, said = _get(evil, tmp_path, monkeypatch, "x.bin", "--to", str(saved))
    assert code == 1 and "was not saved" in said and "Traceback" not in said
    assert list(saved.iterdir()) == []  # nor a partial download: it holds nothing


def test_get_of_a_cold_file_says_when_to_come_back(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil.add_file("/x.bin", b"the file", fid="f1")
    evil.restoring, evil.restoring_after = 1, 600
    saved = tmp_path / "saved"
    saved.mkdir()
    code, said = _get(evil, tmp_path, monkeypatch, "x.bin", "--to", str(saved))
    assert code == 1 and "cold storage" in said and "about 10 min" in said
    assert list(saved.iterdir()) == []
    code, said = _get(evil, tmp_path, monkeypatch, "x.bin", "--to", str(saved))  # later
    assert code == 0 and (saved / "x.bin").read_bytes() == b"the file"


def test_get_from_a_folder_deleted_under_the_shell_says_so(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Path.cwd()` fails once the current folder is gone: it was a traceback."""
    evil.add_file("/x.bin", b"the file", fid="f1")
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    code, said = _get(evil, tmp_path, monkeypatch, "x.bin")
    assert code == 1 and "was not saved" in said and "Traceback" not in said


def test_get_of_a_folder_never_saves_outside_it(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing below the folder naming `../` paths, or names no disk can hold, saves
    nothing anywhere else: each file is refused, the others come."""
    evil.add_folder("/Docs", fid="d1")
    evil.add_file("/Docs/../../escape.bin", b"payload", fid="f1")
    evil.add_file("/Docs/ok.bin", b"fine", fid="f2")
    evil.add_file("/Docs/deleted since.bin", b"gone", fid="f3")
    evil.gone.add("f3")  # deleted on the server since the listing: the others still come
    saved = tmp_path / "saved"
    saved.mkdir()
    code, said = _get(evil, tmp_path, monkeypatch, "Docs", "--to", str(saved))
    assert code == 1 and "left out ../../escape.bin" in said
    assert "left out deleted since.bin: 404 not_found: no such file" in said
    assert (saved / "Docs" / "ok.bin").read_bytes() == b"fine"
    assert _outside_files(tmp_path) == ["saved/Docs/ok.bin"]


def test_a_failed_step_says_what_it_could_not_do_and_what_to_do(tmp_path: Path, evil: Evil) -> None:
    """A read-only folder said "delete_local sub/b.txt: Read-only file system": the step's
    internal name, and nothing of what to do."""
    from tessera_client.engine import DOING
    from tessera_client.planner import Op, OpKind

    assert set(DOING) == set(OpKind)  # every step says what it does
    engine = _engine(tmp_path, evil)
    result = RoundResult()

    def read_only() -> bool:
        raise OSError(errno.EROFS, "Read-only file system")

    assert engine._guarded(Op(OpKind.DELETE_LOCAL, "sub/b.txt"), result, read_only) is False
    engine.close()
    assert result.problems == [
        "could not delete here sub/b.txt: Read-only file system; make it writable, then sync again"
    ]


def test_invitations_are_told_once_each_and_a_hostile_answer_cannot_break_the_terminal(
    tmp_path: Path, evil: Evil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A share reaches the devices only once accepted, so the sync tells of invitations
    waiting: once each, whatever the server sends besides (entries that are no objects,
    fields missing), and with control characters in its names escaped, not written to the
    terminal (an escape sequence could rewrite what the user reads)."""
    invitation = {"ns_id": 7, "name": "Team\x1b[2J", "owner_email": "a@x", "access": "editor"}
    junk: list[Any] = ["junk", 3, {}, {"ns_id": "7"}]
    answer: dict[str, Any] = {"shares": [], "invitations": [invitation, *junk]}
    evil.answers["/v1/shares/invitations"] = lambda body: answer
    engine = _engine(tmp_path, evil)
    events: list[str] = []
    monkeypatch.setattr(engine.reporter, "event", events.append)
    engine.tell_invitations()
    engine.tell_invitations()  # the same again: said once
    assert len(events) == 1, events
    told = events[0]
    assert "\x1b" not in told and "Team\\x1b[2J" in told
    assert told.startswith("a@x invited you to the shared folder Team\\x1b[2J as editor")
    assert "tessera accept 7" in told  # the escaped name would match nothing
    answer["invitations"] = {"not": "a list"}
    engine.tell_invitations()
    evil.answers["/v1/shares/invitations"] = lambda body: (500, {"error": {"code": "internal"}})
    engine.tell_invitations()  # a notice only: a failing call is no error of the sync
    assert evil.posted.count("/v1/shares/invitations") == 4  # the 500 was not retried
    engine.close()
    assert len(events) == 1
