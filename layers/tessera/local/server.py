"""Serve an ASGI app with uvicorn on a socket bound up front (so port 0 works), in a thread
for tests or in the main thread for `tessera local up` (where uvicorn handles SIGINT/SIGTERM).
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

_BACKLOG = 4096


class Server:
    """uvicorn over a pre-bound socket; `base_url` is known before serving starts."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        # listen now: a client told the URL before uvicorn has started waits in the backlog
        # instead of being refused
        self.sock.listen(_BACKLOG)
        self.host, self.port = host, self.sock.getsockname()[1]
        self._thread: threading.Thread | None = None
        self._uvicorn: uvicorn.Server | None = None

    def _make(self, app: Any) -> uvicorn.Server:
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,  # open long-polls are cut after this
            backlog=_BACKLOG,
        )
        self._uvicorn = uvicorn.Server(config)
        return self._uvicorn

    @property
    def base_url(self) -> str:
        """`http://host:port`, as clients reach it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self, app: Any) -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM, then return.

        The handlers set here ask the server to exit: a signal that arrives before uvicorn
        has installed its own (while it starts) is not lost — uvicorn checks `should_exit`
        after starting up. uvicorn re-raises the signal it caught once it has shut down;
        these handlers receive that too, so the caller's clean-up (stopping PostgreSQL) runs.
        """
        server = self._make(app)

        def exit_requested(signum: int, frame: FrameType | None) -> None:
            server.should_exit = True

        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, exit_requested) for sig in signals}
        try:
            server.run(sockets=[self.sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.sock.close()

    def start(self, app: Any) -> None:
        """Serve in a background thread; returns once the server accepts connections."""
        server = self._make(app)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop serving (background mode) and close the socket."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.sock.close()
