"""Requests to presigned block URLs on the standard library's `http.client`.

A sync sends a request per block: a 1,000-file sync makes 1,000 PUTs. Through httpx each
cost ~2.2 ms of the client's CPU, against ~1.0 ms on `http.client` (150 KiB PUTs to moto,
a new connection each), most of it httpx building its request and response models. Block
URLs need none of what that buys: they carry no token, no cookies, no redirects, and the
body is already in memory. So they go out here, keep-alive connections one set per thread,
and come back as an `httpx.Response` for the rest of the client.

The one httpx feature kept is its trust: TLS verifies against httpx's default context
(certifi, or `SSL_CERT_FILE`), and a URL the environment routes through a proxy is sent
by the httpx client, which honours the proxy.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import SplitResult, urlsplit

import httpx

from tessera.blocks import MAX_STORED_SIZE

#: What a connection kept from an earlier request raises when the server has closed it
#: meanwhile: the request is sent again, once, on a new connection.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
# What would split or end the request line or a header: in a URL or a header name, control
# characters and spaces; in a header value, control characters but tab.
_UNSENDABLE = re.compile(r"[\x00-\x20\x7f]")
_UNSENDABLE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: The longest a request and its answer may take (a block is at most 4 MiB: 15 minutes is
#: under 5 KB/s)
MAX_REQUEST_S = 900.0
#: Connections a thread keeps open, to its most recent block hosts: one kept per host had
#: grown without bound with a store (or a server) spreading blocks over many hosts, until
#: every file the client opened failed for want of descriptors (EMFILE)
KEPT_PER_THREAD = 8


class UnusableUrl(ValueError):
    """A block URL or header from the server that cannot be sent (a bad port, a line break
    in a header, not http(s)), or one that answers with more than any block holds. The
    server's answer is at fault, not the network: it is not retried, and fails the block's
    file alone."""


def _checked(url: str, headers: Mapping[str, str]) -> SplitResult:
    """`url` split, once it and `headers` are known to be sendable (else `UnusableUrl`)."""
    shown = url.split("?")[0]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed lazily: raises ValueError for a bad port
    except ValueError as exc:
        raise UnusableUrl(f"{shown}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnusableUrl(f"not an http(s) URL: {shown}")
    if _UNSENDABLE.search(url):
        raise UnusableUrl(f"{shown}: a space or control character in the URL")
    # What `http.client` would fail to encode (UnicodeError, a ValueError no caller took for
    # the server's fault: it ended the sync, and the daemon, every round)
    try:
        url.encode("ascii")
        parts.hostname.encode("idna")
        for name, value in headers.items():
            name.encode("ascii")
            value.encode("latin-1")
    except UnicodeError as exc:
        raise UnusableUrl(f"{shown}: cannot be sent as HTTP ({exc})") from None
    for name, value in headers.items():
        if _UNSENDABLE.search(name) or _UNSENDABLE_VALUE.search(value):
            raise UnusableUrl(f"{shown}: header {name[:40]!r} holds a control character")
    return parts


class BlockHttp:
    """`request(method, url, headers=, content=)` like `httpx.Client.request`, for block URLs."""

    def __init__(
        self,
        fallback: httpx.Client,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        proxies: Mapping[str, str] | None = None,
        max_answer: int = MAX_STORED_SIZE,
    ) -> None:
        """`fallback` sends what must go through a proxy; `ssl_context` defaults to httpx's,
        `proxies` to the environment's (read once, as httpx does). An answer body longer
        than `max_answer` bytes is refused as it arrives (`UnusableUrl`): a block URL that
        streams without end would otherwise fill the client's memory."""
        self._fallback = fallback
        self._max_answer = max_answer
        self._timeout = timeout
        self._ssl = ssl_context
        self._proxies = urllib.request.getproxies_environment() if proxies is None else proxies
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()  # every thread's, for close()
        # re-entrant: `abort` runs in a signal handler, maybe on a thread that holds it
        self._lock = threading.RLock()
        self._aborted = False  # (`abort`: no exchange is sent again, nor a new one begun)

    def abort(self) -> None:
        """Cut every open connection (the process is stopping): an exchange blocked on a
        slow store fails at once, as a network error, where it had held the exit for up
        to `MAX_REQUEST_S`. Their owners still close them."""
        with self._lock:
            self._aborted = True
            connections = list(self._open)
        for conn in connections:
            _cut(conn)

    def close(self) -> None:
        """Close every open connection."""
        with self._lock:
            connections, self._open = self._open, set()
        for conn in connections:
            conn.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """Send one request; transport failures raise `httpx.TransportError` subclasses, a
        URL or header that cannot be sent `UnusableUrl`."""
        parts = _checked(url, headers or {})
        if self._aborted:
            raise httpx.NetworkError("stopping: the transfer was not begun")
        if self._proxied(parts.scheme, parts.hostname or ""):
            return self._through_proxy(method, url, headers, content)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        key = (parts.scheme, parts.hostname or "", parts.port)
        pool = self._pool()
        kept = pool.pop(key, None)
        conn = kept or self._connect(*key)
        try:
            try:
                response, body = self._exchange(conn, method, target, headers or {}, content)
            except _STALE:
                if kept is None or self._aborted:  # (cut by `abort`: not sent again)
                    raise
                self._discard(kept)
                conn = self._connect(*key)
                response, body = self._exchange(conn, method, target, headers or {}, content)
            self._check_size(url, len(body))
            declared = response.getheader("Content-Length") or ""
            bodiless = method == "HEAD" or response.status in (204, 304) or response.status < 200
            if not bodiless and declared.isdigit() and len(body) < int(declared):
                # the connection closed early: `read(amt)` returns what came, no error. Taken
                # whole, a cut block failed to decode and was reported as damaged in store
                raise http.client.IncompleteRead(body, int(declared) - len(body))
        except BaseException as exc:
            self._discard(conn)
            if isinstance(exc, ssl.SSLError):
                raise httpx.ConnectError(f"TLS with {parts.hostname} failed: {exc}") from exc
            if isinstance(exc, TimeoutError):
                raise httpx.TimeoutException(f"{parts.hostname} did not answer in time") from exc
            if isinstance(exc, OSError | http.client.HTTPException):
                raise httpx.NetworkError(f"{parts.hostname}: {exc!r}") from exc
            raise
        if response.will_close:
            self._discard(conn)
        else:
            pool[key] = conn  # (after every other: the most recently used last)
            while len(pool) > KEPT_PER_THREAD:
                self._discard(pool.pop(next(iter(pool))))
        return httpx.Response(
            response.status,
            headers=_opaque(response.getheaders()),
            content=body,
            request=httpx.Request(method, url),
        )

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        target: str,
        headers: dict[str, str],
        content: bytes | None,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """Send the request and read its answer (up to `max_answer` + 1 bytes) within
        `MAX_REQUEST_S` (`TimeoutError` past it)."""
        with _WATCHDOG.watching(conn, MAX_REQUEST_S) as late:
            try:
                conn.request(method, target, body=content, headers=headers)
                response = conn.getresponse()
                body = response.read(self._max_answer + 1)
            finally:
                # whatever its shutdown made the exchange raise (a reset, which a kept
                # connection would have sent again on a new one, for another deadline)
                if late.is_set():
                    raise TimeoutError(f"the exchange took over {MAX_REQUEST_S} s")
        return response, body

    def _through_proxy(
        self, method: str, url: str, headers: dict[str, str] | None, content: bytes | None
    ) -> httpx.Response:
        """The request sent by the httpx client (which honours the proxy), its answer read
        up to `max_answer` bytes."""
        with self._fallback.stream(method, url, headers=headers, content=content) as streamed:
            body = self._gather(url, streamed.iter_raw())
            kept = _opaque(streamed.headers.multi_items(), "content-length")
            return httpx.Response(
                streamed.status_code, headers=kept, content=body, request=streamed.request
            )

    def _gather(self, url: str, chunks: Iterable[bytes]) -> bytes:
        """An answer's body from its chunks (through a proxy), refused past `max_answer`
        bytes (`UnusableUrl`) or `MAX_REQUEST_S` seconds (`httpx.ReadTimeout`, as
        `_Watchdog` bounds a direct one)."""
        deadline = time.monotonic() + MAX_REQUEST_S
        body = bytearray()
        for chunk in chunks:
            body += chunk
            self._check_size(url, len(body))
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(
                    f"{url.split('?')[0]}: the answer took over {MAX_REQUEST_S} s"
                )
        return bytes(body)

    def _check_size(self, url: str, received: int) -> None:
        if received > self._max_answer:
            raise UnusableUrl(
                f"{url.split('?')[0]}: the answer is longer than any block"
                f" ({self._max_answer} bytes)"
            )

    def _proxied(self, scheme: str, host: str) -> bool:
        """True when the environment routes `scheme://host` through a proxy (as httpx would)."""
        if scheme not in self._proxies and "all" not in self._proxies:
            return False
        # in the standard library since 3.x, missing from typeshed
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        return not bypass(host, self._proxies)

    def _pool(self) -> dict[tuple[str, str, int | None], http.client.HTTPConnection]:
        """This thread's kept connections, by (scheme, host, port)."""
        pool: dict[tuple[str, str, int | None], http.client.HTTPConnection] | None
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        return pool

    def _connect(self, scheme: str, host: str, port: int | None) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            conn = http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._timeout)
        with self._lock:
            self._open.add(conn)
        return conn

    def _discard(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)


class _Watchdog:
    """Shuts down the connections whose exchange runs past its deadline. The socket's
    timeout bounds each read only: a store sending a byte a minute held a round (or the
    daemon) for as long as it liked. Reading in small pieces to look at a clock between
    them cost three to five times the CPU of one read, so one thread watches them all."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[http.client.HTTPConnection, tuple[float, threading.Event]] = {}
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(
        self, conn: http.client.HTTPConnection, seconds: float
    ) -> Iterator[threading.Event]:
        """Watch `conn` for `seconds`; the event is set if it was shut down for it."""
        late = threading.Event()
        with self._cond:
            self._due[conn] = (time.monotonic() + seconds, late)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tessera-block-deadlines", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        try:
            yield late
        finally:
            with self._cond:
                self._due.pop(conn, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for conn, (due, late) in list(self._due.items()):
                    if due > now:
                        continue
                    if conn.sock is None:  # still connecting (bounded by its timeout)
                        self._due[conn] = (now + 1.0, late)
                        continue
                    del self._due[conn]
                    late.set()
                    _cut(conn)
                soonest = min((due for due, _ in self._due.values()), default=now + 3600)
                self._cond.wait(soonest - now)


_WATCHDOG = _Watchdog()


def _cut(conn: http.client.HTTPConnection) -> None:
    """Shut a connection's socket down: a read blocked on it returns at once. The plain
    socket's shutdown: `SSLSocket.shutdown` unwraps the TLS object under the reading
    thread's feet, a ValueError there."""
    sock = conn.sock  # (once: another thread may close it meanwhile)
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _opaque(headers: Iterable[tuple[str, str]], *dropped: str) -> list[tuple[str, str]]:
    """An answer's headers without `Content-Encoding` (and `dropped`): a block's bytes are
    opaque and verified by their own tag, never decoded. S3 keeps whatever
    `Content-Encoding` an uploader sent with a presigned PUT (the header is not signed),
    and decoding by it (`gzip` over bytes that are not) raised out of every sync that
    fetched the block."""
    gone = {"content-encoding", *dropped}
    return [(name, value) for name, value in headers if name.lower() not in gone]
