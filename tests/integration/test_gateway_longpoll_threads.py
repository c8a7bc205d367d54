"""Long-polls the API answers on threads (AWS mode's longpoll function) do not starve the rest.

On AWS the longpoll function has a concurrency of its own; the local gateway gives it threads
of its own, so devices idling in long-polls cannot take the threads every API call needs.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.adapters.local import JwtIssuer
from tessera.local.gateway import LONGPOLL_MAX_BODY, Gateway, create_app
from tessera.local.server import Server
from tessera.local.throttle import RequestThrottle
from tessera.ports import Principal

HELD = "/v1/held"  # a call the stand-in API holds as it holds a long-poll
# more long-polls than Starlette's shared pool has threads (40)
IDLE_DEVICES = 48


class BlockingLongpoll:
    """Stand-in for the Lambda functions: a long-poll (or a call of `HELD`) blocks its
    thread until `release`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.waiting = threading.Semaphore(0)
        self.bodies: list[str] = []

    def resolve(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event["path"].rstrip("/") in ("/v1/list_folder/longpoll", HELD):  # as matched
            self.bodies.append(event["body"])
            self.waiting.release()
            self.release.wait(30)
            body = {"changes": False}
        else:
            body = {"path": event["path"]}
        return {"statusCode": 200, "headers": {}, "body": json.dumps(body)}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], BlockingLongpoll]]:
    issuer = JwtIssuer(tmp_path / "jwt.pem")
    token = issuer.issue(Principal(user_id="u1", email="u1@example.com")).access_token
    resolver = BlockingLongpoll()
    server = Server()
    server.start(create_app(Gateway(identity=issuer, resolver=resolver)))
    try:
        yield server.base_url, {"Authorization": f"Bearer {token}"}, resolver
    finally:
        resolver.release.set()
        server.stop()


@pytest.mark.parametrize("slash", ["", "/"], ids=["path", "path with a trailing slash"])
def test_idle_longpolls_leave_threads_for_api_calls(
    gateway: tuple[str, dict[str, str], BlockingLongpoll], slash: str
) -> None:
    url, headers, resolver = gateway
    with ThreadPoolExecutor(IDLE_DEVICES) as devices:
        polls = [
            devices.submit(
                httpx.post,
                url + "/v1/list_folder/longpoll" + slash,
                json={"cursor": "c", "timeout": 30},
                headers=headers,
                timeout=35,
            )
            for _ in range(IDLE_DEVICES)
        ]
        for _ in range(IDLE_DEVICES):
            assert resolver.waiting.acquire(timeout=10), "a long-poll never reached the API"
        # every long-poll holds a thread; an API call still gets one at once
        r = httpx.post(url + "/v1/account", json={}, headers=headers, timeout=5)
        assert r.status_code == 200, r.text
        assert r.json() == {"path": "/v1/account"}
        resolver.release.set()
        assert all(p.result().json() == {"changes": False} for p in polls)


def test_longpoll_body_is_capped(gateway: tuple[str, dict[str, str], BlockingLongpoll]) -> None:
    url, headers, _resolver = gateway
    # a cursor padded to megabytes would be held for the whole wait
    padded = b'{"cursor": "c"' + b" " * LONGPOLL_MAX_BODY + b"}"
    r = httpx.post(url + "/v1/list_folder/longpoll", content=padded, headers=headers)
    assert r.status_code == 413
    assert "request body over" in r.json()["error"]["message"]


def test_a_padded_longpoll_body_is_held_without_its_padding(
    gateway: tuple[str, dict[str, str], BlockingLongpoll],
) -> None:
    """The limit takes the longest cursor (~1 MiB): a short one padded up to it held a
    megabyte for the whole wait, a hundred times per account."""
    url, headers, resolver = gateway
    padded = b'{"cursor": "c",' + b" " * (LONGPOLL_MAX_BODY // 2) + b'"timeout": 30}'
    with ThreadPoolExecutor(1) as device:
        poll = device.submit(
            httpx.post, url + "/v1/list_folder/longpoll", content=padded, headers=headers
        )
        assert resolver.waiting.acquire(timeout=10)
        assert json.loads(resolver.bodies[0]) == {"cursor": "c", "timeout": 30}
        assert len(resolver.bodies[0]) < 100
        resolver.release.set()
        assert poll.result().status_code == 200


def test_a_longpoll_whose_caller_left_keeps_its_place_until_its_thread_returns(
    tmp_path: Path,
) -> None:
    """In AWS mode a wait runs on a thread that outlives a caller who hangs up. Given back
    when the caller left, one account's dropped long-polls took every thread (256) for the
    whole wait, and everyone else's were refused."""
    server, resolver, (mine, theirs) = _two_users_two_places_each(tmp_path)
    try:
        for _ in range(2):
            with pytest.raises(httpx.ReadTimeout):  # hangs up; its thread waits on
                _longpoll(server.base_url, mine, timeout=0.5)
            assert resolver.waiting.acquire(timeout=10)
        refused = _longpoll(server.base_url, mine, timeout=5)
        assert refused.status_code == 429, refused.text
        with ThreadPoolExecutor(1) as device:
            other = device.submit(_longpoll, server.base_url, theirs)
            assert resolver.waiting.acquire(timeout=10), "another user's long-poll was refused"
            resolver.release.set()
            assert other.result().status_code == 200
        deadline = time.monotonic() + 10  # the threads return: their places come back
        while _longpoll(server.base_url, mine).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        resolver.release.set()
        server.stop()


def test_longpolls_whose_callers_left_still_hold_their_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that hangs up frees its slot at once, but its thread runs out the wait
    (up to 480 s): callers that connect and leave grew threads without bound. The slot is
    held until the thread returns; past the cap a long-poll is answered 429."""
    from tessera.local import gateway as gateway_module

    monkeypatch.setattr(gateway_module, "LONGPOLL_THREADS", 4)
    issuer = JwtIssuer(tmp_path / "jwt.pem")
    token = issuer.issue(Principal(user_id="u1", email="u1@example.com")).access_token
    resolver = BlockingLongpoll()
    server = Server()
    server.start(create_app(Gateway(identity=issuer, resolver=resolver)))
    statuses: list[int] = []
    try:
        for _ in range(8):  # each hangs up before its answer
            try:
                r = httpx.post(
                    server.base_url + "/v1/list_folder/longpoll",
                    json={"cursor": "c", "timeout": 30},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=0.5,
                )
                statuses.append(r.status_code)
            except httpx.ReadTimeout:
                statuses.append(0)
        running = 0
        while resolver.waiting.acquire(timeout=0.5):
            running += 1
        assert running == 4
        assert statuses.count(429) == 4
    finally:
        resolver.release.set()
        server.stop()


def test_longpolls_whose_callers_left_before_their_thread_started_give_their_place_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that hangs up at once is gone before its thread starts, and anyio then
    never runs it: the thread's place, given back only by the thread, was lost, and after
    `LONGPOLL_THREADS` such callers every long-poll was refused 429 until a restart."""
    from tessera.local import gateway as gateway_module

    monkeypatch.setattr(gateway_module, "LONGPOLL_THREADS", 2)
    issuer = JwtIssuer(tmp_path / "jwt.pem")
    token = issuer.issue(Principal(user_id="u1", email="u1@example.com")).access_token
    resolver = BlockingLongpoll()
    resolver.release.set()  # a thread that starts answers at once
    server = Server()
    server.start(create_app(Gateway(identity=issuer, resolver=resolver)))
    host, port = server.base_url.removeprefix("http://").split(":")
    body = json.dumps({"cursor": "c", "timeout": 30}).encode()
    request = (
        f"POST /v1/list_folder/longpoll HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:

        def ask_and_hang_up() -> None:
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(request)

        with ThreadPoolExecutor(16) as callers:  # at once: a few lost their place
            list(callers.map(lambda _: ask_and_hang_up(), range(400)))
        deadline = time.monotonic() + 10  # the threads that did start return at once
        while (r := _longpoll(server.base_url, token, timeout=10)).status_code == 429:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
        assert r.status_code == 200, r.text
    finally:
        server.stop()


def _longpoll(url: str, token: str, timeout: float = 35) -> httpx.Response:
    return httpx.post(
        url + "/v1/list_folder/longpoll",
        json={"cursor": "c", "timeout": 30},
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


def _two_users_two_places_each(tmp_path: Path) -> tuple[Server, BlockingLongpoll, list[str]]:
    """A started gateway whose users may hold two long-polls and two other calls each, its
    blocking resolver, and two users' access tokens."""
    issuer = JwtIssuer(tmp_path / "jwt.pem")
    tokens = [
        issuer.issue(Principal(user_id=u, email=f"{u}@example.com")).access_token
        for u in ("u1", "u2")
    ]
    resolver = BlockingLongpoll()
    server = Server()
    gateway = Gateway(identity=issuer, resolver=resolver, longpolls_per_user=2, calls_per_user=2)
    server.start(create_app(gateway))
    return server, resolver, tokens


def test_a_users_calls_in_progress_are_capped(tmp_path: Path) -> None:
    """Calls waiting for a thread hold their bodies: one account's 300 calls of 5 MiB at
    once took the gateway to 2.3 GB. Past the cap its next one is 429, before its body is
    read; others' still run, and the places come back as calls end."""
    server, resolver, (mine, theirs) = _two_users_two_places_each(tmp_path)

    def call(token: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {token}"}
        return httpx.post(server.base_url + HELD, json={"pad": "x" * 1000}, headers=auth)

    try:
        with ThreadPoolExecutor(3) as devices:
            held = [devices.submit(call, mine) for _ in range(2)]
            for _ in held:
                assert resolver.waiting.acquire(timeout=10), "a call never reached the API"
            refused = call(mine)
            assert refused.status_code == 429, refused.text
            assert "in progress already" in refused.json()["error"]["message"]
            assert refused.headers["Retry-After"] == "1"
            other = devices.submit(call, theirs)
            assert resolver.waiting.acquire(timeout=10), "another user's call was refused"
            assert len(resolver.bodies) == 3  # (the refused one never reached it)
            resolver.release.set()
            assert [c.result().status_code for c in [*held, other]] == [200, 200, 200]
        assert call(mine).status_code == 200  # the places came back
    finally:
        resolver.release.set()
        server.stop()


def test_a_users_waiting_longpolls_are_capped(tmp_path: Path) -> None:
    """Each waiting long-poll holds a socket for minutes: one account's thousand used up the
    gateway's file descriptors. Past the cap its next one is 429; others' still wait."""
    server, resolver, (mine, theirs) = _two_users_two_places_each(tmp_path)
    try:
        with ThreadPoolExecutor(3) as devices:
            held = [devices.submit(_longpoll, server.base_url, mine) for _ in range(2)]
            for _ in held:
                assert resolver.waiting.acquire(timeout=10), "a long-poll never reached the API"
            refused = _longpoll(server.base_url, mine)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "rate_limited"
            assert int(refused.headers["Retry-After"]) > 0
            other = devices.submit(_longpoll, server.base_url, theirs)
            assert resolver.waiting.acquire(timeout=10), "another user's long-poll was refused"
            resolver.release.set()
            assert [p.result().status_code for p in [*held, other]] == [200, 200, 200]
        assert _longpoll(server.base_url, mine).status_code == 200  # the places came back
    finally:
        resolver.release.set()
        server.stop()


def test_longpolls_are_throttled_like_every_route(tmp_path: Path) -> None:
    """A stale cursor's long-poll is answered at once: sent in a loop, unthrottled, it was a
    database query each, past the limit every other route keeps."""
    issuer = JwtIssuer(tmp_path / "jwt.pem")
    token = issuer.issue(Principal(user_id="u1", email="u1@example.com")).access_token
    resolver = BlockingLongpoll()
    resolver.release.set()  # answered at once
    server = Server()
    throttle = RequestThrottle(rate=0.01, burst=3)
    server.start(create_app(Gateway(identity=issuer, resolver=resolver, throttle=throttle)))
    try:
        statuses = [_longpoll(server.base_url, token).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
    finally:
        server.stop()
