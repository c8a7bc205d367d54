"""The gateway's authorizer and token endpoint, over real HTTP and real PostgreSQL.

The API behind the gateway is a stand-in resolver that echoes the event it receives, so
these tests see exactly what API Gateway's Cognito authorizer would hand to the Lambda.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import httpx
import jwt
import pytest
from argon2 import PasswordHasher

from tessera.adapters.local import (
    FilesystemBlockStore,
    JwtIssuer,
    LocalIdentity,
    LocalUsers,
)
from tessera.local.gateway import MAX_API_BODY, Gateway, create_app
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
    # failed sign-ins have a user of their own: counted against alice, who the module's
    # other tests sign in as, a few more would lock her out (5 a minute) mid-module
    users.add("Wrong@Example.com", PASSWORD)
    issuer = JwtIssuer(tmp_path / "jwt.pem")
    server = Server()
    store = FilesystemBlockStore(tmp_path / "blocks", server.base_url, secrets.token_bytes(32))
    gateway = Gateway(
        block_store=store,
        identity=issuer,
        token_endpoint=LocalIdentity(users, issuer),
        resolver=EchoResolver(),
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
    # the same refresh token back, as Cognito answers: a session ends 30 days after its
    # sign-in, however often it refreshes (a new one each time never ended)
    assert r.json()["refresh_token"] == pair["refresh_token"]
    # an access token is not a refresh token
    r = httpx.post(env.url + "/v1/auth/token", json={"refresh_token": pair["access_token"]})
    assert r.status_code == 401


def test_a_signed_out_session_refreshes_no_more(env: Env) -> None:
    """`tessera logout` only deleted the device's tokens: a stolen refresh token kept
    working for its 30 days, and nothing could end it short of a new signing key."""
    pair, other = _login(env).json(), _login(env).json()
    revoke = env.url + "/v1/auth/revoke"
    r = httpx.post(revoke, json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 200 and r.json() == {}
    assert r.headers["Cache-Control"] == "no-store"
    r = httpx.post(env.url + "/v1/auth/token", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 401 and "signed out" in r.json()["error"]["message"]
    # the session's access token lives out its hour, as Cognito's do; other sessions go on
    assert _call(env, pair["access_token"]).status_code == 200
    r = httpx.post(env.url + "/v1/auth/token", json={"refresh_token": other["refresh_token"]})
    assert r.status_code == 200
    # twice, or a token that is none: nothing to sign out, and no error (RFC 7009)
    for token in (pair["refresh_token"], "not-a-token", pair["access_token"]):
        assert httpx.post(revoke, json={"refresh_token": token}).status_code == 200
    for body in ({}, {"refresh_token": 5}, {"refresh_token": ""}):
        assert httpx.post(revoke, json=body).status_code == 400
    assert httpx.post(revoke, content=b"[").status_code == 422


@pytest.mark.parametrize(
    ("email", "password"),
    [("wrong@example.com", "wrong password"), ("nobody@example.com", PASSWORD), ("", "")],
)
def test_bad_credentials(env: Env, email: str, password: str) -> None:
    r = _login(env, email, password)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert "access_token" not in r.text


def test_token_endpoint_rejects_malformed_bodies(env: Env) -> None:
    for body in (b"{not json", b"[" * 50_000, b"\xff"):
        r = httpx.post(env.url + "/v1/auth/token", content=body)
        assert r.status_code == 422, r.text
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
    # which check failed, in PyJWT's words, is nothing to tell a prober
    expected = "the token has expired" if kind == "expired" else "invalid token"
    assert r.json()["error"]["message"] == expected
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


def test_public_routes_take_no_large_body(env: Env) -> None:
    """Without a token, nobody gets to make the gateway hold the API's body limit."""
    r = httpx.post(env.url + "/v1/health", content=b"x" * (64 * 1024))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"


def test_body_size_limit(env: Env) -> None:
    """An API body is held to what Lambda takes on AWS (it had been 16 MiB here: parsed
    whole, ~350 MB a request)."""
    token = _login(env).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    r = httpx.post(env.url + "/v1/commit", content=b"x" * (MAX_API_BODY + 1), headers=headers)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"
    r = httpx.post(env.url + "/v1/commit", content=b" " * MAX_API_BODY + b"{}", headers=headers)
    assert r.status_code == 413
    r = httpx.post(
        env.url + "/v1/commit", content=b" " * (MAX_API_BODY - 2) + b"{}", headers=headers
    )
    assert r.status_code == 200, r.text


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


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"email": "a" * 250 + "@example.com", "password": PASSWORD}, 422),
        ({"email": "alice@example.com", "password": "x" * 1025}, 401),
        (b'{"email": "alice@example.com", "password": "\\ud800"}', 401),
        (b'{"email": "\\ud800@example.com", "password": "guess guess"}', 401),
        (b'{"email": "a\\u0000@example.com", "password": "guess guess"}', 401),
    ],
    ids=["long-email", "long-password", "surrogate-password", "surrogate-email", "nul-email"],
)
def test_unusable_credentials_get_a_clear_error_not_a_500(
    env: Env, body: dict[str, str] | bytes, status: int
) -> None:
    """Over-long ones are refused before any hashing; a lone surrogate (no UTF-8 form)
    reached argon2 or PostgreSQL and failed there."""
    if isinstance(body, bytes):
        r = httpx.post(env.url + "/v1/auth/token", content=body)
    else:
        r = httpx.post(env.url + "/v1/auth/token", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == ("invalid" if status == 422 else "unauthorized")


def test_concurrent_sign_ins_check_a_few_passwords_at_a_time(env: Env) -> None:
    """Each argon2id check takes 64 MiB: sign-ins for made-up addresses (no lockout applies)
    wait for one of `hash_slots`, and get 429 + Retry-After when none frees up soon."""
    users = LocalUsers(env.database, hash_slots=2, hash_wait_s=0.05)
    lock = threading.Lock()
    running, peak = 0, 0

    class SlowHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            try:
                time.sleep(0.2)
                return super().verify(hash, password)
            finally:
                with lock:
                    running -= 1

    server = Server()
    server.start(create_app(Gateway(token_endpoint=LocalIdentity(users, env.issuer))))
    try:
        with mock.patch.object(users, "_hasher", SlowHasher()):

            def sign_in(_: int) -> httpx.Response:
                email = f"{uuid.uuid4().hex}@example.com"
                return httpx.post(
                    server.base_url + "/v1/auth/token", json={"email": email, "password": "x"}
                )

            with ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(sign_in, range(8)))
    finally:
        server.stop()
    assert peak <= 2
    assert {r.status_code for r in responses} == {401, 429}
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.headers["retry-after"] == "1" for r in refused)
    assert refused[0].json()["error"]["code"] == "rate_limited"


def test_a_flood_of_sign_ins_leaves_the_api_its_threads(env: Env) -> None:
    """Sign-ins waiting for a password-check slot held threads of the pool every API call
    runs on: forty of them and the API stopped answering. They now run on threads of
    their own (`SIGN_IN_THREADS`), and a sign-in finding them all busy gets 429 at once."""
    users = LocalUsers(env.database, hash_slots=1, hash_wait_s=30)
    release = threading.Event()
    hashing = threading.Event()

    class StuckHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            hashing.set()
            release.wait(30)
            return super().verify(hash, password)

    gateway = Gateway(
        identity=env.issuer,
        token_endpoint=LocalIdentity(users, env.issuer),
        resolver=EchoResolver(),
    )
    server = Server()
    server.start(create_app(gateway))
    token = env.issuer.issue(env.principal).access_token

    def sign_in(_: int) -> int:
        body = {"email": f"{uuid.uuid4().hex}@example.com", "password": "guess guess"}
        return httpx.post(server.base_url + "/v1/auth/token", json=body, timeout=60).status_code

    try:
        with mock.patch.object(users, "_hasher", StuckHasher()), ThreadPoolExecutor(60) as pool:
            flood = [pool.submit(sign_in, n) for n in range(60)]
            assert hashing.wait(10)
            time.sleep(0.5)  # the rest of the flood arrives
            answer = httpx.post(
                server.base_url + "/v1/account",
                json={},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
            release.set()
            statuses = [f.result() for f in flood]
    finally:
        release.set()
        server.stop()
    assert set(statuses) == {401, 429}


def test_sign_ins_are_throttled_per_address(env: Env) -> None:
    from tessera.local.throttle import RequestThrottle

    gateway = Gateway(
        token_endpoint=LocalIdentity(LocalUsers(env.database), env.issuer),
        sign_in_throttle=RequestThrottle(rate=0.01, burst=2),
    )
    server = Server()
    server.start(create_app(gateway))
    try:
        body = {"email": "alice@example.com", "password": PASSWORD}
        # a made-up X-Forwarded-For each time: it had been taken as the caller's address,
        # a fresh bucket per value
        answers = [
            httpx.post(
                server.base_url + "/v1/auth/token",
                json=body,
                headers={"X-Forwarded-For": f"10.0.0.{n}"},
            )
            for n in range(3)
        ]
    finally:
        server.stop()
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["error"]["code"] == "rate_limited"
    assert int(answers[2].headers["retry-after"]) >= 1


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


def test_a_gateway_bug_is_logged_with_its_traceback_and_answered_bare(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    token = env.issuer.issue(env.principal).access_token
    boom = RuntimeError("secret internals: password=hunter2")
    with (
        mock.patch.object(EchoResolver, "resolve", side_effect=boom),
        caplog.at_level("ERROR", logger="tessera.local.gateway"),
    ):
        r = _call(env, token)
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal", "message": "internal error"}}
    logged = [rec for rec in caplog.records if rec.name == "tessera.local.gateway"]
    assert logged and "POST /v1/account" in logged[0].getMessage()
    assert logged[0].exc_info is not None and logged[0].exc_info[1] is boom


def test_a_sign_in_during_a_database_outage_is_503_not_500(env: Env) -> None:
    users = LocalUsers("postgresql://tessera@127.0.0.1:1/none?connect_timeout=1")
    server = Server()
    server.start(create_app(Gateway(token_endpoint=LocalIdentity(users, env.issuer))))
    try:
        r = httpx.post(
            server.base_url + "/v1/auth/token", json={"email": "a@b.c", "password": PASSWORD}
        )
    finally:
        server.stop()
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "unavailable"
