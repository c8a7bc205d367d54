"""The uvicorn wrapper of the local gateway: no window where the printed URL refuses
connections, and no window where SIGTERM is swallowed while the server starts."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tessera.local.server import Server


def test_the_url_accepts_connections_before_serving_starts() -> None:
    server = Server()
    try:
        # `local up` prints the URL before uvicorn runs: a client may connect at once
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):
            pass
    finally:
        server.sock.close()


def test_a_request_queued_before_serving_starts_is_answered() -> None:
    async def hello(
        scope: dict[str, Any],
        receive: object,
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

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
