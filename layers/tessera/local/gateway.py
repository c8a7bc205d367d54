"""The local gateway: what API Gateway, the Cognito authorizer and S3 do on AWS, as one ASGI app.

- `PUT/GET /blocks/<key>?...&sig=` — presigned block URLs, checked by the block store
  (`accept_put_async` / `open_get`) before anything is stored or sent.
- `POST /v1/auth/token`, `POST /v1/auth/revoke` — the local JWT issuer's token endpoint, and
  signing a refresh token's session out.
- `POST /v1/list_folder/longpoll` — answered natively on the event loop, so an idle long-poll
  costs an `asyncio.Event`, not a thread.
- every other `/v1/*` route — the bearer token is verified like the Cognito authorizer does
  (401 JSON otherwise; `/v1/health` and `/v1/openapi.json` are public), the caller's request
  rate is checked like API Gateway's throttling (429 + Retry-After), then an API Gateway
  REST proxy event is built and the API's Powertools resolver runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import errno
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO, Protocol

import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tessera.adapters.local.block_store import FilesystemBlockStore
from tessera.api.routes import LONGPOLL_PATH, is_longpoll
from tessera.domain.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    TesseraError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from tessera.domain.models import MAX_CURSOR_CHARS
from tessera.local.throttle import CallerLimit, CallerSlot, RequestThrottle
from tessera.ports import Identity, Principal, SignInOrigin

log = logging.getLogger(__name__)

# An API request's body, within what passes on AWS: Lambda takes a synchronous event of at
# most 6 MiB, and the body is a JSON string in it, its quotes escaped (a block list is ~9 %
# quotes), beside the headers. A body is parsed whole (JSON: ~20 times its size in
# objects), so the 16 MiB this was took ~350 MB a request.
MAX_API_BODY = 5 * 1024 * 1024
# A stored block's upload (the block URLs: S3's on AWS), at least this much.
MAX_BLOCK_BODY = 16 * 1024 * 1024
# A long-poll body is a cursor and a timeout. A cursor may be up to `MAX_CURSOR_CHARS` (a
# user in a thousand shared folders); the 128 KiB this was refused every long-poll of a
# user in 510 of them with long names.
LONGPOLL_MAX_BODY = MAX_CURSOR_CHARS + 4 * 1024
# Long-polls waiting at once per user: one per device, and room to spare. Beyond them, 429
# with this Retry-After.
LONGPOLLS_PER_USER = 100
LONGPOLLS_FULL_RETRY_S = 30
# Other API calls in progress at once per user (their block transfers go to the block URLs):
# a device makes a dozen at most. Each holds its body, up to `MAX_API_BODY`, while it waits
# for one of the 40 threads.
CALLS_PER_USER = 64
# A long-poll body longer than this is re-encoded without padding before its wait.
_COMPACT_ABOVE = 16 * 1024
# In AWS mode the longpoll function blocks a thread for its whole wait (30-480 s). On AWS it has
# a concurrency of its own; here its own threads, so idle devices cannot take the threads
# (40 by default) every other request waits for.
LONGPOLL_THREADS = 256
# A sign-in may wait up to a second for a password-check slot, in a worker thread: on
# threads of its own, so a flood of sign-ins cannot take the ones every API call needs.
# When they are all busy the answer is 429 at once.
SIGN_IN_THREADS = 8
# The gateway's disk full (the block store's, mid-upload): the server out of room for a
# while, not a bug. A client waits and tries again; whoever runs it frees space.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL = "the server's disk is full; try again later"
DISK_FULL_RETRY_S = 60
# The answer to a long-poll still waiting when the server stops
STOPPING = "the server is stopping; try again shortly"
STOPPING_RETRY_S = 2
PUBLIC_ROUTES = frozenset({"/v1/health", "/v1/openapi.json"})
# What a public route's request may carry: nothing it reads, so no one reaches for the
# authenticated routes' limit without signing in.
PUBLIC_MAX_BODY = 4 * 1024
BINARY = "application/octet-stream"
_TEXT_TYPES = ("application/json", "text/", "application/x-www-form-urlencoded")


class Resolver(Protocol):
    """What the gateway needs of the API app (Powertools' `APIGatewayRestResolver`)."""

    def resolve(self, event: dict[str, Any], context: Any) -> dict[str, Any]: ...


class TokenEndpoint(Protocol):
    """`POST /v1/auth/token` and `/v1/auth/revoke`: the local JWT issuer, or Cognito in
    AWS mode."""

    def token(self, body: Mapping[str, Any], origin: SignInOrigin | None = None) -> Any:
        """Tokens for a JSON body (`origin`: where the request came from, for the identity
        provider's risk checks); the result has `to_body()`. Raises TesseraError."""
        ...

    def revoke(self, body: Mapping[str, Any]) -> None:
        """Sign out the session of the body's refresh token. Raises TesseraError."""
        ...


#: The native long-poll: (principal, raw body) -> JSON response body, or None to let the API
#: answer (a malformed body). Raises TesseraError.
Longpoll = Callable[[Principal, bytes], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True)
class LambdaContext:
    """The parts of a Lambda context object the API reads (request id, names)."""

    aws_request_id: str
    function_name: str = "tessera-local"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:local:000000000000:function:tessera-local"
    memory_limit_in_mb: int = 1024

    def get_remaining_time_in_millis(self) -> int:
        """Lambda's budget; the local gateway has no hard limit."""
        return 900_000


@dataclass
class Gateway:
    """The gateway's collaborators. `block_store` serves the block URLs; without it (AWS
    mode: blocks go to S3) the block routes answer 404."""

    block_store: FilesystemBlockStore | None = None
    identity: Identity | None = None
    token_endpoint: TokenEndpoint | None = None
    resolver: Resolver | None = None
    longpoll: Longpoll | None = None
    max_block_body: int = MAX_BLOCK_BODY
    # per-user throttling of the API routes, the long-poll too, as API Gateway's stage
    # throttling counts every route (not the presigned block URLs, which are S3's on AWS);
    # unthrottled, a stale cursor's long-poll answered at once could be sent in a loop
    throttle: RequestThrottle | None = None
    longpolls_per_user: int = LONGPOLLS_PER_USER
    calls_per_user: int = CALLS_PER_USER
    # per-address throttling of the token endpoint (sign-ins need no account)
    sign_in_throttle: RequestThrottle | None = None


def error_response(err: TesseraError) -> JSONResponse:
    """The JSON error of DESIGN §5 (with Retry-After / WWW-Authenticate where they apply)."""
    headers = err.headers()
    if isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(err.to_body(), status_code=err.status, headers=headers)


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest("invalid Content-Length")
    return int(raw)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes (413) before reading them."""
    declared = _content_length(request)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    """A JSON object body (422 when it is not one)."""
    raw = await read_body(request, limit)
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the limit
        raise Unprocessable("the body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise Unprocessable("the body must be a JSON object")
    return data


def _compact(body: bytes) -> bytes:
    """A long-poll's body without its padding, before it is held for the wait: the limit
    must take the longest cursor (~1 MiB), and a short one padded with whitespace up to it
    held a megabyte per long-poll, a hundred of them per account. A body that is not JSON
    is kept as it is (the API answers it with its exact 422, at once)."""
    if len(body) <= _COMPACT_ABOVE:
        return body
    try:
        return json.dumps(json.loads(body), separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        return body


def bearer_principal(request: Request, identity: Identity | None) -> Principal:
    """Verify `Authorization: Bearer <token>` like the Cognito authorizer; 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or identity is None:
        raise Unauthorized("missing bearer token")
    return identity.verify(token.strip())


def client_address(request: Request) -> str:
    """The address the request came from (API Gateway's `sourceIp`)."""
    return request.client.host if request.client else "127.0.0.1"


def proxy_event(request: Request, body: bytes, principal: Principal | None) -> dict[str, Any]:
    """The API Gateway REST proxy event (`{proxy+}` resource) for `request`."""
    headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        headers[name] = value
        multi_headers.setdefault(name, []).append(value)
    query: dict[str, str] = {}
    multi_query: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        query[name] = value
        multi_query.setdefault(name, []).append(value)
    content_type = request.headers.get("content-type", "application/json")
    is_text = content_type.startswith(_TEXT_TYPES)
    if body and is_text:
        try:
            text: str | None = body.decode("utf-8")
            encoded = False
        except UnicodeDecodeError:
            text, encoded = base64.b64encode(body).decode("ascii"), True
    elif body:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    else:
        text, encoded = None, False
    path = request.url.path
    authorizer = (
        {"claims": {"sub": principal.user_id, "email": principal.email}} if principal else {}
    )
    now = time.time()
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "resourcePath": "/{proxy+}",
            "httpMethod": request.method,
            "path": path,
            "protocol": f"HTTP/{request.scope.get('http_version', '1.1')}",
            "stage": "local",
            "requestId": str(uuid.uuid4()),
            "requestTimeEpoch": int(now * 1000),
            "identity": {
                "sourceIp": client_address(request),
                "userAgent": request.headers.get("user-agent", ""),
            },
            "authorizer": authorizer,
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


def proxy_response(result: Mapping[str, Any]) -> Response:
    """A Starlette response from a Lambda proxy result."""
    headers: dict[str, str] = dict(result.get("headers") or {})
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers[name] = ", ".join(values)
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode("utf-8")
    headers.pop("Content-Length", None)
    headers.pop("content-length", None)
    return Response(raw, status_code=int(result.get("statusCode", 200)), headers=headers)


def create_app(gw: Gateway) -> Starlette:
    """The gateway's ASGI app over `gw`'s collaborators."""
    longpoll_threads = anyio.CapacityLimiter(LONGPOLL_THREADS)
    # held until a long-poll's thread returns, not until its caller leaves: anyio hands a
    # limiter's token back when the waiting task is cancelled, while the abandoned thread
    # runs out its wait (up to 480 s), so callers that hung up at once grew threads unbounded
    longpolls_running = threading.BoundedSemaphore(LONGPOLL_THREADS)
    sign_in_threads = anyio.CapacityLimiter(SIGN_IN_THREADS)
    held_longpolls = CallerLimit(
        gw.longpolls_per_user,
        "{limit} long-polls of this account are waiting already; close some (each device"
        " needs one)",
        LONGPOLLS_FULL_RETRY_S,
    )
    calls_in_progress = CallerLimit(
        gw.calls_per_user,
        "{limit} requests of this account are in progress already; send fewer at once",
        1,
    )

    async def put_block(request: Request) -> Response:
        if gw.block_store is None:
            raise NotFound("this gateway stores no blocks")
        key = request.path_params["key"]
        declared = _content_length(request)
        if declared is not None and declared > gw.max_block_body:
            raise PayloadTooLarge(f"block over {gw.max_block_body} bytes")
        await gw.block_store.accept_put_async(
            key,
            request.query_params,
            declared,
            _stream(request),
            request.headers.get("x-amz-checksum-sha256"),
        )
        return Response(status_code=200, headers={"ETag": f'"{request.query_params["sha256"]}"'})

    async def get_block(request: Request) -> Response:
        if gw.block_store is None:
            raise NotFound("this gateway stores no blocks")
        key = request.path_params["key"]
        if request.method == "HEAD":  # the method is signed: S3 refuses a HEAD with it
            raise Forbidden("this URL is signed for GET", reason="signature")
        path = gw.block_store.open_get(key, request.query_params)
        # Opened here, before the answer starts: a tier move or gc delete after the check
        # then reads to the end (the open file keeps its data), or is a clean 404.
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"no object at {key}") from None
        headers = {"Content-Length": str(os.fstat(f.fileno()).st_size)}
        return StreamingResponse(_file_chunks(f), headers=headers, media_type=BINARY)

    def token_endpoint() -> TokenEndpoint:
        if gw.token_endpoint is None:
            raise Unauthorized("this gateway issues no tokens")
        return gw.token_endpoint

    async def token(request: Request) -> Response:
        origin = SignInOrigin.of(
            client_address(request), request.url.netloc, request.url.path, request.headers
        )
        pair = await _sign_in_call(request, partial(token_endpoint().token, origin=origin))
        return JSONResponse(pair.to_body(), headers={"Cache-Control": "no-store"})

    async def revoke(request: Request) -> Response:
        await _sign_in_call(request, token_endpoint().revoke)
        return JSONResponse({}, headers={"Cache-Control": "no-store"})

    async def _sign_in_call(request: Request, call: Callable[[dict[str, Any]], Any]) -> Any:
        """`call` with the request's JSON body on the sign-in threads, throttled per client
        address (the token routes need no account)."""
        if gw.sign_in_throttle is not None:
            gw.sign_in_throttle.take(client_address(request))
        body = await json_body(request, 64 * 1024)
        if sign_in_threads.available_tokens < 1:
            raise TooManyRequests("too many sign-ins at once; try again shortly", 1)
        return await anyio.to_thread.run_sync(call, body, limiter=sign_in_threads)

    async def longpoll(request: Request) -> Response:
        principal = bearer_principal(request, gw.identity)
        if gw.throttle is not None:
            gw.throttle.take(principal.user_id)
        slot = held_longpolls.take(principal.user_id)
        try:
            body = _compact(await read_body(request, LONGPOLL_MAX_BODY))

            async def answer() -> Response:
                if gw.longpoll is not None:
                    result = await gw.longpoll(principal, body)
                    if result is not None:
                        return JSONResponse(result)
                return await _resolve(request, body, principal, (longpoll_threads, slot))

            waiting = asyncio.ensure_future(answer())
            ended = await _done_before_disconnect(request, waiting)
            if ended is _Ended.CLIENT_LEFT:
                return Response(status_code=408)  # nobody is listening any more
            if ended is _Ended.SERVER_STOPPING:
                # read by a client still waiting: a 408 had reached the daemon as "waiting
                # for the server: 408"; a 503 is retried, until the server is back
                return error_response(Unavailable(STOPPING, retry_after=STOPPING_RETRY_S))
            return waiting.result()
        finally:
            if not slot.handed_over:
                slot.give_back()

    async def api(request: Request) -> Response:
        if is_longpoll(request.url.path) and request.method == "POST":
            # `/v1/list_folder/longpoll/` too: the resolver matches it, and would hold a
            # thread of the shared pool for the whole wait. (Another method is the
            # resolver's 404, as API Gateway, with POST alone on the resource, refuses it.)
            return await longpoll(request)
        if request.url.path in PUBLIC_ROUTES:
            return await _resolve(request, await read_body(request, PUBLIC_MAX_BODY), None)
        principal = bearer_principal(request, gw.identity)
        if gw.throttle is not None:
            gw.throttle.take(principal.user_id)
        slot = calls_in_progress.take(principal.user_id)  # before its body is read
        try:
            return await _resolve(request, await read_body(request, MAX_API_BODY), principal)
        finally:
            slot.give_back()

    async def _resolve(
        request: Request,
        body: bytes,
        principal: Principal | None,
        waiting: tuple[anyio.CapacityLimiter, CallerSlot] | None = None,
    ) -> Response:
        """Run the API on a worker thread. A long-poll runs on its own threads, holding its
        caller's place until the thread returns, and is abandoned to finish on its own when
        its caller stops waiting; any other call runs on Starlette's shared pool and is
        waited for, so a stopping server does not cut a commit short."""
        if gw.resolver is None:
            raise TesseraError("the API is not wired into this gateway")
        event = proxy_event(request, body, principal)
        context = LambdaContext(aws_request_id=event["requestContext"]["requestId"])
        if waiting is None:
            result = await anyio.to_thread.run_sync(gw.resolver.resolve, event, context)
            return proxy_response(result)
        threads, slot = waiting
        if not longpolls_running.acquire(blocking=False):
            raise TooManyRequests("too many long-polls waiting; try again shortly", 5)
        resolve = gw.resolver.resolve
        start = _ThreadStart()

        def run() -> dict[str, Any]:
            if not start.begin():
                return {}  # its caller left first, and gave its places back
            # taken over here, not before: a caller who leaves while the thread has not
            # started gives it back itself (a thread that never runs never would)
            slot.handed_over = True
            try:
                return resolve(event, context)
            finally:
                longpolls_running.release()
                slot.give_back()

        try:
            result = await anyio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=threads)
        except BaseException:  # cancelled: the caller hung up, or the server stops
            if start.abandon():
                longpolls_running.release()
            raise
        return proxy_response(result)

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, TesseraError):
            return error_response(exc)
        # anything else is a bug: logged with its traceback for whoever runs the gateway,
        # answered like the API does, never leaking internals to the caller
        log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": {"code": "internal", "message": "internal error"}}, 500)

    async def on_hang_up(request: Request, exc: Exception) -> Response:
        # a laptop that slept, a cancelled sync: no one to answer, and no bug to log
        log.debug("%s %s: the caller hung up", request.method, request.url.path)
        return Response(status_code=400)

    async def on_os_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            log.error("%s %s: the disk is full (%s)", request.method, request.url.path, exc)
            return error_response(Unavailable(DISK_FULL, retry_after=DISK_FULL_RETRY_S))
        return await on_error(request, exc)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/blocks/{key:path}", put_block, methods=["PUT"]),
            Route("/blocks/{key:path}", get_block, methods=["GET", "HEAD"]),
            Route("/v1/auth/token", token, methods=["POST"]),
            Route("/v1/auth/revoke", revoke, methods=["POST"]),
            Route(LONGPOLL_PATH, longpoll, methods=["POST"]),
            Route("/v1/{rest:path}", api, methods=methods),
        ],
        # by class, not only `Exception`: Starlette logs what reaches that handler a second
        # time, with its traceback, as a server error
        exception_handlers={
            TesseraError: on_error,
            ClientDisconnect: on_hang_up,
            OSError: on_os_error,
            Exception: on_error,
        },
    )


class _ThreadStart:
    """Whether a long-poll's thread started, or its caller stopped waiting first: anyio
    runs no thread for a call cancelled before its worker takes it up, so the thread's
    places, which the thread gives back, were lost, and after `LONGPOLL_THREADS` callers
    that hung up at once every long-poll was refused until a restart. Decided once, under
    a lock, by whichever comes first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "queued"

    def begin(self) -> bool:
        """The thread starts: True unless its caller had already left."""
        return self._settle("started")

    def abandon(self) -> bool:
        """The caller left: True when the thread had not started (and now never will)."""
        return self._settle("abandoned")

    def _settle(self, state: str) -> bool:
        with self._lock:
            if self._state != "queued":
                return False
            self._state = state
            return True


class _Ended(enum.Enum):
    """How a long-poll's wait ended (`_done_before_disconnect`)."""

    ANSWERED = "answered"
    CLIENT_LEFT = "client left"
    SERVER_STOPPING = "server stopping"


async def _done_before_disconnect(request: Request, work: asyncio.Future[Any]) -> _Ended:
    """Wait for `work`; unless it is done, it is cancelled when the client hangs up first or
    the server stops meanwhile: an abandoned long-poll ends quietly, not with a traceback."""
    gone = asyncio.ensure_future(_disconnected(request))
    stopping = False
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        log.debug("long-poll cancelled: the server is stopping")
        stopping = True
    finally:
        gone.cancel()
    if work.done():
        return _Ended.ANSWERED
    work.cancel()
    return _Ended.SERVER_STOPPING if stopping else _Ended.CLIENT_LEFT


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (its body was already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _file_chunks(f: BinaryIO) -> AsyncIterator[bytes]:
    """The rest of `f`, a MiB at a time, read off the event loop; closed at the end, also
    when the client hangs up."""
    try:
        while chunk := await run_in_threadpool(f.read, 1024 * 1024):
            yield chunk
    finally:
        f.close()


async def _stream(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk
