"""`POST /v1/auth/token` (and `/v1/auth/revoke`) on AWS: an API Gateway REST proxy event →
`CognitoUsers.token` (`.revoke`) → a proxy response. The routes have no authorizer (they
are how a client gets a token), so this is the whole of their logic; the sign-in itself
lives in `CognitoUsers` (one home, shared with the local gateway's AWS mode).

Answers, as the local gateway's token endpoint does: 200 with the token body
(`Cache-Control: no-store`); 401 for a wrong email, password or refresh token; 422 for a body
that is not a JSON object (or is nested too deep); 400 for an object without
`{email, password}` or `{refresh_token}` as strings; 429 + `Retry-After` when Cognito
throttles, 503 + `Retry-After` when it fails for a while. A revoke answers 200 `{}`, also
for a token that is not one (RFC 7009), and 400 without `{"refresh_token"}`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping
from typing import Any

from tessera.adapters.aws.identity import CognitoUsers
from tessera.domain.errors import NotFound, TesseraError, Unprocessable
from tessera.ports import SignInOrigin

log = logging.getLogger(__name__)

_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}


def token_request_body(event: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object in a proxy event's body; `Unprocessable` for anything else."""
    raw = event.get("body")
    if not raw:
        raise Unprocessable("the request body must be a JSON object")
    try:
        text = base64.b64decode(raw).decode() if event.get("isBase64Encoded") else str(raw)
        body = json.loads(text)
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: nested past the parser's limit. API Gateway's request model checks
        # only a body of its content type, so a `text/plain` one reaches this function
        raise Unprocessable("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Unprocessable("the request body must be a JSON object")
    return body


def _response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {**_HEADERS, **(headers or {})},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def sign_in_origin(event: Mapping[str, Any]) -> SignInOrigin | None:
    """Where a proxy event's sign-in came from: API Gateway's `sourceIp` (the caller's
    address as the edge saw it, never a header the caller wrote), the API's host and the
    path called. None without an address (a test invocation from the console): Cognito
    refuses context data without one."""
    context = event.get("requestContext") or {}
    headers = event.get("headers") or {}
    address = (context.get("identity") or {}).get("sourceIp")
    if not address:
        return None
    return SignInOrigin.of(
        str(address),
        str(context.get("domainName") or headers.get("Host") or headers.get("host") or ""),
        str(event.get("path") or ""),
        {str(k): str(v) for k, v in headers.items()},
    )


TOKEN_PATH = "/v1/auth/token"
REVOKE_PATH = "/v1/auth/revoke"


def token_endpoint(users: CognitoUsers, event: Mapping[str, Any]) -> dict[str, Any]:
    """Answer one `POST /v1/auth/token` or `POST /v1/auth/revoke` proxy event (by its
    resource: anything else is 404, never taken for a sign-in; never raises)."""
    try:
        route = str(event.get("resource") or event.get("path") or "").rstrip("/")
        if route not in (TOKEN_PATH, REVOKE_PATH):
            raise NotFound(f"no route {route!r} here")
        body = token_request_body(event)
        answer: Mapping[str, Any] = {}
        if route == REVOKE_PATH:
            users.revoke(body)
        else:
            answer = users.token(body, sign_in_origin(event)).to_body()
    except TesseraError as exc:
        return _response(exc.status, exc.to_body(), exc.headers())
    except Exception:
        log.exception("token endpoint failed")
        return _response(500, TesseraError("internal error").to_body())
    return _response(200, answer)
