"""Retries, backoff and Retry-After, and transparent token refresh — against a real HTTP server."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from time import time
from typing import Any

import httpx
import pytest

from tessera.api.models import FileEntry, ListFolderResponse
from tessera_client import api as api_module
from tessera_client.api import (
    MALFORMED_RESPONSE,
    REFUSED_FIELD_RECHECK_S,
    Api,
    ApiError,
    NotLoggedIn,
    RetriesStopped,
    RetryPolicy,
    ServerUnreachable,
    parse,
    parse_retry_after,
    send_with_retry,
)
from tessera_client.config import Home, Tokens

Answer = tuple[int, dict[str, str], object]
"""(status, headers, JSON body) of one scripted answer."""


class Script:
    """What the test server answers, in order, per path."""

    def __init__(self) -> None:
        self.answers: dict[str, list[Answer]] = {}
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            script.seen.append((self.command, self.path, dict(self.headers), body))
            queue = script.answers.get(self.path, [])
            status, headers, payload = queue.pop(0) if queue else (404, {}, {"error": {}})
            data = json.dumps(payload).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", script
    httpd.shutdown()
    httpd.server_close()


CONFLICT = {"error": {"code": "conflict", "message": "stale", "rev": 4}}
UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "expired"}}
Server = tuple[str, Script]


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def policy(sleeps: Sleeps, attempts: int = 5) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, base=0.5, cap=4.0, sleep=sleeps, rng=random.Random(7))


def test_retry_after_is_honoured_on_503_and_429(server: tuple[str, Script]) -> None:
    url, script = server
    when = formatdate(time() + 30, usegmt=True)
    script.answers["/x"] = [
        (503, {"Retry-After": "2"}, {}),
        (429, {"Retry-After": when}, {}),
        (200, {}, {"ok": True}),
    ]
    sleeps = Sleeps()
    with httpx.Client() as client:
        r = send_with_retry(client, policy(sleeps), "POST", url + "/x", json={})
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert sleeps[0] == 2.0
    assert 25 < sleeps[1] <= 30
    assert len(script.seen) == 3


def test_a_retry_after_longer_than_the_policy_waits_is_answered_at_once(server: Server) -> None:
    """A server that asks for a longer wait than `max_wait` (a user's hourly budget spent)
    is not asked again `attempts` times, `max_wait` apart: its answer is the caller's."""
    url, script = server
    script.answers["/x"] = [(429, {"Retry-After": "3600"}, {}), (200, {}, {})]
    sleeps = Sleeps()
    with httpx.Client() as client:
        r = send_with_retry(client, policy(sleeps), "POST", url + "/x", json={})
    assert r.status_code == 429 and r.headers["Retry-After"] == "3600"
    assert sleeps == [] and len(script.seen) == 1
    # an outage's long wait (a proxy's maintenance page) is waited out, capped, as before
    script.answers["/y"] = [(503, {"Retry-After": "3600"}, {}), (200, {}, {})]
    with httpx.Client() as client:
        r = send_with_retry(client, policy(sleeps), "POST", url + "/y", json={})
    assert r.status_code == 200 and sleeps == [RetryPolicy().max_wait]


def test_a_stop_ends_the_wait_for_a_retry_at_once(server: Server) -> None:
    """The process stopping (`RetryPolicy.stop`) ends an outage's wait: no retry is sent."""
    url, script = server
    script.answers["/x"] = [(503, {"Retry-After": "30"}, {}), (200, {}, {})]
    stopping = RetryPolicy(attempts=2)
    threading.Timer(0.2, stopping.stop.set).start()
    with httpx.Client() as client, pytest.raises(RetriesStopped, match="stopping"):
        send_with_retry(client, stopping, "POST", url + "/x", json={})
    assert len(script.seen) == 1


def test_5xx_backs_off_exponentially_with_jitter(server: tuple[str, Script]) -> None:
    url, script = server
    server_error: Answer = (500, {}, {})
    script.answers["/x"] = [server_error] * 4 + [(200, {}, {})]
    sleeps = Sleeps()
    with httpx.Client() as client:
        r = send_with_retry(client, policy(sleeps), "GET", url + "/x")
    assert r.status_code == 200
    assert len(sleeps) == 4
    for attempt, s in enumerate(sleeps):
        assert 0 <= s <= min(4.0, 0.5 * 2**attempt)


def test_gives_up_with_the_last_answer(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers["/x"] = [(502, {}, {})] * 3
    sleeps = Sleeps()
    with httpx.Client() as client:
        r = send_with_retry(client, policy(sleeps, attempts=3), "GET", url + "/x")
    assert r.status_code == 502 and len(sleeps) == 2


def test_4xx_is_not_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers["/x"] = [
        (409, {}, {"error": {"code": "conflict", "message": "stale", "rev": 4}})
    ]
    sleeps = Sleeps()
    with httpx.Client() as client:
        r = send_with_retry(client, policy(sleeps), "POST", url + "/x")
    assert r.status_code == 409 and sleeps == []


def test_unreachable_server_raises_after_retries() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    sleeps = Sleeps()
    with httpx.Client() as client, pytest.raises(ServerUnreachable):
        send_with_retry(client, policy(sleeps, attempts=3), "GET", f"http://127.0.0.1:{port}/")
    assert len(sleeps) == 2


def test_parse_retry_after() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_a_retry_after_that_is_not_a_number_backs_off_as_usual() -> None:
    """`Retry-After: nan` parses as a float; slept as one, it raised ValueError."""
    delay = RetryPolicy(rng=random.Random(1)).delay(0, parse_retry_after("nan"))
    assert 0 <= delay <= 0.2


@pytest.mark.parametrize(
    ("status", "code", "refused"),
    [
        (422, "invalid", True),
        (409, "conflict", True),
        (503, "unavailable", False),
        (429, "rate_limited", False),
        (408, "timeout", False),
        (403, "http_error", False),  # a proxy's page, not the server's word
    ],
)
def test_only_the_servers_own_judgement_is_a_refusal(status: int, code: str, refused: bool) -> None:
    assert ApiError(status, code, "m", {}).refused is refused


def test_a_write_is_retried_with_the_key_it_was_first_sent_with(
    server: Server, tmp_path: Path
) -> None:
    """The answer to the first attempt was lost (a 502 here): the server must see the same
    key again, so that it answers as it did instead of moving twice or saying 404."""
    url, script = server
    moved = {"from_path": "/a", "to_path": "/b"}
    script.answers["/v1/move"] = [(502, {}, {}), (200, {}, {"ok": 1}), (200, {}, {"ok": 2})]
    script.answers["/v1/list_folder"] = [(200, {}, {"entries": []})]
    home = Home(tmp_path / "home")
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=time() + 3600))
    api = Api(url, home, policy=policy(Sleeps()))
    assert api.call("/v1/move", moved) == {"ok": 1}
    assert api.call("/v1/move", moved) == {"ok": 2}
    api.call("/v1/list_folder", {"path": ""})
    bodies = [json.loads(b) for _m, p, _h, b in script.seen if p == "/v1/move"]
    keys = [b.pop("idempotency_key") for b in bodies]
    assert bodies == [moved] * 3
    assert keys[0] == keys[1] != keys[2]  # a retry keeps its key; a new call has its own
    listed = next(b for _m, p, _h, b in script.seen if p == "/v1/list_folder")
    assert json.loads(listed) == {"path": ""}  # reads carry no key
    api.close()


# What a server from before keys on a route answers the field (as the server does for any
# field it does not know: tests/integration/test_api.py::test_malformed_bodies_are_422).
UNKNOWN_KEY = {
    "error": {
        "code": "invalid",
        "message": "idempotency_key: Extra inputs are not permitted",
        "fields": [{"field": "idempotency_key", "message": "Extra inputs are not permitted"}],
    }
}


def test_a_server_that_takes_no_key_on_a_route_gets_the_call_without_one(
    server: Server, tmp_path: Path
) -> None:
    """Version skew: a new client against a server not yet upgraded. The refusal did
    nothing, so the call goes again without the key, and later calls to that route go
    without one; other routes keep theirs. Any other 422 is the caller's to see."""
    url, script = server
    script.answers["/v1/delete"] = [
        (422, {}, UNKNOWN_KEY),
        (200, {}, {"ok": 1}),
        (200, {}, {"ok": 2}),
    ]
    script.answers["/v1/move"] = [
        (422, {}, {"error": {"code": "invalid", "fields": [{"field": "to_path"}]}})
    ]
    home = Home(tmp_path / "home")
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=time() + 3600))
    api = Api(url, home, policy=policy(Sleeps()))
    assert api.call("/v1/delete", {"path": "/a"}) == {"ok": 1}
    assert api.call("/v1/delete", {"path": "/b"}) == {"ok": 2}
    with pytest.raises(ApiError) as refused:
        api.call("/v1/move", {"from_path": "/a", "to_path": ""})
    assert refused.value.status == 422
    sent = [(p, json.loads(b)) for _m, p, _h, b in script.seen]
    assert [(p, "idempotency_key" in b) for p, b in sent] == [
        ("/v1/delete", True),
        ("/v1/delete", False),
        ("/v1/delete", False),
        ("/v1/move", True),
    ]
    assert [b["path"] for p, b in sent if p == "/v1/delete"] == ["/a", "/a", "/b"]
    api.close()


def test_a_route_that_went_without_keys_tries_one_again_an_hour_later(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon outlives the server's upgrade: it sends keys again, and keeps them."""
    url, script = server
    script.answers["/v1/delete"] = [(422, {}, UNKNOWN_KEY)] + [(200, {}, {"ok": 1})] * 4
    home = Home(tmp_path / "home")
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=time() + 3600))
    api = Api(url, home, policy=policy(Sleeps()))
    clock = [1000.0]
    monkeypatch.setattr("tessera_client.api._now", lambda: clock[0])
    for advance in (0, REFUSED_FIELD_RECHECK_S - 1, 2, REFUSED_FIELD_RECHECK_S * 2):
        clock[0] += advance
        api.call("/v1/delete", {"path": "/a"})
    keyed = [
        "idempotency_key" in json.loads(b) for _m, p, _h, b in script.seen if p == "/v1/delete"
    ]
    assert keyed == [True, False, False, True, True]  # refused, resent; an hour on: upgraded
    api.close()


def test_access_token_is_refreshed_on_401(server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    home = Home(tmp_path / "home")
    home.save_tokens(Tokens(refresh_token="r1", access_token="old", expires_at=time() + 3600))
    assert oct((tmp_path / "home" / "tokens.json").stat().st_mode & 0o777) == "0o600"
    fresh = {
        "access_token": "new",
        "refresh_token": "r2",
        "token_type": "Bearer",
        "expires_in": 900,
    }
    script.answers["/v1/account"] = [
        (401, {}, {"error": {"code": "unauthorized"}}),
        (200, {}, {"a": 1}),
    ]
    script.answers["/v1/auth/token"] = [(200, {}, fresh)]
    api = Api(url, home, policy=policy(Sleeps()))
    assert api.call("/v1/account", method="GET") == {"a": 1}
    auths = [h.get("Authorization") for m, p, h, _ in script.seen if p == "/v1/account"]
    assert auths == ["Bearer old", "Bearer new"]
    token_body = json.loads(next(b for m, p, h, b in script.seen if p == "/v1/auth/token"))
    assert token_body == {"refresh_token": "r1"}
    stored = home.load_tokens()
    assert stored is not None and stored.refresh_token == "r2"
    api.close()


def test_expired_refresh_token_asks_to_log_in_again(
    server: tuple[str, Script], tmp_path: Path
) -> None:
    url, script = server
    home = Home(tmp_path / "home")
    home.save_tokens(Tokens(refresh_token="r1"))
    script.answers["/v1/auth/token"] = [
        (401, {}, {"error": {"code": "unauthorized", "message": "x"}})
    ]
    api = Api(url, home, policy=policy(Sleeps()))
    with pytest.raises(NotLoggedIn):
        api.call("/v1/account", method="GET")
    api.close()


def test_a_firewalls_403_on_refresh_is_not_a_lost_session(
    server: tuple[str, Script], tmp_path: Path
) -> None:
    """A WAF rate rule's 403 page while the token is refreshed passes: it had ended the
    daemon with "your session has expired" though the refresh token was still good."""
    url, script = server
    home = Home(tmp_path / "home")
    home.save_tokens(Tokens(refresh_token="r1"))
    script.answers["/v1/auth/token"] = [(403, {}, {"message": "Forbidden"})]
    api = Api(url, home, policy=policy(Sleeps()))
    with pytest.raises(ApiError) as info:
        api.call("/v1/account", method="GET")
    api.close()
    assert info.value.status == 403 and not info.value.refused
    stored = home.load_tokens()
    assert stored is not None and stored.refresh_token == "r1"


@pytest.mark.parametrize(
    "answer",
    [
        {"access_token": "a"},  # no refresh token
        {"access_token": "a", "refresh_token": "r", "expires_in": "NaN"},
        ["not", "an", "object"],
    ],
)
def test_a_malformed_token_answer_is_an_api_error_and_keeps_the_old_tokens(
    server: tuple[str, Script], tmp_path: Path, answer: object
) -> None:
    """It raised KeyError or TypeError out of the sign-in (a traceback, not a message)."""
    url, script = server
    home = Home(tmp_path / "home")
    home.save_tokens(Tokens(refresh_token="r1"))
    script.answers["/v1/auth/token"] = [(200, {}, answer)]
    api = Api(url, home, policy=policy(Sleeps()))
    with pytest.raises(ApiError) as info:
        api.call("/v1/account", method="GET")
    api.close()
    assert (info.value.status, info.value.code) == (502, "malformed_response")
    stored = home.load_tokens()
    assert stored is not None and stored.refresh_token == "r1"


def test_error_bodies_become_api_errors(server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    home = Home(tmp_path / "home")
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=time() + 3600))
    script.answers["/v1/commit"] = [
        (409, {}, {"error": {"code": "conflict", "message": "stale", "rev": 4}})
    ]
    api = Api(url, home, policy=policy(Sleeps()))
    with pytest.raises(ApiError) as info:
        api.call("/v1/commit", {})
    assert (info.value.status, info.value.code, info.value.details) == (409, "conflict", {"rev": 4})
    script.answers["/v1/commit"] = [(400, {}, ["not", "an", "object"])]
    with pytest.raises(ApiError) as info:  # not AttributeError
        api.call("/v1/commit", {})
    assert (info.value.status, info.value.code) == (400, "http_error")
    api.close()


@pytest.mark.parametrize(
    ("base", "proxy", "loads_trust"),
    [
        ("http://127.0.0.1:8790", None, False),
        ("https://sync.example.com", None, True),
        ("http://127.0.0.1:8790", "http://proxy.example.com:3128", True),
    ],
)
def test_the_trust_store_is_loaded_only_where_tls_can_happen(
    monkeypatch: pytest.MonkeyPatch, base: str, proxy: str | None, loads_trust: bool
) -> None:
    """A plain-http server reached directly never does TLS: loading the trust store was
    50-60 ms of every start. What stands in verifies and trusts nothing (fails closed)."""
    from tessera_client.api import _server_trust

    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    if proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
    trust = _server_trust(base, urllib.request.getproxies_environment())
    if loads_trust:
        assert trust is True
    else:
        assert isinstance(trust, ssl.SSLContext)
        assert trust.verify_mode == ssl.CERT_REQUIRED and trust.check_hostname
        assert trust.cert_store_stats()["x509_ca"] == 0


def _listing(**extra_entry_fields: object) -> dict[str, object]:
    entry = {
        ".tag": "file",
        "name": "a.txt",
        "path_display": "/a.txt",
        "path_lower": "/a.txt",
        "file_id": "f1",
        "rev": 3,
        "size": 5,
        "content_hash": "b3:" + "ab" * 32,
        "server_modified": "2026-11-27T01:00:00Z",
        "ns_id": 1,
        **extra_entry_fields,
    }
    return {"entries": [entry, {".tag": "folder", "name": "d", "path_display": "/d",
                                "path_lower": "/d", "file_id": "d1", "ns_id": 1, "since": "v9"}],
            "cursor": "c1", "has_more": False, "server_region": "eu"}  # fmt: skip


def test_a_newer_servers_extra_fields_are_ignored() -> None:
    # A newer server adds fields, at the top and inside tagged entries; an older client
    # reads what it knows instead of failing every listing (a 502 before).
    answer = _listing(thumbnail="t.png", labels={"color": "red"})
    listing = parse(ListFolderResponse, answer)
    assert [e.path_display for e in listing.entries] == ["/a.txt", "/d"]
    first = listing.entries[0]
    assert isinstance(first, FileEntry) and first.rev == 3 and listing.cursor == "c1"
    assert answer["server_region"] == "eu"  # the caller's answer is left as it was


def test_an_answer_that_does_not_fit_is_still_refused_beside_extra_fields() -> None:
    with pytest.raises(ApiError) as info:
        parse(ListFolderResponse, _listing(rev="three", thumbnail="t.png"))
    assert info.value.status == 502 and info.value.code == "malformed_response"
    assert "entries.0" in info.value.message


RawAnswer = Callable[[socket.socket, threading.Event], None]


@pytest.fixture
def raw_server() -> Iterator[Callable[[RawAnswer], str]]:
    """A server that answers every connection with what the test's function writes on the
    socket (until told to stop): answers no well-behaved server sends."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve(answer: RawAnswer) -> str:
        def loop() -> None:
            while not done.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn, contextlib.suppress(OSError):
                    conn.recv(65536)
                    answer(conn, done)
                    # closed with the request's rest unread, the socket would be reset
                    # under an answer the client is still reading
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(5)
                    while conn.recv(65536):
                        pass

        threading.Thread(target=loop, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield serve
    done.set()
    listener.close()


def _head(conn: socket.socket, *headers: str) -> None:
    conn.sendall("\r\n".join(["HTTP/1.1 200 OK", "Content-Type: application/json", *headers,
                              "", ""]).encode())  # fmt: skip


def _trickle(conn: socket.socket, done: threading.Event) -> None:
    """A byte of whitespace every 0.1 s, within any read timeout, without end."""
    _head(conn, "Transfer-Encoding: chunked")
    while not done.wait(0.1):
        conn.sendall(b"1\r\n \r\n")


def _signed_in(tmp_path: Path, url: str, **options: Any) -> Api:
    home = Home(tmp_path / "home")
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=time() + 3600))
    return Api(url, home, **options)


def test_an_answer_trickled_in_ends_at_the_calls_timeout_or_a_stop(
    raw_server: Callable[[RawAnswer], str], tmp_path: Path
) -> None:
    """httpx's timeout bounds each read: a server sending a byte a minute held a round, and
    the daemon's stop, for ever. The whole answer must come within the call's timeout."""
    url = raw_server(_trickle)
    api = _signed_in(tmp_path, url, policy=RetryPolicy(attempts=1), timeout=0.5)
    with pytest.raises(ServerUnreachable, match=r"took over 0\.5 s"):
        api.call("/v1/list_folder/continue", {"cursor": "c"})
    api.close()
    api = _signed_in(tmp_path, url, policy=RetryPolicy(attempts=1), timeout=60)
    threading.Timer(0.5, api.policy.stop.set).start()  # what the daemon's stop does
    with pytest.raises(RetriesStopped):
        api.call("/v1/list_folder/continue", {"cursor": "c"})
    api.close()


def _after_the_servers_work(conn: socket.socket, done: threading.Event) -> None:
    """A whole answer, after 1.5 s of the server's work (a large commit)."""
    done.wait(1.5)
    _head(conn, "Content-Length: 2")
    conn.sendall(b"{}")


def test_an_answer_the_server_worked_on_is_read_whole_after_a_stop(
    raw_server: Callable[[RawAnswer], str], tmp_path: Path
) -> None:
    """The stop's grace ran from the request's start: a commit the server took 1.5 s over,
    answered whole after a stop, was thrown away (recorded only at the next start)."""
    api = _signed_in(tmp_path, raw_server(_after_the_servers_work), policy=RetryPolicy(attempts=1))
    threading.Timer(0.5, api.policy.stop.set).start()
    assert api.call("/v1/commit", {}) == {}
    api.close()


def _endless(conn: socket.socket, done: threading.Event) -> None:
    _head(conn, "Transfer-Encoding: chunked")
    while not done.is_set():
        conn.sendall(b"10000\r\n" + b" " * 0x10000 + b"\r\n")


def _false_gzip(conn: socket.socket, done: threading.Event) -> None:
    _head(conn, "Content-Encoding: gzip", "Content-Length: 2")
    conn.sendall(b"{}")


def _nested(conn: socket.socket, done: threading.Event) -> None:
    body = b"[" * 100_000
    _head(conn, f"Content-Length: {len(body)}")
    conn.sendall(body)


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (_endless, "is over 1 MiB"),
        (_false_gzip, "cannot be read"),
        (_nested, "is not JSON"),
    ],
)
def test_an_answer_no_server_of_ours_sends_is_a_malformed_one(
    raw_server: Callable[[RawAnswer], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    answer: RawAnswer,
    says: str,
) -> None:
    """A body without end (or a gzip bomb) was read whole into memory; a false
    Content-Encoding raised httpx's DecodingError and JSON nested past the parser's limit a
    RecursionError: neither was an ApiError, and each ended the daemon."""
    monkeypatch.setattr(api_module, "MAX_ANSWER_BYTES", 2**20)
    api = _signed_in(tmp_path, raw_server(answer), policy=RetryPolicy(attempts=1))
    with pytest.raises(ApiError, match=says) as info:
        api.call("/v1/list_folder", {"path": ""})
    assert (info.value.status, info.value.code) == (502, MALFORMED_RESPONSE)
    api.close()
