"""Serve an ASGI app with uvicorn on a socket bound up front (so port 0 works), in a thread
for tests or in the main thread for `tessera local up` (where uvicorn handles SIGINT/SIGTERM).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import signal
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

if sys.platform != "win32":
    import resource

_BACKLOG = 4096
#: Seconds a client has to send a request's line and headers, from the connection's start
#: or the previous response's end.
HEAD_TIMEOUT_S = 30.0
#: Seconds a request body may stall (less than `BODY_MIN_BYTES` received while the app
#: waits for more): a body a byte a minute had been held for days.
BODY_IDLE_TIMEOUT_S = 60.0
BODY_MIN_BYTES = 32 * 1024  # a window's worth: about 0.5 KB/s, Apache's MinRate
#: Seconds a response may stall (the client reads nothing while the socket's buffers are full).
SEND_IDLE_TIMEOUT_S = 60.0
#: Open files (sockets) the gateway asks for: its soft limit is raised to this, or to the
#: hard limit when lower. At Linux's usual soft limit of 1,024 (macOS: 256), 1,100 idle
#: connections from anyone who could reach the port refused every other client until they
#: closed (each closed after `HEAD_TIMEOUT_S`, so a loop kept the cloud down).
OPEN_FILES = 65_536
#: macOS refuses a soft limit past OPEN_MAX even under an unlimited hard one.
_OPEN_MAX_DARWIN = 10_240


def raise_open_files_limit(want: int = OPEN_FILES) -> int:
    """Raise this process's soft limit on open files towards `want`, never past the hard
    limit and never down; the soft limit it has after."""
    if sys.platform == "win32":  # (no such limit to raise)
        return want
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        for candidate in (target, min(target, _OPEN_MAX_DARWIN)):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (candidate, hard))
                break
            except (ValueError, OSError):
                continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _DeadlineH11(H11Protocol):
    """uvicorn's h11 protocol with the deadlines API Gateway and nginx keep.

    uvicorn times out only an idle keep-alive connection: one that never sends a byte, or
    sends a request's head or body a byte at a time, is held for ever (slowloris), and so
    is one that never reads its answer (the response waits for buffer room that never
    comes, holding its unsent bytes too). Each costs a socket, not a thread, but a few
    thousand of them use up the process's file descriptors, and then no device can connect.
    """

    def __init__(
        self,
        *args: Any,
        head_timeout_s: float,
        body_idle_s: float,
        body_min_bytes: int,
        send_idle_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout_s, self._body_idle_s = head_timeout_s, body_idle_s
        self._body_min_bytes = body_min_bytes
        self._received = 0  # bytes since the deadline was last armed
        self._send_idle_s = send_idle_s
        self._deadline: asyncio.TimerHandle | None = None
        self._armed_for: type[h11.IDLE] | type[h11.SEND_BODY] | None = None
        self._awaited_continue = False  # the client still waited for 100 Continue last time
        self._send_deadline: asyncio.TimerHandle | None = None

    def _arm(self, state: type[h11.IDLE] | type[h11.SEND_BODY]) -> None:
        self._disarm()
        seconds = self._head_timeout_s if state is h11.IDLE else self._body_idle_s
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)
        self._armed_for = state
        self._awaited_continue = False
        self._received = 0

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._armed_for = None, None

    def _deadline_passed(self) -> None:
        state, self._deadline, self._armed_for = self._armed_for, None, None
        if self.transport.is_closing():
            return
        held_back = self._continue_unsent()
        if state is h11.SEND_BODY and (
            self.flow.read_paused or held_back or self._awaited_continue
        ):
            # the app has not taken what it was sent, or not yet asked for the body the
            # client holds back until it is told to go on: the stall is ours, not the
            # client's. Nor is it when the 100 Continue went out during this window: the
            # client's whole window starts from it (cut here, a body sent a moment after
            # the 100 met a closed connection)
            self._arm(h11.SEND_BODY)
            self._awaited_continue = held_back
            return
        self.transport.close()  # the app, if it is reading the body, sees a disconnect

    def _continue_unsent(self) -> bool:
        """Whether the client waits for a `100 Continue` that uvicorn sends only when the
        app first asks for the body (`Expect: 100-continue`)."""
        return self.cycle is not None and self.cycle.waiting_for_100_continue

    def _follow(self) -> None:
        """(Re)arm the deadline for what the connection waits on from the client."""
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._armed_for is not h11.IDLE:  # from the wait's start, not the last byte
                self._arm(h11.IDLE)
        elif state is h11.SEND_BODY:
            # a new window once the body has moved on `body_min_bytes` since the last, or
            # as it begins: a byte now and then does not keep a connection
            if self._armed_for is not h11.SEND_BODY or self._received >= self._body_min_bytes:
                self._arm(h11.SEND_BODY)
        else:
            self._disarm()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow()

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()  # the next request's head has its own time

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_deadline is None:
            self._arm_send(self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_send_deadline()

    def _arm_send(self, unsent: int) -> None:
        self._send_deadline = self.loop.call_later(self._send_idle_s, self._send_due, unsent)

    def _cancel_send_deadline(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _send_due(self, unsent_then: int) -> None:
        """Writing is still paused: abort unless the client took some bytes meanwhile. A
        slow reader may take a whole window to drain one chunk below the low-water mark
        (`resume_writing`), so only a window without any progress counts as a stall."""
        unsent = self.transport.get_write_buffer_size()
        if unsent < unsent_then:
            self._arm_send(unsent)
            return
        self._send_deadline = None
        # abort, not close: close waits for the unsent bytes to go, and they never would
        self.transport.abort()  # the app's sends end: uvicorn marks the cycle disconnected

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._cancel_send_deadline()
        super().connection_lost(exc)


class Server:
    """uvicorn over a pre-bound socket; `base_url` is known before serving starts."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
        body_min_bytes: int = BODY_MIN_BYTES,
        send_idle_timeout_s: float = SEND_IDLE_TIMEOUT_S,
    ) -> None:
        # IPPROTO_TCP named, not left 0: asyncio turns Nagle's algorithm off only on sockets
        # whose `proto` says TCP, and accepted ones take the listener's. With it on, every
        # request after a connection's first waited out the client's delayed ACK, 40 ms,
        # between a response's head and its body: each API call of a device cost 44 ms
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            hint = (
                " (another `tessera local up`? stop it, or pass --port N, or --port 0 for any)"
                if exc.errno == errno.EADDRINUSE
                else ""
            )
            raise OSError(
                exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}{hint}"
            ) from exc
        # listen now: a client told the URL before uvicorn has started waits in the backlog
        # instead of being refused
        self.sock.listen(_BACKLOG)
        self.host, self.port = host, self.sock.getsockname()[1]
        self._thread: threading.Thread | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._protocol = functools.partial(
            _DeadlineH11,
            head_timeout_s=head_timeout_s,
            body_idle_s=body_idle_timeout_s,
            body_min_bytes=body_min_bytes,
            send_idle_s=send_idle_timeout_s,
        )

    def _make(self, app: Any) -> uvicorn.Server:
        raise_open_files_limit()
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,  # open long-polls are cut after this
            backlog=_BACKLOG,
            # the peer's own address: a local client's X-Forwarded-For had been taken as
            # its address, a fresh sign-in throttle bucket per made-up value
            proxy_headers=False,
            http=self._protocol,  # type: ignore[arg-type]  # uvicorn calls it like a class
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
