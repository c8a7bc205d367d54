"""`BlockHttp`, the client's transport for presigned block URLs, against real local HTTP(S)
servers: bodies and signed headers arrive intact, connections are kept and renewed,
failures are transport errors the retry policy understands, TLS is verified, and proxies
configured in the environment are honoured."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tessera_client.api import Api, RetriesStopped, RetryPolicy, ServerUnreachable, send_with_retry
from tessera_client.blockhttp import KEPT_PER_THREAD, BlockHttp, UnusableUrl
from tessera_client.config import Home


class _Store(BaseHTTPRequestHandler):
    """PUT stores the body under the path; GET returns it. `server.mode` decides what
    happens to the connection afterwards."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1  # type: ignore[attr-defined]

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.objects[self.path] = (body, {k.lower(): v for k, v in self.headers.items()})  # type: ignore[attr-defined]
        self._answer(200, b"")

    def do_GET(self) -> None:
        if self.path == "/not-modified":  # a 304 may carry the Content-Length of the object
            self.send_response(304)
            self.send_header("Content-Length", "10")
            self.end_headers()
            return
        found = self.server.objects.get(self.path)  # type: ignore[attr-defined]
        if not found:
            self._answer(404, b"<Error>NoSuchKey</Error>")
            return
        # as S3 does, an object answers with the Content-Encoding it was PUT with
        encoding = found[1].get("content-encoding")
        self._answer(200, found[0], {"Content-Encoding": encoding} if encoding else {})

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        mode = self.server.mode  # type: ignore[attr-defined]
        if mode == "stall":  # nothing for 2 s, not even the status line
            time.sleep(2)
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"e"')
        if mode == "close":
            self.send_header("Connection", "close")
        self.end_headers()
        # "cut": the connection drops a tenth of the way through the body; "slow": it comes
        # a tenth at a time, 0.2 s apart
        if mode == "slow":
            for n in range(0, len(body), max(1, len(body) // 10)):
                self.wfile.write(body[n : n + max(1, len(body) // 10)])
                self.wfile.flush()
                time.sleep(0.2)
        else:
            self.wfile.write(body[: len(body) // 10] if mode == "cut" else body)
        # "drop": promise keep-alive, then close anyway (an idle timeout on the server)
        self.close_connection = mode in ("close", "drop", "cut")


@pytest.fixture
def store() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Store)
    server.objects, server.connections, server.mode = {}, 0, "keep"  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: ThreadingHTTPServer, path: str, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.server_address[1]}{path}"


@pytest.fixture
def blocks() -> Iterator[BlockHttp]:
    fallback = httpx.Client()
    transport = BlockHttp(fallback, timeout=5)
    yield transport
    transport.close()
    fallback.close()


def test_a_put_arrives_whole_with_its_signed_headers_and_reads_back(
    store: ThreadingHTTPServer, blocks: BlockHttp
) -> None:
    body = bytes(range(256)) * 600
    path = "/staging/u1/0/abc?X-Amz-Signature=s%2Bg&X-Amz-Expires=900"
    url = _url(store, path)
    headers = {"x-amz-checksum-sha256": "q+w/e=", "content-length": str(len(body))}
    put = blocks.request("PUT", url, headers=headers, content=body)
    assert put.status_code == 200 and put.headers["etag"] == '"e"'
    stored, sent = store.objects[path]  # type: ignore[attr-defined]
    assert stored == body
    assert sent["x-amz-checksum-sha256"] == "q+w/e="
    assert sent["content-length"] == str(len(body))
    got = blocks.request(
        "GET", _url(store, "/staging/u1/0/abc?X-Amz-Signature=s%2Bg&X-Amz-Expires=900")
    )
    assert got.content == body
    missing = blocks.request("GET", _url(store, "/nothing"))
    assert missing.status_code == 404 and b"NoSuchKey" in missing.content


def test_a_block_is_read_as_stored_whatever_encoding_it_claims(
    store: ThreadingHTTPServer, blocks: BlockHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An uploader can PUT a block with `Content-Encoding: gzip` (S3 keeps the unsigned
    header): decoding by it raised `DecodingError` out of every sync that fetched it."""
    body = bytes(range(256)) * 4  # not gzip
    url = _url(store, "/blocks/poisoned")
    blocks.request("PUT", url, headers={"Content-Encoding": "gzip"}, content=body)
    got = blocks.request("GET", url)
    assert got.content == body and "content-encoding" not in got.headers
    # the same through a proxy (the httpx client's path)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    proxied = httpx.Client(
        transport=httpx.MockTransport(
            lambda _request: httpx.Response(
                200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(body)
            )
        )
    )
    routed = BlockHttp(proxied, timeout=5)
    assert routed.request("GET", url).content == body
    routed.close()
    proxied.close()


@pytest.mark.parametrize(
    ("mode", "connections"),
    [
        ("keep", 1),  # kept alive: one connection for every request
        ("close", 3),  # `Connection: close` each time: a new one each time
        ("drop", 3),  # kept, but the server dropped it: replaced, the request not lost
    ],
)
def test_connections_are_kept_and_renewed(
    store: ThreadingHTTPServer, blocks: BlockHttp, mode: str, connections: int
) -> None:
    store.mode = mode  # type: ignore[attr-defined]
    for i in range(3):
        assert blocks.request("PUT", _url(store, f"/k{i}"), content=b"x").status_code == 200
    assert sorted(store.objects) == ["/k0", "/k1", "/k2"]  # type: ignore[attr-defined]
    assert store.connections == connections  # type: ignore[attr-defined]


def test_a_thread_keeps_connections_to_its_most_recent_hosts_only(blocks: BlockHttp) -> None:
    """One connection kept per host, for good: block URLs spread over many hosts held a
    descriptor each until every file the client opened failed (EMFILE)."""
    stores = []
    try:
        for _ in range(KEPT_PER_THREAD + 4):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Store)
            server.objects, server.connections, server.mode = {}, 0, "keep"  # type: ignore[attr-defined]
            threading.Thread(target=server.serve_forever, daemon=True).start()
            stores.append(server)
            assert blocks.request("PUT", _url(server, "/k"), content=b"x").status_code == 200
            assert len(blocks._open) <= KEPT_PER_THREAD
        # the most recent are kept: used again, they open nothing new
        for server in stores[-KEPT_PER_THREAD:]:
            assert blocks.request("GET", _url(server, "/k")).content == b"x"
            assert server.connections == 1  # type: ignore[attr-defined]
    finally:
        for server in stores:
            server.shutdown()
            server.server_close()


def test_an_unreachable_store_is_a_transport_error_the_retry_policy_handles(
    blocks: BlockHttp,
) -> None:
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _Store)
    url = _url(closed, "/k")
    closed.server_close()
    with pytest.raises(httpx.TransportError):
        blocks.request("PUT", url, content=b"x")
    sleeps: list[float] = []
    with pytest.raises(ServerUnreachable, match="cannot reach"):
        send_with_retry(blocks, RetryPolicy(attempts=3, sleep=sleeps.append), "PUT", url)
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("file:///etc/passwd", {}),
        ("ftp://example.com/x", {}),
        ("http:///nohost", {}),
        ("http://example.com:99999/x", {}),
        ("http://[::1/x", {}),
        ("http://example.com/a b", {}),
        ("http://example.com/x", {"x-amz-meta": "v\r\nInjected: yes"}),
        ("http://example.com/x", {"bad name": "v"}),
        # what http.client cannot encode: it raised UnicodeError, which ended every round
        ("http://example.com/blöck", {}),
        ("http://example.com/x", {"x-amz-meta": "\u20ac"}),
        ("http://" + "a" * 64 + ".example.com/x", {}),
    ],
)
def test_only_sendable_urls_and_headers_are_sent(
    blocks: BlockHttp, url: str, headers: dict[str, str]
) -> None:
    """The server's answer is at fault, not the network: not a TransportError (which is
    retried and then taken for an outage), and not a bare ValueError (which ended rounds)."""
    with pytest.raises(UnusableUrl):
        blocks.request("GET", url, headers=headers)


def test_a_proxy_in_the_environment_is_honoured(
    store: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the environment routes through a proxy goes through the httpx client (which
    honours it); what NO_PROXY exempts goes direct."""
    seen: list[str] = []

    def proxy(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, stream=httpx.ByteStream(b"via proxy"))  # as it arrives

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    fallback = httpx.Client(transport=httpx.MockTransport(proxy))
    routed = BlockHttp(fallback, timeout=5)
    assert routed.request("GET", _url(store, "/k")).content == b"via proxy"
    assert seen == [_url(store, "/k")]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = BlockHttp(fallback, timeout=5)
    assert direct.request("GET", _url(store, "/k")).status_code == 404  # the real store
    assert len(seen) == 1
    routed.close()
    direct.close()


def test_an_answer_without_a_body_is_not_cut_short(
    store: ThreadingHTTPServer, blocks: BlockHttp
) -> None:
    assert blocks.request("GET", _url(store, "/not-modified")).status_code == 304


def test_an_answer_cut_short_is_a_network_error_not_a_block(store: ThreadingHTTPServer) -> None:
    """The connection closes before the Content-Length promised has come: `read(amt)`
    returns what came, without an error. Taken as the block, it failed to decode and the
    client reported the stored block as damaged; now it is retried like any network error."""
    store.mode = "cut"  # type: ignore[attr-defined]
    store.objects["/cut"] = (b"x" * 100, {})  # type: ignore[attr-defined]
    fallback = httpx.Client()
    cut = BlockHttp(fallback, timeout=5)
    with pytest.raises(httpx.NetworkError):
        cut.request("GET", _url(store, "/cut"))
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=2, sleep=sleeps.append)
    with pytest.raises(ServerUnreachable):
        send_with_retry(cut, policy, "GET", _url(store, "/cut"))
    assert len(sleeps) == 1  # retried
    cut.close()
    fallback.close()


def test_an_answer_that_trickles_in_is_cut_off_at_the_deadline(
    store: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read is within the socket's timeout, but the whole answer takes longer than any
    block should: a store sending a byte a minute held the round for as long as it liked."""
    monkeypatch.setattr("tessera_client.blockhttp.MAX_REQUEST_S", 0.5)
    store.objects["/slow"] = (b"x" * 100, {})  # type: ignore[attr-defined]
    fallback = httpx.Client()
    slow = BlockHttp(fallback, timeout=5)
    store.mode = "slow"  # type: ignore[attr-defined]
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        slow.request("GET", _url(store, "/slow"))
    assert time.monotonic() - started < 1.9  # not the whole 2 s the answer takes
    # a kept connection cut off before the answer began (a reset, as a server that closed
    # an idle connection gives) was sent again on a new one, for another whole deadline
    store.mode = "keep"  # type: ignore[attr-defined]
    slow.request("GET", _url(store, "/slow"))
    store.mode, store.connections = "stall", 0  # type: ignore[attr-defined]
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        slow.request("GET", _url(store, "/slow"))
    assert time.monotonic() - started < 1.9  # one deadline, not two
    assert store.connections == 0  # type: ignore[attr-defined]
    slow.close()
    fallback.close()


def test_a_stop_cuts_a_transfer_in_flight_at_once(
    store: ThreadingHTTPServer, tmp_path: Path
) -> None:
    """Ctrl-C in `get`, or a daemon's stop, waited for a block from a slow store for up to
    `MAX_REQUEST_S` (15 minutes): `Api.stop` cuts the exchange, and the call gives up."""
    store.objects["/slow"] = (b"x" * 100, {})  # type: ignore[attr-defined]
    api = Api("http://127.0.0.1:1", Home(tmp_path / "home"))
    api.transfer("GET", _url(store, "/slow"), {})  # a connection kept, as a daemon has
    store.mode = "slow"  # type: ignore[attr-defined]  # (the answer takes 2 s)
    threading.Timer(0.3, api.stop).start()
    started = time.monotonic()
    with pytest.raises(RetriesStopped):  # not sent again on a new connection, uncut
        api.transfer("GET", _url(store, "/slow"), {})
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    with pytest.raises(RetriesStopped):  # nor is one begun after the stop
        api.transfer("GET", _url(store, "/slow"), {})
    assert time.monotonic() - started < 1.5
    api.close()


def test_an_answer_longer_than_any_block_is_refused_as_it_arrives(
    store: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block URL answering with more than a stored block can hold (a lying or broken
    server, an endless stream) was read whole into memory. Now it is refused after
    `max_answer` bytes, directly or through a proxy, and the connection is not reused."""
    fallback = httpx.Client()
    capped = BlockHttp(fallback, timeout=5, max_answer=1000)
    store.objects["/fits"] = (b"x" * 1000, {})  # type: ignore[attr-defined]
    store.objects["/huge"] = (b"x" * 1001, {})  # type: ignore[attr-defined]
    with pytest.raises(UnusableUrl, match="longer than any block"):
        capped.request("GET", _url(store, "/huge"))
    assert capped.request("GET", _url(store, "/fits")).content == b"x" * 1000
    assert store.connections == 2  # type: ignore[attr-defined]
    capped.close()

    def proxy(request: httpx.Request) -> httpx.Response:
        body = b"y" * (1001 if "huge" in str(request.url) else 10)
        return httpx.Response(200, stream=httpx.ByteStream(body))

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    proxied = BlockHttp(
        httpx.Client(transport=httpx.MockTransport(proxy)), timeout=5, max_answer=1000
    )
    with pytest.raises(UnusableUrl, match="longer than any block"):
        proxied.request("GET", _url(store, "/huge"))
    assert proxied.request("GET", _url(store, "/small")).content == b"y" * 10
    fallback.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_tls_is_verified(store: ThreadingHTTPServer, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    store.socket = context.wrap_socket(store.socket, server_side=True)
    url = _url(store, "/k", scheme="https")
    fallback = httpx.Client()
    untrusting = BlockHttp(fallback, timeout=5)  # httpx's default trust: certifi
    with pytest.raises(httpx.ConnectError, match="TLS"):
        untrusting.request("PUT", url, content=b"secret")
    assert store.objects == {}  # type: ignore[attr-defined]
    trusting = BlockHttp(fallback, timeout=5, ssl_context=ssl.create_default_context(cafile=cert))
    assert trusting.request("PUT", url, content=b"secret").status_code == 200
    assert store.objects["/k"][0] == b"secret"  # type: ignore[attr-defined]
    for transport in (untrusting, trusting):
        transport.close()
    fallback.close()
