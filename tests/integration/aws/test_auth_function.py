"""`functions/auth` (`POST /v1/auth/token` on AWS) against moto Cognito, called with the API
Gateway REST proxy event of its own route (no authorizer, so no claims)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from tessera.adapters.aws import AwsClients, AwsSettings, CognitoIdentity, CognitoUsers
from tessera.adapters.aws.token_endpoint import token_endpoint
from tessera.local.aws_mode import environment, load_function

from .lambda_events import Context, rest_event

pytestmark = pytest.mark.aws

PASSWORD = "Secret-passw0rd!"


@pytest.fixture(scope="module")
def auth(aws_settings: AwsSettings) -> Iterator[ModuleType]:
    """The `auth` function, cold-started with only the Cognito part of the environment."""
    env = {
        "TESSERA_REGION": aws_settings.region,
        "TESSERA_AWS_ENDPOINT": aws_settings.endpoint_url or "",
        "TESSERA_USER_POOL_ID": aws_settings.user_pool_id,
        "TESSERA_USER_POOL_CLIENT_ID": aws_settings.user_pool_client_id,
    }
    with environment(env):
        yield load_function("auth")


@pytest.fixture(scope="module")
def user(aws_clients: AwsClients, aws_settings: AwsSettings) -> tuple[str, str]:
    """A confirmed user in the pool: (email, sub)."""
    users = CognitoUsers(
        aws_clients.cognito, aws_settings.user_pool_id, aws_settings.user_pool_client_id
    )
    email = f"tok-{uuid.uuid4().hex[:6]}@example.com"
    return email, users.create_user(email, PASSWORD)


def _event(body: Any, *, raw: str | None = None, b64: bool = False) -> dict[str, Any]:
    """The proxy event of `POST /v1/auth/token` (its own resource, no authorizer)."""
    event = rest_event("/v1/auth/token", body)
    event["resource"] = event["requestContext"]["resourcePath"] = "/v1/auth/token"
    event["pathParameters"] = None
    if raw is not None:
        event["body"] = raw
    if b64:
        event["body"] = base64.b64encode(event["body"].encode()).decode()
        event["isBase64Encoded"] = True
    return event


def _call(auth: ModuleType, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    result = auth.handler(event, Context(function_name="tessera-auth"))
    return result["statusCode"], result["headers"], json.loads(result["body"])


def test_password_then_refresh_gives_tokens_the_api_accepts(
    auth: ModuleType, user: tuple[str, str], aws_settings: AwsSettings
) -> None:
    email, sub = user
    identity = CognitoIdentity(
        region=aws_settings.region,
        pool_id=aws_settings.user_pool_id,
        client_id=aws_settings.user_pool_client_id,
        endpoint_url=aws_settings.endpoint_url,
    )
    status, headers, body = _call(auth, _event({"email": email, "password": PASSWORD}))
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    # The access token is the ID token: it names the user and carries the email claim.
    assert identity.verify(body["access_token"]).user_id == sub
    assert identity.claims(body["access_token"])["email"] == email

    status, _, refreshed = _call(auth, _event({"refresh_token": body["refresh_token"]}, b64=True))
    assert status == 200, refreshed
    assert identity.verify(refreshed["access_token"]).user_id == sub
    assert refreshed["refresh_token"] == body["refresh_token"]


@pytest.mark.parametrize(
    "payload",
    [
        {"email": "WRONG", "password": PASSWORD},
        {"email": "nobody@example.com", "password": PASSWORD},
        # (an unknown refresh token: moto's AdminInitiateAuth fails with a KeyError, where
        # Cognito refuses it; stubbed in `test_cognito_refusals_get_their_own_answer_not_a_500`)
    ],
)
def test_wrong_credentials_are_401_json(
    auth: ModuleType, user: tuple[str, str], payload: dict[str, str]
) -> None:
    if payload.get("email") == "WRONG":
        payload = {"email": user[0], "password": "wrong-Passw0rd!"}
    status, headers, body = _call(auth, _event(payload))
    assert status == 401
    assert headers["Content-Type"] == "application/json"
    assert body["error"]["code"] == "unauthorized"
    assert "access_token" not in body


@pytest.mark.parametrize(
    ("body", "raw"),
    [
        (None, None),
        (None, "{not json"),
        (None, "\xff"),
        (["a", "list"], None),
        ("text", None),
        (None, "[" * 50_000),  # nested past the parser's limit: it had answered 500
    ],
)
def test_unparseable_bodies_are_422(auth: ModuleType, body: Any, raw: str | None) -> None:
    status, _, answer = _call(auth, _event(body, raw=raw))
    assert status == 422, answer
    assert answer["error"]["code"] == "invalid"


@pytest.mark.parametrize(
    "body",
    [{}, {"email": "a@example.com"}, {"password": PASSWORD}, {"email": "a@example.com",
     "password": 12345}, {"refresh_token": ["x"]}],
)  # fmt: skip
def test_bodies_without_credentials_are_400_as_on_the_local_gateway(
    auth: ModuleType, body: dict[str, Any]
) -> None:
    status, _, answer = _call(auth, _event(body))
    assert status == 400, answer
    assert answer["error"]["code"] == "bad_request"


@pytest.mark.parametrize(
    ("cognito_error", "cognito_status", "status", "code", "says"),
    [
        ("NotAuthorizedException", 400, 401, "unauthorized", "wrong email, password"),
        ("TooManyRequestsException", 400, 429, "rate_limited", "throttled"),
        ("PasswordResetRequiredException", 400, 401, "unauthorized", "reset its password"),
        ("UserNotConfirmedException", 400, 401, "unauthorized", "not confirmed"),
        ("InternalErrorException", 500, 503, "unavailable", "retry shortly"),
    ],
)
def test_cognito_refusals_get_their_own_answer_not_a_500(
    aws_settings: AwsSettings,
    cognito_error: str,
    cognito_status: int,
    status: int,
    code: str,
    says: str,
) -> None:
    """An account to reset or confirm, and Cognito failing for a while, answered 500
    ("internal error"): the user learnt nothing, and the client did not retry."""
    # moto answers none of these: a stubbed client answers the sign-in with Cognito's error
    client, users = _stubbed_users(aws_settings)
    with Stubber(client) as stub:
        stub.add_client_error(
            "admin_initiate_auth", service_error_code=cognito_error, http_status_code=cognito_status
        )
        refused = (
            {"refresh_token": "not-a-refresh-token"}  # (moto's own answer to it is a 500)
            if cognito_error == "NotAuthorizedException"
            else {"email": "a@example.com", "password": PASSWORD}
        )
        result = token_endpoint(users, _event(refused))
    body = json.loads(result["body"])
    assert (result["statusCode"], body["error"]["code"]) == (status, code), body
    assert says in body["error"]["message"]
    if status in (429, 503):
        assert int(result["headers"]["Retry-After"]) >= 1


def _stubbed_users(aws_settings: AwsSettings) -> tuple[Any, CognitoUsers]:
    """A Cognito client that answers only what a test queues (`Stubber`), and its users."""
    client = boto3.client(
        "cognito-idp", region_name=aws_settings.region, aws_access_key_id="x",
        aws_secret_access_key="x",
    )  # fmt: skip
    return client, CognitoUsers(client, aws_settings.user_pool_id, aws_settings.user_pool_client_id)


def _signed_in_with(
    aws_settings: AwsSettings, event: dict[str, Any], flow: str, params: dict[str, str],
    **context: Any,
) -> None:  # fmt: skip
    """The token endpoint answers `event` with tokens after one admin sign-in to Cognito,
    of exactly `flow`, `params` and (when given) `ContextData` (stubbed: moto checks none
    of it)."""
    client, users = _stubbed_users(aws_settings)
    answer = {"AuthenticationResult": {"IdToken": "id", "RefreshToken": "r", "ExpiresIn": 3600}}
    expected = {
        "UserPoolId": aws_settings.user_pool_id,
        "ClientId": aws_settings.user_pool_client_id,
        "AuthFlow": flow,
        "AuthParameters": params,
        **context,
    }
    with Stubber(client) as stub:
        stub.add_response("admin_initiate_auth", answer, expected_params=expected)
        result = token_endpoint(users, event)
        stub.assert_no_pending_responses()
    assert result["statusCode"] == 200, result


@pytest.mark.parametrize(
    ("body", "flow", "params"),
    [
        ({"email": "a@example.com", "password": PASSWORD}, "ADMIN_USER_PASSWORD_AUTH",
         {"USERNAME": "a@example.com", "PASSWORD": PASSWORD}),
        ({"refresh_token": "the-refresh-token"}, "REFRESH_TOKEN_AUTH",
         {"REFRESH_TOKEN": "the-refresh-token"}),
    ],
    ids=["password", "refresh"],
)  # fmt: skip
def test_a_sign_in_tells_cognito_where_it_came_from(
    aws_settings: AwsSettings, body: dict[str, str], flow: str, params: dict[str, str]
) -> None:
    """Threat protection judged every sign-in by this function's own addresses (the public
    InitiateAuth takes no caller address from a client without a secret): one attacker's
    blocks landed on every user. The admin call carries API Gateway's `sourceIp`, the host,
    the path and the caller's software, never its credentials."""
    event = _event(body)
    event["headers"] = {"Host": "api.example.com", "User-Agent": "tessera/1.0",
                        "Authorization": "Bearer stolen?", "Cookie": "c=1"}  # fmt: skip
    event["requestContext"]["domainName"] = "api.example.com"
    context = {
        "IpAddress": "203.0.113.7",
        "ServerName": "api.example.com",
        "ServerPath": "/v1/auth/token",
        "HttpHeaders": [{"headerName": "user-agent", "headerValue": "tessera/1.0"}],
    }
    _signed_in_with(aws_settings, event, flow, params, ContextData=context)


def test_a_sign_in_with_no_caller_address_sends_no_context(aws_settings: AwsSettings) -> None:
    """A test invocation (from the console) has no `sourceIp`: context data without an
    address is refused by Cognito, so none is sent."""
    body = {"email": "a@example.com", "password": PASSWORD}
    event = _event(body)
    event["requestContext"]["identity"] = {}
    params = {"USERNAME": "a@example.com", "PASSWORD": PASSWORD}
    _signed_in_with(aws_settings, event, "ADMIN_USER_PASSWORD_AUTH", params)


def test_settings_without_a_pool_fail_the_cold_start() -> None:
    from tessera.adapters.aws import SettingsError
    from tessera.adapters.aws.wiring import AwsRuntime

    with pytest.raises(SettingsError, match="user_pool_id"):
        AwsRuntime(aws=AwsSettings(user_pool_client_id="c")).users()


@pytest.mark.parametrize(
    "credentials",
    [{"email": "a" * 120 + "@example.com"}, {"password": "p" * 257}],
    ids=["email past 128", "password past 256"],
)
def test_credentials_longer_than_cognito_takes_are_401_without_asking_it(
    aws_settings: AwsSettings, credentials: dict[str, str]
) -> None:
    """Cognito refuses them with InvalidParameterException, a 500 here (which a
    misconfigured app client raises too, so it stays one)."""
    client, users = _stubbed_users(aws_settings)
    body = {"email": "a@example.com", "password": PASSWORD, **credentials}
    with Stubber(client):  # no answer queued: any call to Cognito fails the test
        result = token_endpoint(users, _event(body))
    assert result["statusCode"] == 401, result
    assert json.loads(result["body"])["error"]["code"] == "unauthorized"


def _revoke_event(token: Any) -> dict[str, Any]:
    event = _event({"refresh_token": token})
    event["resource"] = event["path"] = event["requestContext"]["resourcePath"] = "/v1/auth/revoke"
    return event


@pytest.mark.parametrize(
    ("cognito_error", "status"),
    [
        (None, 200),
        ("UnauthorizedException", 200),  # not one of this client's refresh tokens: RFC 7009
        ("UnsupportedTokenTypeException", 200),
        ("InvalidParameterException", 200),  # characters no token has
        ("TooManyRequestsException", 429),
        ("InternalErrorException", 503),
    ],
)
def test_revoke_signs_a_refresh_token_out_with_cognito(
    aws_settings: AwsSettings, cognito_error: str | None, status: int
) -> None:
    """`tessera logout` only deleted the device's tokens: a stolen refresh token kept working
    for its 30 days. The revoke route relays Cognito's RevokeToken (moto has none: stubbed)."""
    client, users = _stubbed_users(aws_settings)
    expected = {"Token": "the-refresh-token", "ClientId": aws_settings.user_pool_client_id}
    with Stubber(client) as stub:
        if cognito_error is None:
            stub.add_response("revoke_token", {}, expected)
        else:
            stub.add_client_error(
                "revoke_token",
                service_error_code=cognito_error,
                http_status_code=500 if cognito_error == "InternalErrorException" else 400,
                expected_params=expected,
            )
        result = token_endpoint(users, _revoke_event("the-refresh-token"))
        stub.assert_no_pending_responses()
    assert result["statusCode"] == status, result
    if status == 200:
        assert json.loads(result["body"]) == {}
    with Stubber(client):  # no call to Cognito for a body without a token, or elsewhere
        assert token_endpoint(users, _revoke_event(None))["statusCode"] == 400
        misrouted = {**_revoke_event("t"), "resource": "/{proxy+}", "path": "/v1/auth/other"}
        assert token_endpoint(users, misrouted)["statusCode"] == 404
