"""The Powertools resolver: parse → one domain call → JSON response, for every route.

The caller comes only from `requestContext.authorizer.claims` (`sub`, `email`), which API
Gateway's Cognito authorizer — or the local gateway, the same way — fills in after checking
the token. Errors are `{"error": {"code", "message"}}`; unknown errors are a bare 500.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from functools import cache
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ValidationError

import tessera
from tessera.api.routes import LONGPOLL_PATH, ROUTES, Route, is_longpoll
from tessera.domain.errors import TesseraError, Unauthorized, Unavailable
from tessera.domain.models import HealthResponse, RestoringResponse, dump
from tessera.domain.services import Services
from tessera.ports import Principal

log = logging.getLogger(__name__)

_JSON = "application/json"
_BACKEND_BUSY = "a storage service is busy or out of reach; retry shortly"


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response[str]:
    return Response(
        status_code=status,
        content_type=_JSON,
        body=json.dumps(body, separators=(",", ":")),
        headers=headers or {},
    )


def _error(status: int, code: str, message: str, **extra: Any) -> Response[str]:
    return _json(status, {"error": {"code": code, "message": message, **extra}})


@cache
def _openapi_text() -> str:
    # Imported here: pydantic's JSON-schema machinery is a cold-start cost (about 0.05 s of
    # import) that only this rarely asked route needs.
    from tessera.api.openapi import build_openapi

    return json.dumps(build_openapi(), separators=(",", ":"))


def principal_of(event: dict[str, Any]) -> Principal:
    """The verified caller from the authorizer's claims; 401 when there are none."""
    context = event.get("requestContext") or {}
    authorizer = context.get("authorizer") or {}
    claims = authorizer.get("claims") or {}
    sub, email = claims.get("sub"), claims.get("email")
    if not isinstance(sub, str) or not sub or not isinstance(email, str) or not email:
        raise Unauthorized("missing or invalid credentials")
    return Principal(user_id=sub, email=email)


def _parse(route: Route, event: BaseProxyEvent) -> BaseModel | None:
    """The request model of a body; 422 on malformed JSON or a body that does not fit.

    Decoding is part of parsing: a base64 body that is not UTF-8 raises `UnicodeDecodeError`
    (a `ValueError`), and JSON nested past the recursion limit `RecursionError`.
    """
    if route.request is None:
        return None
    try:
        raw = event.decoded_body
        data = json.loads(raw) if raw else {}
        # PostgreSQL text holds neither NUL nor a lone surrogate (psycopg raises: a 500),
        # and no name, id or email has one; JSON can only spell them as escapes, so only
        # such bodies are walked
        unstorable = raw is not None and _MAY_BE_UNSTORABLE.search(raw) and _unstorable(data)
    except (ValueError, RecursionError) as exc:
        raise _BodyError("the body is not valid JSON in UTF-8, or is nested too deep", []) from exc
    if unstorable:
        raise _BodyError(
            "body: text may not contain NUL characters (\\u0000)"
            " or unpaired surrogates (\\ud800-\\udfff)",
            [],
        )
    try:
        return route.request.model_validate(data)
    except ValidationError as exc:
        count = exc.error_count()
        if count > _MAX_ERRORS_READ:
            # (one object of many unknown keys: listing them all took ~600 bytes of memory
            # an error, on a body of a few bytes an error)
            raise _BodyError(f"body: {count} fields are unknown, missing or invalid", []) from None
        fields = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ][:_MAX_ERRORS_LISTED]
        first = fields[0]
        more = f" (and {count - 1} more)" if count > 1 else ""
        raise _BodyError(f"{first['field']}: {first['message']}{more}", fields) from exc


# A 422 lists the first of a body's problems; past this many, it only counts them
_MAX_ERRORS_LISTED = 20
_MAX_ERRORS_READ = 100


_MAY_BE_UNSTORABLE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")  # \u0000, \ud800-\udfff


def _unstorable(value: object) -> bool:
    """Whether any text in `value` holds NUL or a surrogate left unpaired (a pair decodes to
    one character: only a lone one stays a surrogate, and UTF-8 cannot encode it)."""
    if isinstance(value, str):
        return "\x00" in value or (not value.isascii() and not _encodable(value))
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(v) for v in value)
    return False


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _BodyError(Exception):
    def __init__(self, message: str, fields: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.message, self.fields = message, fields


def _error_response(exc: TesseraError) -> Response[str]:
    return _json(exc.status, exc.to_body(), exc.headers())


def _respond(result: BaseModel) -> Response[str]:
    if isinstance(result, RestoringResponse):
        return _json(202, dump(result), {"Retry-After": str(result.retry_after)})
    return _json(200, dump(result))


class _PerThreadResolver(APIGatewayRestResolver):
    """Powertools' REST resolver, safe to call on many threads at once, as the local
    gateway does (on Lambda one invocation runs at a time: nothing changes there).

    Powertools keeps the event being resolved on its router class (`BaseRouter
    .current_event`, shared by every resolver and thread) and the route it matched in the
    instance's `context`: a thread that took its turn between another's assignment and its
    use routed that other request, and answered one user with another's account, listing
    or block keys. Here both are the calling thread's own. And a route builds its middleware
    stack at its first call, unlocked: two first calls at once wrapped it twice, and the
    route answered 500 until a restart; here every stack is built before the first call
    (`build_middleware_stacks`)."""

    _threads = threading.local()

    def build_middleware_stacks(self) -> None:
        """Build each registered route's middleware stack now, on one thread."""
        for route in (*self._static_routes, *self._dynamic_routes):
            route._build_middleware_stack(router_middlewares=self._router_middlewares, app=self)

    def resolve(self, event: Mapping[str, Any], context: LambdaContext) -> dict[str, Any]:
        """Resolve `event` with this thread's own event and routing context."""
        self._threads.event = self._to_proxy_event(dict(event))
        self._threads.context = {}
        return super().resolve(event, context)

    @property  # type: ignore[override]
    def current_event(self) -> BaseProxyEvent:
        """The event this thread is resolving."""
        event: BaseProxyEvent = self._threads.event
        return event

    @current_event.setter
    def current_event(self, value: BaseProxyEvent) -> None:
        self._threads.event = value

    @property
    def context(self) -> dict[str, Any]:
        """This thread's routing context (Powertools' `append_context`)."""
        if not hasattr(self._threads, "context"):
            self._threads.context = {}
        found: dict[str, Any] = self._threads.context
        return found

    @context.setter
    def context(self, value: dict[str, Any]) -> None:
        self._threads.context = value


def build_resolver(services: Services, *, longpoll: bool = True) -> APIGatewayRestResolver:
    """The API app wired to `services`; `.resolve(event, context)` takes REST proxy events.

    Without `longpoll` (the api function: API Gateway routes the long-poll to a function of
    its own) the long-poll's route answers 404: the api function sees it only as a path its
    resource did not match (with a trailing slash), and waiting there would hold an api
    function, sized for quick calls, until its timeout."""
    app = _PerThreadResolver()

    def register(route: Route) -> None:
        def handler() -> Response[str]:
            event = app.current_event
            principal = principal_of(event.raw_event)
            request = _parse(route, event)
            return _respond(route.handler(services, principal, request))

        handler.__name__ = "route_" + route.path.replace("/", "_")
        app.route(route.path, method=route.method)(handler)

    for route in ROUTES:
        if longpoll or route.path != LONGPOLL_PATH:
            register(route)

    @app.get("/v1/health")
    def health() -> Response[str]:
        return _json(200, dump(HealthResponse(version=tessera.__version__)))

    @app.get("/v1/openapi.json")
    def openapi() -> Response[str]:
        return Response(status_code=200, content_type=_JSON, body=_openapi_text())

    @app.exception_handler(TesseraError)  # type: ignore[untyped-decorator]
    def tessera_error(exc: TesseraError) -> Response[str]:
        return _error_response(exc)

    @app.exception_handler(_BodyError)  # type: ignore[untyped-decorator]
    def body_error(exc: _BodyError) -> Response[str]:
        return _error(422, "invalid", exc.message, fields=exc.fields)

    @app.exception_handler(Exception)  # type: ignore[untyped-decorator]
    def unexpected(exc: Exception) -> Response[str]:
        if services.is_transient(exc):
            log.warning("backend unavailable in %s", app.current_event.path, exc_info=True)
            return _error_response(Unavailable(_BACKEND_BUSY, retry_after=2))
        log.exception("unhandled error in %s", app.current_event.path)
        return _error(500, "internal", "internal error")

    @app.not_found
    def not_found(exc: Exception) -> Response[str]:
        if is_longpoll(app.current_event.path):
            return _error(404, "not_found", f"the long-poll is POST {LONGPOLL_PATH}")
        return _error(404, "not_found", "no such route")

    app.build_middleware_stacks()
    return app
