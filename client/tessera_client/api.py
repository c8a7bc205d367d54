"""Talking to the server over HTTP (httpx; block URLs on `BlockHttp`): auth, retries with
backoff, typed errors.

Every request goes through `RetryPolicy`: network errors and 5xx are retried with
exponential backoff and full jitter; 429 and 503 wait what `Retry-After` says, unless a
429 asks for longer than `RetryPolicy.max_wait`: that answer is the caller's at once. Access
tokens are refreshed transparently from the stored refresh token (on expiry or on a 401).
Commits carry idempotency keys, so retrying them is safe; so do restores, moves, deletes and
folder creations (`KEYED_ROUTES`): a retry after a lost answer gets the first answer again,
where it used to say 404 or "not deleted" about what the first attempt had done.
"""

from __future__ import annotations

import copy
import math
import random
import ssl
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, Field, ValidationError

from tessera_client.blockhttp import BlockHttp
from tessera_client.config import Home, Tokens

RETRY_STATUSES = {500, 502, 503, 504, 429}
# Writes `Api.call` gives a fresh idempotency key, sent again with each retry of the call
KEYED_ROUTES = frozenset({"/v1/restore", "/v1/move", "/v1/delete", "/v1/create_folder"})
# Seconds a route goes without an optional field its server refused (a server from before
# it: idempotency keys, a move's guard, a download's held blocks) before a call tries again
REFUSED_FIELD_RECHECK_S = 3600.0
_now = time.monotonic  # the clock of that wait (a test's own)


# The code of an error answer that is not the server's own `{"error": {...}}` body (a
# proxy's or firewall's page).
FOREIGN_ERROR = "http_error"
# The code of an answer that does not fit what was asked (`parse`): a bug, a lie, or not
# a Tessera server at all
MALFORMED_RESPONSE = "malformed_response"


class ApiError(Exception):
    """An error answer from the server (`{"error": {"code", "message"}}`)."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details

    @property
    def refused(self) -> bool:
        """Whether the server judged the request itself (a 4xx of its own making, not a
        timeout or a rate limit): sent again unchanged, it meets the same answer. Anything
        else (5xx, 408, 429, a proxy's page) may pass on a later try."""
        return (
            400 <= self.status < 500
            and self.status not in (408, 429)
            and self.code != FOREIGN_ERROR
        )


M = TypeVar("M", bound=BaseModel)
A = TypeVar("A")
B = TypeVar("B")


def json_body(response: httpx.Response) -> Any:
    """The JSON of a successful answer; one that is not JSON is an `ApiError` (see `parse`)."""
    try:
        return response.json()
    except (ValueError, RecursionError):  # (nested past the parser's limit: it ended the daemon)
        raise ApiError(
            502, MALFORMED_RESPONSE, f"the server's answer to {response.url.path} is not JSON", {}
        ) from None


def parse(model: type[M], answer: Any) -> M:
    """`answer` read as a `model`, ignoring fields the model does not know: a newer server
    adds fields, and an older client must go on reading what it knows (the shared models
    refuse unknown fields, which is right for the requests the server reads). An answer that
    still does not fit (a server bug, a lying server, a changed shape) is an `ApiError` like
    a refused request, so the step that asked fails alone and the round, or the daemon,
    goes on."""
    try:
        return model.model_validate(answer)
    except ValidationError as e:
        errors = e.errors()
    if all(error["type"] == "extra_forbidden" for error in errors):
        try:
            return model.model_validate(_without(answer, [error["loc"] for error in errors]))
        except ValidationError as e:
            errors = e.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "the top level"
    raise ApiError(
        502,
        MALFORMED_RESPONSE,
        f"the server's {model.__name__} does not fit at {where}: {first['msg']}",
        {},
    ) from None


def paired(asked: Sequence[A], answered: Sequence[B], what: str) -> list[tuple[A, B]]:
    """Each thing asked for with its answer, in order. An answer list of another length (a
    server bug or a lie) is an `ApiError` like any answer that does not fit, not a crash."""
    if len(asked) != len(answered):
        raise ApiError(
            502,
            MALFORMED_RESPONSE,
            f"the server answered {len(answered)} {what} for the {len(asked)} asked for",
            {},
        )
    return list(zip(asked, answered, strict=True))


def _without(answer: Any, locations: list[tuple[int | str, ...]]) -> Any:
    """A copy of `answer` without the fields at `locations` (pydantic error locations: keys
    and list indexes, and the tags of tagged unions, which name no key and are stepped
    over)."""
    stripped = copy.deepcopy(answer)
    for location in locations:
        node = stripped
        for part in location[:-1]:
            inside = (isinstance(node, dict) and part in node) or (
                isinstance(node, list) and isinstance(part, int) and part < len(node)
            )
            if inside:
                node = node[part]
        if isinstance(node, dict):
            node.pop(location[-1], None)
    return stripped


class TokenAnswer(BaseModel):
    """What `POST /v1/auth/token` answers (the fields the client uses)."""

    access_token: str = Field(min_length=1)
    refresh_token: str = Field(min_length=1)
    expires_in: float = Field(default=300, gt=0, allow_inf_nan=False)


class ListPage(BaseModel):
    """A page of `/v1/list_folder(/continue)`: its entries are read one by one (one that
    does not fit is left out, the listing goes on), the page itself must fit."""

    entries: list[Any]
    cursor: str = Field(min_length=1)
    has_more: bool = False


#: Pages in a row without an entry a listing may send: a listing moves on with entries.
#: Empty pages without end, each under a new cursor, had a pull (and the daemon's stop
#: with it) ask for the next for ever.
MAX_EMPTY_PAGES = 1000


def list_pages(api: Api, first: Any) -> Iterator[ListPage]:
    """The pages of a listing, from the answer to its first call on (`/v1/list_folder`, or
    a `continue`), each next one asked with the page's cursor. A listing that does not move
    on (a page with more to come under the cursor it was asked with, or `MAX_EMPTY_PAGES`
    empty pages in a row) is a malformed answer (`ApiError`); a stop (`RetryPolicy.stop`)
    ends it between pages (`RetriesStopped`)."""
    page = parse(ListPage, first)
    empty = 0
    while True:
        yield page
        if not page.has_more:
            return
        empty = 0 if page.entries else empty + 1
        if empty >= MAX_EMPTY_PAGES:
            raise ApiError(
                502, MALFORMED_RESPONSE, "the server's listing sends empty pages without end", {}
            )
        if api.policy.stop.is_set():
            raise RetriesStopped("stopping: the listing was not read to its end")
        following = parse(ListPage, api.call("/v1/list_folder/continue", {"cursor": page.cursor}))
        if following.has_more and following.cursor == page.cursor:
            raise ApiError(502, MALFORMED_RESPONSE, "the server's listing does not move on", {})
        page = following


class NotLoggedIn(Exception):
    """No credentials on this device."""


class ServerUnreachable(Exception):
    """The server could not be reached after every retry."""


class RetriesStopped(ServerUnreachable):
    """A call gave up its retries because its process is stopping (`RetryPolicy.stop`)."""


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter; honours Retry-After up to `max_wait`.

    Setting `stop` (the daemon told to stop, Ctrl-C) ends every wait between retries at
    once, with `RetriesStopped`: a download on another thread waiting out an outage's
    backoff had held the exit for minutes (a 503's Retry-After is waited up to `max_wait`).
    """

    attempts: int = 8
    base: float = 0.2
    cap: float = 10.0
    max_wait: float = 120.0
    sleep: Callable[[float], None] | None = None  # (a test's own clock; else `stop.wait`)
    rng: random.Random = field(default_factory=random.Random)
    stop: threading.Event = field(default_factory=threading.Event)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """How long to wait before retry number `attempt` (0-based)."""
        if retry_after is not None and math.isfinite(retry_after):
            return min(max(retry_after, 0.0), self.max_wait)
        return self.rng.uniform(0, min(self.cap, self.base * 2**attempt))

    def pause(self, seconds: float) -> None:
        """Wait before a retry; `RetriesStopped` once `stop` is set."""
        if self.sleep is not None:
            self.sleep(seconds)
        else:
            self.stop.wait(seconds)
        if self.stop.is_set():
            raise RetriesStopped("stopping: the call was not retried")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


def send_with_retry(
    client: httpx.Client | BlockHttp | BoundedAnswers,
    policy: RetryPolicy,
    method: str,
    url: str,
    *,
    retry_statuses: set[int] = RETRY_STATUSES,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request, retrying transient failures; the last response (or error) wins."""
    for attempt in range(policy.attempts):
        last = attempt == policy.attempts - 1
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError as e:
            if last:
                where = urllib.parse.urlsplit(url)  # (not a block URL's key: its hash)
                raise ServerUnreachable(f"cannot reach {where.scheme}://{where.netloc}: {e}") from e
            policy.pause(policy.delay(attempt, None))
            continue
        wait = parse_retry_after(response.headers.get("Retry-After"))
        # A 429 asking for a longer wait than a call may hold its caller (an hourly budget
        # spent) is the caller's to handle, where sleeping `max_wait` eight times ignored
        # it anyway. A 503's is an outage: waited out as before, not retried every round.
        too_long = response.status_code == 429 and wait is not None and wait > policy.max_wait
        if response.status_code not in retry_statuses or last or too_long:
            return response
        policy.pause(policy.delay(attempt, wait))
    raise AssertionError("unreachable")


#: The most an API answer may hold, decoded: a page of the largest listing or download is a
#: few MiB. Past it, it is no answer of a Tessera server (a body without end, a gzip bomb).
MAX_ANSWER_BYTES = 64 * 1024 * 1024
#: Seconds an answer is read for before a stop gives it up: one that comes at once is read
#: whole (a commit's, recorded), one still trickling in is not waited for
STOP_GRACE_S = 1.0


class BoundedAnswers:
    """`request` as `httpx.Client.request`'s for API calls, each answer read whole within
    bounds: at most `MAX_ANSWER_BYTES` decoded, and within the call's timeout in all
    (httpx's bounds each read: a server sending a byte a minute held a round, and the
    daemon's stop, for ever), given up once `stopping()` past `STOP_GRACE_S`. An answer
    that cannot be decoded (a false `Content-Encoding`) is a malformed one; its
    `DecodingError` had ended the daemon."""

    def __init__(
        self,
        client: Callable[[], httpx.Client],
        *,
        timeout: float,
        stopping: Callable[[], bool],
    ) -> None:
        """`client`: the httpx client to send with, asked at each request (its owner may
        replace it)."""
        self._client, self._timeout, self._stopping = client, timeout, stopping

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send one request and read its answer (see the class)."""
        within = kwargs.get("timeout") or self._timeout
        where = urllib.parse.urlsplit(url).path
        body = bytearray()
        with self._client().stream(method, url, **kwargs) as answer:
            # from the answer's head on: sending the request and the server's work are
            # bounded by httpx's own timeouts (a commit the server took 2 s over, answered
            # after a stop, is still read and recorded)
            started = time.monotonic()
            deadline = started + within
            try:
                for chunk in answer.iter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise ApiError(
                            502,
                            MALFORMED_RESPONSE,
                            f"the server's answer to {where} is over"
                            f" {MAX_ANSWER_BYTES // 2**20} MiB",
                            {},
                        )
                    if self._stopping() and time.monotonic() - started > STOP_GRACE_S:
                        raise RetriesStopped("stopping: the answer was not waited for")
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout(
                            f"the answer to {where} took over {within:g} s",
                            request=answer.request,
                        )
            except httpx.DecodingError as e:
                raise ApiError(
                    502,
                    MALFORMED_RESPONSE,
                    f"the server's answer to {where} cannot be read: {e}",
                    {},
                ) from None
        # decoded above: the copy claims no encoding, nor the length of the encoded body
        headers = [
            (name, value)
            for name, value in answer.headers.multi_items()
            if name.lower() not in ("content-encoding", "content-length")
        ]
        return httpx.Response(
            answer.status_code, headers=headers, content=bytes(body), request=answer.request
        )


def error_from(response: httpx.Response) -> ApiError:
    """The ApiError an error response stands for."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        body = {}
    err = body.get("error", {}) if isinstance(body, dict) else {}
    if not isinstance(err, dict):
        err = {}
    code = str(err.get("code", FOREIGN_ERROR))
    message = str(err.get("message", response.reason_phrase or "error"))
    details = {k: v for k, v in err.items() if k not in ("code", "message")}
    return ApiError(response.status_code, code, message, details)


def refuses_field(error: ApiError, field: str) -> bool:
    """Whether the server refused a request for its `field`: one the client always sends
    well formed, so a server that judges it at all is from before it (and the request is
    sent again without it)."""
    fields = error.details.get("fields")
    return (
        error.status == 422
        and error.code == "invalid"
        and isinstance(fields, list)
        and any(isinstance(f, dict) and f.get("field") == field for f in fields)
    )


def _server_trust(base: str, proxies: Mapping[str, str]) -> ssl.SSLContext | bool:
    """What the API client verifies TLS with: the default trust store, unless the server
    is plain http and reached without a proxy (`proxies`: the environment's), when no TLS
    can happen at all. Loading the store (certifi's bundle) was 50-60 ms of every command's
    start. In its place a context that verifies and trusts nothing: if TLS were ever
    attempted, it would fail closed. (`BlockHttp` sends proxied block URLs through this
    client, so with any proxy it keeps the store; direct ones load it when they need it.)"""
    if base.startswith("http://") and not proxies:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return True


class Api:
    """The Tessera API for one device: base URL + credentials from its home."""

    def __init__(
        self,
        server_url: str,
        home: Home,
        *,
        policy: RetryPolicy | None = None,
        timeout: float = 60.0,
        pool_size: int = 16,
    ) -> None:
        self.base = server_url.rstrip("/")
        self.home = home
        self.policy = policy or RetryPolicy()
        limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
        proxies = urllib.request.getproxies_environment()  # read once, as httpx does
        verify = _server_trust(self.base, proxies)
        self.http = httpx.Client(timeout=timeout, limits=limits, verify=verify)
        self.api_http = BoundedAnswers(
            lambda: self.http, timeout=timeout, stopping=lambda: self.policy.stop.is_set()
        )
        self.blocks = BlockHttp(self.http, timeout=timeout, proxies=proxies)  # block URLs
        self._lock = threading.Lock()
        self._tokens: Tokens | None = home.load_tokens()
        # (route, optional field) this server refused, and when that was learnt (monotonic)
        self._refused: dict[tuple[str, str], float] = {}

    def stop(self) -> None:
        """The process is stopping: every wait between retries ends (`RetryPolicy.stop`),
        and so do block transfers in flight (`BlockHttp.abort`): Ctrl-C in `get`, or a
        daemon's stop, had waited for a block from a slow store for up to 15 minutes."""
        self.policy.stop.set()
        self.blocks.abort()

    def close(self) -> None:
        """Close the connection pools."""
        self.blocks.close()
        self.http.close()

    # -- auth ---------------------------------------------------------------------------

    def login(self, email: str, password: str) -> Tokens:
        """Exchange email + password for tokens and store them."""
        return self._token_request({"email": email, "password": password})

    def revoke(self) -> None:
        """Sign this device's session out on the server: its refresh token stops working
        (the access token lives out its hour). Raises ApiError, ServerUnreachable."""
        tokens = self._tokens
        if tokens is None:
            return
        response = send_with_retry(
            self.api_http,
            self.policy,
            "POST",
            self.base + "/v1/auth/revoke",
            json={"refresh_token": tokens.refresh_token},
        )
        if response.status_code != 200:
            raise error_from(response)

    def _token_request(self, body: dict[str, str]) -> Tokens:
        response = send_with_retry(
            self.api_http, self.policy, "POST", self.base + "/v1/auth/token", json=body
        )
        if response.status_code != 200:
            raise error_from(response)
        answer = parse(TokenAnswer, json_body(response))
        tokens = Tokens(
            refresh_token=answer.refresh_token,
            access_token=answer.access_token,
            expires_at=time.time() + answer.expires_in,
        )
        self.home.save_tokens(tokens)
        self._tokens = tokens
        return tokens

    def _access_token(self, force_refresh: bool = False) -> str:
        with self._lock:
            tokens = self._tokens
            if tokens is None:
                raise NotLoggedIn("this device is not logged in; run `tessera login`")
            if force_refresh or not tokens.access_token or tokens.expires_at - 30 < time.time():
                try:
                    tokens = self._token_request({"refresh_token": tokens.refresh_token})
                except ApiError as e:
                    # the server's own refusal; a firewall's or proxy's 403 page (a rate
                    # rule) says nothing of the refresh token, and passes
                    if e.refused and e.status in (400, 401, 403):
                        raise NotLoggedIn(
                            "your session has expired; run `tessera login` again"
                        ) from e
                    raise
            return tokens.access_token

    # -- calls --------------------------------------------------------------------------

    def raw(
        self,
        method: str,
        route: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        """An authenticated call; a 401 refreshes the token once and retries. `timeout`:
        this call's own, in seconds, where it may take longer than others (a long-poll).
        Without `retry`, one attempt (a notice that may wait for the next time)."""
        url = self.base + route
        own: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        policy = self.policy if retry else replace(self.policy, attempts=1)
        for refresh in (False, True):
            headers = {"Authorization": f"Bearer {self._access_token(force_refresh=refresh)}"}
            response = send_with_retry(
                self.api_http, policy, method, url, json=body, headers=headers, **own
            )
            if response.status_code != 401:
                return response
        return response

    def send(
        self,
        method: str,
        route: str,
        body: dict[str, Any],
        *,
        optional: Sequence[str] = (),
        timeout: float | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        """`raw`, where `body`'s `optional` fields are ones a server from before them
        refuses (422 naming the field, nothing done): the call is sent again without it,
        and later calls to the route go without it, so a new client keeps working against
        a server not yet upgraded. After `REFUSED_FIELD_RECHECK_S` a call tries the field
        again (a daemon outlives the upgrade)."""
        now = _now()
        dropped = {name for name in optional if not self.takes(route, name)}
        while True:
            sent = {k: v for k, v in body.items() if k not in dropped}
            response = self.raw(method, route, sent, timeout=timeout, retry=retry)
            refused = (
                [f for f in optional if f in sent and refuses_field(error_from(response), f)]
                if response.status_code == 422
                else []
            )
            if not refused:
                break
            for name in refused:
                self._refused[(route, name)] = now
            dropped.update(refused)
        for name in optional:
            if name in sent:
                self._refused.pop((route, name), None)
        return response

    def takes(self, route: str, field: str) -> bool:
        """Whether calls to `route` carry the optional `field` now (`send`)."""
        learnt = self._refused.get((route, field))
        return learnt is None or _now() - learnt >= REFUSED_FIELD_RECHECK_S

    def call(
        self,
        route: str,
        body: dict[str, Any] | None = None,
        method: str = "POST",
        *,
        optional: Sequence[str] = (),
        timeout: float | None = None,
        retry: bool = True,
    ) -> Any:
        """An authenticated JSON call; an error answer raises ApiError. A call to one of
        `KEYED_ROUTES` carries an idempotency key of its own unless `body` has one: an
        optional field (`send`), as are `optional`. `timeout` and `retry` as `raw`'s."""
        if method == "GET" or body is None:
            shown = None if method == "GET" else body
            response = self.raw(method, route, shown, timeout=timeout, retry=retry)
        elif route in KEYED_ROUTES and "idempotency_key" not in body:
            keyed = {**body, "idempotency_key": uuid.uuid4().hex}
            optional = (*optional, "idempotency_key")
            response = self.send(
                method, route, keyed, optional=optional, timeout=timeout, retry=retry
            )
        else:
            response = self.send(
                method, route, body, optional=optional, timeout=timeout, retry=retry
            )
        if response.status_code >= 400:
            raise error_from(response)
        return json_body(response)

    def transfer(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None = None
    ) -> httpx.Response:
        """A request to a presigned block URL (no bearer token), with retries."""
        return send_with_retry(
            self.blocks, self.policy, method, url, headers=headers, content=content
        )


def sign_in(
    home: Home, server_url: str, email: str, password: str, device: str | None = None
) -> dict[str, Any]:
    """`tessera login`: store this device's tokens, provision the account, then save the
    settings (server, email, and `device` as the device name when given); the account."""
    settings = home.load_settings()
    settings.server_url, settings.email = server_url.rstrip("/"), email
    if device:
        settings.device_name = device
    api = Api(settings.server_url, home, policy=RetryPolicy(attempts=2))  # (someone waits)
    try:
        api.login(email, password)
        account: dict[str, Any] = api.call("/v1/account", method="GET")  # also provisions
    finally:
        api.close()
    home.save_settings(settings)
    return account
