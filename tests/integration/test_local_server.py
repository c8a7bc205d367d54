"""The uvicorn wrapper of the local gateway: no window where the printed URL refuses
connections, and no window where SIGTERM is swallowed while the server starts."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tessera.local.server import Server, _DeadlineH11, raise_open_files_limit


async def hello(
    scope: dict[str, Any],
    receive: object,
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """An ASGI app answering every request "hi"."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


def test_the_url_accepts_connections_before_serving_starts() -> None:
    server = Server()
    try:
        # `local up` prints the URL before uvicorn runs: a client may connect at once
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):
            pass
    finally:
        server.sock.close()


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE")
def test_the_server_raises_its_open_files_limit() -> None:
    """At Linux's usual soft limit of 1,024, 1,100 idle connections from anyone who could
    reach the port refused every other client (`EMFILE` in accept) until they closed."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    server = Server()
    try:
        server.start(hello)
        raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raised >= min(hard, 10_240), raised  # (macOS: OPEN_MAX at most)
        assert raise_open_files_limit(1024) == raised  # never lowered
    finally:
        server.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1024), hard))


def test_a_request_queued_before_serving_starts_is_answered() -> None:
    server = Server()
    try:
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        server.start(hello)
        reply = conn.recv(4096)
        conn.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply
        assert httpx.get(server.base_url + "/").text == "hi"
    finally:
        server.stop()


def test_connections_send_without_waiting_for_acks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nagle's algorithm held each response's body until the client acknowledged its head,
    and a client delays that acknowledgement 40 ms: every request on a kept-alive
    connection but its first took 44 ms (asyncio turns Nagle off only on a socket whose
    `proto` says TCP, and the listener was made without it)."""
    nodelay: list[int] = []
    made = _DeadlineH11.connection_made

    def recording(self: _DeadlineH11, transport: asyncio.Transport) -> None:
        made(self, transport)
        sock = transport.get_extra_info("socket")
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(_DeadlineH11, "connection_made", recording)

    server = Server()
    server.start(hello)
    try:
        with httpx.Client() as client:
            assert [client.get(server.base_url).text for _ in range(3)] == ["hi"] * 3
    finally:
        server.stop()
    assert nodelay == [1]  # one connection, kept alive, without Nagle's algorithm


def test_sigterm_while_the_server_starts_stops_it() -> None:
    """A SIGTERM that lands after `run` took over the signals but before uvicorn installed
    its own handlers must still stop the server (it used to be ignored: a hang)."""
    script = textwrap.dedent(
        """
        import os, signal, uvicorn
        from tessera.local.server import Server

        original = uvicorn.Server.serve

        async def serve(self, sockets=None):
            os.kill(os.getpid(), signal.SIGTERM)  # before uvicorn captures signals
            await original(self, sockets)

        uvicorn.Server.serve = serve

        async def app(scope, receive, send):
            pass

        Server().run(app)
        print("returned")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "returned" in done.stdout


async def _echo_body(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Answer with the request's body, or record that the client went away."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    length = str(len(body)).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
    )
    await send({"type": "http.response.body", "body": body})


def _reply(conn: socket.socket, ending: bytes) -> bytes:
    """What the server sends until it ends with `ending` or closes the connection."""
    reply = b""
    while not reply.endswith(ending) and (more := conn.recv(4096)):
        reply += more
    return reply


def _closed_by_server(conn: socket.socket) -> bool:
    """Whether the server closes `conn` (within the socket's timeout) without answering."""
    try:
        return conn.recv(4096) == b""
    except TimeoutError:
        return False


@contextmanager
def _slow_server(app: Any = _echo_body) -> Iterator[Server]:
    """A server whose deadlines are half a second, serving `app`."""
    server = Server(
        head_timeout_s=0.5, body_idle_timeout_s=0.5, body_min_bytes=4, send_idle_timeout_s=0.5
    )
    server.start(app)
    try:
        yield server
    finally:
        server.stop()


def test_a_silent_connection_is_closed() -> None:
    with (
        _slow_server() as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn,
    ):
        assert _closed_by_server(conn)


def test_a_head_sent_a_byte_at_a_time_is_cut_off() -> None:
    """Slowloris: each byte comes well within the deadline, the head as a whole does not."""
    with (
        _slow_server() as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn,
    ):
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
            try:
                conn.sendall(bytes([byte]))
            except OSError:  # closed already
                break
            time.sleep(0.05)
        assert _closed_by_server(conn)


def test_a_stalled_body_is_cut_off_and_a_steady_one_is_not() -> None:
    with (
        _slow_server() as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn,
    ):
        conn.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nfive.")
        assert _closed_by_server(conn)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            conn.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            for part in (b"one..", b"two.."):  # 0.6 s in all, each part within 0.5 s
                time.sleep(0.3)
                conn.sendall(part)
            reply = _reply(conn, b"two..")
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"one..two.."), reply


def test_a_body_sent_a_byte_at_a_time_is_cut_off() -> None:
    """Each byte well within the idle window kept the body going: a byte a minute held a
    connection for days. A window must bring `body_min_bytes` (here 4)."""
    with (
        _slow_server() as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn,
    ):
        conn.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        cut = False
        for _ in range(30):  # a byte every 0.2 s: at most 3 a 0.5 s window
            try:
                conn.sendall(b"x")
            except OSError:  # closed already
                cut = True
                break
            time.sleep(0.2)
        assert cut, "the trickle was never cut off"
        assert _closed_by_server(conn)


def test_a_kept_alive_connection_gets_a_new_head_deadline_per_request() -> None:
    with (
        _slow_server() as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn,
    ):
        for body in (b"one", b"two", b"three", b"four"):  # 0.9 s on one connection
            conn.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            conn.sendall(body)
            reply = _reply(conn, body)
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(body), reply
            time.sleep(0.3)


async def _answers_at_once(
    scope: dict[str, Any],
    receive: object,
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Answer before reading the body, as a 413 does."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def test_the_next_head_after_an_early_answer_gets_its_whole_deadline() -> None:
    """The body's last bytes, sent after the answer, end the request and start waiting
    for the next head within one read: the body's deadline, armed at its first bytes, was
    kept as the head's, and cut the next request short."""
    with (
        _slow_server(_answers_at_once) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn,
    ):
        conn.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nfive.")
        assert _reply(conn, b"ok").endswith(b"ok")
        time.sleep(0.35)
        conn.sendall(b"five.")  # the body's end: the next head is due from now
        time.sleep(0.25)  # past the body's deadline, well within the head's
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _reply(conn, b"ok").endswith(b"ok")


async def _echo_body_later(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """`_echo_body`, after a second of other work (past the body's half-second deadline)."""
    await asyncio.sleep(1.0)
    await _echo_body(scope, receive, send)


def test_a_body_held_back_for_100_continue_waits_for_the_app() -> None:
    """With `Expect: 100-continue` the client sends the body only once told to go on, which
    uvicorn does when the app first asks for it: until then the silence is the server's,
    and the body's deadline cut the request off before the client could send a byte."""
    with (
        _slow_server(_echo_body_later) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn,
    ):
        conn.sendall(
            b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        assert _reply(conn, b"\r\n\r\n").startswith(b"HTTP/1.1 100"), "no 100 Continue"
        conn.sendall(b"body")
        reply = _reply(conn, b"body")
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"body"), reply


def _answer_of(size: int) -> Callable[..., Awaitable[None]]:
    """An app answering `size` bytes, written a MiB at a time (as block downloads are)."""

    async def answer(
        scope: dict[str, Any],
        receive: object,
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        length = str(size).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
        )
        chunk = b"x" * (1024 * 1024)
        for _ in range(size // len(chunk)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return answer


def _receive(conn: socket.socket, wanted: int, *, pace_s: float = 0.0) -> int:
    """Bytes received (32 KiB a read, `pace_s` apart) until `wanted` came, or the server
    ended the connection (EOF or reset)."""
    received = 0
    try:
        while received < wanted and (more := conn.recv(32 * 1024)):
            received += len(more)
            time.sleep(pace_s)
    except ConnectionResetError:
        pass
    return received


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_a_response_nobody_reads_is_cut_off() -> None:
    """A client that never reads its answer held the socket, and the answer's unsent
    bytes, for as long as it liked: the send waited for buffer room for ever."""
    size = 64 * 1024 * 1024  # well past what the socket buffers of both ends hold
    with (
        _slow_server(_answer_of(size)) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn,
    ):
        conn.sendall(REQUEST)
        time.sleep(1.5)  # reads nothing, well past the half second
        assert _receive(conn, size) < size, "the whole answer came: the stall was never cut"


def test_a_response_read_slowly_but_steadily_is_not_cut_off() -> None:
    """At 32 KiB every 50 ms, draining one MiB the app wrote takes longer than the half
    second: a deadline reset only when the buffer drained to its low-water mark cut this
    reader off, though it took bytes all along. (Small socket buffers, so the server sees
    each read's progress: with the kernel's autotuned ones it sees a third of a few MiB.)"""
    size = 2 * 1024 * 1024
    with _slow_server(_answer_of(size)) as server:
        server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # inherited
        with socket.socket() as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            conn.settimeout(5)
            conn.connect(("127.0.0.1", server.port))
            conn.sendall(REQUEST)
            assert _receive(conn, size, pace_s=0.05) >= size  # head and body
