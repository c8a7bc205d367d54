"""The gateway's authorizer and token endpoint, over real HTTP and real PostgreSQL.

The API behind the gateway is a stand-in resolver that echoes the event it receives, so
these tests see exactly what API Gateway's Cognito authorizer would hand to the Lambda.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tessera.adapters.local import (
    FilesystemBlockStore,
    JwtIssuer,
    LocalIdentity,
    LocalUsers,
)
from tessera.local.gateway import Gateway, create_app
from tessera.local.postgres import drop_database, ensure_database
from tessera.local.server import Server
from tessera.metadata import migrate
from tessera.ports import Principal

PASSWORD = "correct horse battery"


class EchoResolver:
    """Stand-in for the API: answers with the proxy event it was given."""

    def resolve(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {
            "statusCode": 200,
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"event": event, "request_id": context.aws_request_id}),
            "isBase64Encoded": False,
        }


@dataclass
class Env:
    url: str
    issuer: JwtIssuer
    principal: Principal
    state: Path
    database: str


@pytest.fixture(scope="module")
def database(postgres_url: str) -> Iterator[str]:
    """One migrated database for the module (the gateway under test only reads users)."""
    name = f"t_gw_{uuid.uuid4().hex[:12]}"
    url = ensure_database(postgres_url, name)
    migrate(url)
    yield url
    drop_database(postgres_url, name)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Env]:
    tmp_path = tmp_path_factory.mktemp("gateway")
    users = LocalUsers(database)
    principal = users.add("Alice@Example.com", PASSWORD)
    issuer = JwtIssuer(tmp_path / "jwt.pem")
    server = Server()
    store = FilesystemBlockStore(tmp_path / "blocks", server.base_url, secrets.token_bytes(32))
    gateway = Gateway(
        block_store=store,
        identity=issuer,
        token_endpoint=LocalIdentity(users, issuer),
        resolver=EchoResolver(),
        max_body=1024 * 1024,
    )
    server.start(create_app(gateway))
    try:
        yield Env(server.base_url, issuer, principal, tmp_path, database)
    finally:
        server.stop()


def _call(env: Env, token: str | None, path: str = "/v1/account") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(env.url + path, json={"x": 1}, headers=headers)


def _login(env: Env, email: str = "alice@example.com", password: str = PASSWORD) -> httpx.Response:
    return httpx.post(env.url + "/v1/auth/token", json={"email": email, "password": password})


def test_password_grant_and_claims_reach_the_api(env: Env) -> None:
    r = _login(env, email="ALICE@example.COM")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    r = _call(env, body["access_token"], "/v1/list_folder?limit=3")
    assert r.status_code == 200, r.text
    event = r.json()["event"]
    assert event["requestContext"]["authorizer"]["claims"] == {
        "sub": env.principal.user_id,
        "email": "alice@example.com",
    }
    assert event["path"] == "/v1/list_folder"
    assert event["httpMethod"] == "POST"
    assert event["queryStringParameters"] == {"limit": "3"}
    assert json.loads(event["body"]) == {"x": 1}
    assert event["isBase64Encoded"] is False
    assert event["requestContext"]["requestId"] == r.json()["request_id"]


def test_refresh_grant(env: Env) -> None:
    pair = _login(env).json()
    r = httpx.post(env.url + "/v1/auth/token", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 200, r.text
    assert _call(env, r.json()["access_token"]).status_code == 200
    # an access token is not a refresh token
    r = httpx.post(env.url + "/v1/auth/token", json={"refresh_token": pair["access_token"]})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("email", "password"),
    [("alice@example.com", "wrong password"), ("nobody@example.com", PASSWORD), ("", "")],
)
def test_bad_credentials(env: Env, email: str, password: str) -> None:
    r = _login(env, email, password)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert "access_token" not in r.text


def test_token_endpoint_rejects_malformed_bodies(env: Env) -> None:
    r = httpx.post(env.url + "/v1/auth/token", content=b"{not json")
    assert r.status_code == 422
    r = httpx.post(env.url + "/v1/auth/token", json={"email": "a@b.c"})
    assert r.status_code == 400


def _forge(env: Env, **claims: Any) -> str:
    """A token for the real user signed by `env.issuer`'s key with claims overridden."""
    base = jwt.decode(
        env.issuer.issue(env.principal).access_token, options={"verify_signature": False}
    )
    base.update(claims)
    return jwt.encode(base, env.issuer._private, algorithm="ES256")


def _bad_tokens(env: Env) -> dict[str, str]:
    other = JwtIssuer(env.state / "other.pem")
    good = env.issuer.issue(env.principal).access_token
    header, payload, sig = good.split(".")
    # PyJWT's "none" algorithm treats the key "" as no key (its typed signature has no None)
    none_alg = jwt.encode(
        jwt.decode(good, options={"verify_signature": False}), key="", algorithm="none"
    )
    return {
        "forged-key": other.issue(env.principal).access_token,
        "expired": _forge(env, exp=1_000_000_000, iat=999_999_000),
        "wrong-audience": _forge(env, aud="someone-else"),
        "wrong-issuer": _forge(env, iss="https://evil.example"),
        "refresh-as-access": env.issuer.issue(env.principal).refresh_token,
        "tampered-payload": f"{header}.{payload[:-4]}AAAA.{sig}",
        "alg-none": none_alg,
        "garbage": "not-a-jwt",
    }


@pytest.mark.parametrize(
    "kind",
    [
        "forged-key",
        "expired",
        "wrong-audience",
        "wrong-issuer",
        "refresh-as-access",
        "tampered-payload",
        "alg-none",
        "garbage",
    ],
)
def test_bad_tokens_get_401(env: Env, kind: str) -> None:
    r = _call(env, _bad_tokens(env)[kind])
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer ,"])
def test_missing_token_gets_401(env: Env, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = httpx.post(env.url + "/v1/commit", json={}, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"


def test_public_routes_need_no_token(env: Env) -> None:
    r = httpx.get(env.url + "/v1/health")
    assert r.status_code == 200
    assert r.json()["event"]["requestContext"]["authorizer"] == {}
    assert httpx.get(env.url + "/v1/openapi.json").status_code == 200


def test_body_size_limit(env: Env) -> None:
    token = _login(env).json()["access_token"]
    r = httpx.post(
        env.url + "/v1/commit",
        content=b"x" * (1024 * 1024 + 1),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"


def test_binary_body_is_base64(env: Env) -> None:
    token = _login(env).json()["access_token"]
    r = httpx.post(
        env.url + "/v1/commit",
        content=b"\xff\x00\x01",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
    )
    event = r.json()["event"]
    assert event["isBase64Encoded"] is True
    assert event["body"] == "/wAB"


def test_password_guessing_is_throttled(env: Env) -> None:
    email = "target@example.com"
    LocalUsers(env.database).add(email, PASSWORD)
    for _ in range(5):
        assert _login(env, email, "guess " * 3).status_code == 401
    r = _login(env, email.upper(), PASSWORD)  # locked out, even with the right password
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert _login(env).status_code == 200  # other users are not affected


def test_api_requests_are_throttled_per_user_with_retry_after(env: Env) -> None:
    """Like API Gateway's stage throttling: 429 in the API's error shape, with Retry-After;
    another user and the public routes are not affected."""
    from tessera.local.throttle import RequestThrottle

    server = Server()
    gateway = Gateway(
        identity=env.issuer,
        resolver=EchoResolver(),
        throttle=RequestThrottle(rate=0.01, burst=2),
    )
    server.start(create_app(gateway))
    try:
        alice = env.issuer.issue(env.principal).access_token
        bob = env.issuer.issue(Principal(str(uuid.uuid4()), "bob@example.com")).access_token
        calls = [httpx.post(server.base_url + "/v1/account", json={}, headers={
            "Authorization": f"Bearer {alice}"}) for _ in range(3)]  # fmt: skip
        assert [r.status_code for r in calls] == [200, 200, 429]
        assert calls[2].json()["error"]["code"] == "rate_limited"
        assert int(calls[2].headers["retry-after"]) >= 1
        other = httpx.post(server.base_url + "/v1/account", json={},
                           headers={"Authorization": f"Bearer {bob}"})  # fmt: skip
        assert other.status_code == 200
        assert httpx.get(server.base_url + "/v1/health").status_code == 200
    finally:
        server.stop()
