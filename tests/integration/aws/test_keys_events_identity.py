"""KmsKeyService, EventBridgePublisher, Cognito identity and settings against moto."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast
from unittest import mock

import jwt
import pytest
from moto.utilities.utils import load_resource

from tessera.adapters.aws import (
    AwsClients,
    AwsSettings,
    CognitoIdentity,
    CognitoUsers,
    EventBridgePublisher,
    KmsKeyService,
    SettingsError,
    create_key_version,
    db_conninfo,
    list_key_versions,
    principal_from_claims,
)
from tessera.domain.errors import BadRequest, Conflict, Unauthorized, Unavailable
from tessera.ports import ChangeEvent

pytestmark = pytest.mark.aws


# --- keys ------------------------------------------------------------------------------


def test_key_versions_envelope_and_rotation(
    aws_clients: AwsClients, aws_settings: AwsSettings
) -> None:
    prefix = f"/tessera/test-{uuid.uuid4().hex[:8]}"
    keys = KmsKeyService(aws_clients.kms, aws_clients.ssm, prefix)
    with pytest.raises(KeyError):
        keys.current_version()
    assert (
        create_key_version(aws_clients.kms, aws_clients.ssm, aws_settings.kms_key_id, prefix) == 1
    )
    v1, k1 = keys.block_key("b3:" + "aa" * 32)
    assert v1 == 1 and len(k1) == 32
    # The key is HMAC-SHA256(secret, block_id) and the secret is a 256-bit KMS data key.
    secret = keys.secret(1)
    assert k1 == hmac.new(secret, ("b3:" + "aa" * 32).encode(), hashlib.sha256).digest()
    # Parameter Store holds only the KMS-encrypted form, never the secret.
    stored = aws_clients.ssm.get_parameter(Name=f"{prefix}/v1", WithDecryption=True)
    assert stored["Parameter"]["Type"] == "SecureString"
    assert secret not in base64.b64decode(stored["Parameter"]["Value"])

    assert (
        create_key_version(aws_clients.kms, aws_clients.ssm, aws_settings.kms_key_id, prefix) == 2
    )
    assert list_key_versions(aws_clients.ssm, prefix) == [1, 2]
    assert keys.current_version() == 1  # this process keeps its version until a cold start
    fresh = KmsKeyService(aws_clients.kms, aws_clients.ssm, prefix)
    assert fresh.current_version() == 2
    assert fresh.block_key("b3:" + "aa" * 32, 1) == (1, k1)  # old versions stay readable
    assert fresh.secret(2) != secret
    with pytest.raises(KeyError):
        fresh.secret(3)


@contextmanager
def _ssm_calls(aws_clients: AwsClients) -> Iterator[list[str]]:
    """The names of the SSM calls made inside the block, in order."""
    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(model.name)

    aws_clients.ssm.meta.events.register("before-call.ssm", record)
    try:
        yield calls
    finally:
        aws_clients.ssm.meta.events.unregister("before-call.ssm", record)


def test_a_cold_start_reads_parameter_store_once(
    aws_clients: AwsClients, aws_settings: AwsSettings
) -> None:
    """The version listing brings the encrypted secrets along: loading the current one (and
    any older one listed with it) needs no further SSM call, only KMS."""
    prefix = f"/tessera/test-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        create_key_version(aws_clients.kms, aws_clients.ssm, aws_settings.kms_key_id, prefix)
    with _ssm_calls(aws_clients) as calls:
        keys = KmsKeyService(aws_clients.kms, aws_clients.ssm, prefix)
        keys.load_current()
        assert keys.current_version() == 2
        assert calls == ["GetParametersByPath"]
        old = keys.secret(1)
        assert calls == ["GetParametersByPath"]
    fresh = KmsKeyService(aws_clients.kms, aws_clients.ssm, prefix)
    assert fresh.secret(1) == old  # read by its own GetParameter: the same secret


def test_unknown_versions_cost_no_parameter_store_call(
    aws_clients: AwsClients, aws_settings: AwsSettings
) -> None:
    """A cursor names its key version, and anyone signed in can forge one: `knows` answers
    from the cold start's listing; a version newer than any listed (another process may have
    rotated) lists again, but at most every `RELIST_S`."""
    keys, prefix = _one_version_loaded(aws_clients, aws_settings)
    with _ssm_calls(aws_clients) as calls:
        assert not any(keys.knows(v) for v in (0, 2, 99, 10**1000))
        assert keys.knows(1)
        assert calls == []
        create_key_version(aws_clients.kms, aws_clients.ssm, aws_settings.kms_key_id, prefix)
        calls.clear()
        # wall time: a frozen Lambda's monotonic clock does not move between invocations
        later = time.time() + keys.RELIST_S
        with mock.patch("tessera.adapters.aws.keys.time.time", return_value=later):
            assert keys.knows(2)  # rotated by another process, listed again
            assert not keys.knows(3)  # not again so soon
            keys.secret(2)  # came with the listing
        assert calls == ["GetParametersByPath"]
        assert keys.versions() == [1, 2] and keys.current_version() == 2  # listed with it


def test_a_rotation_reaches_a_warm_function_within_a_minute(
    aws_clients: AwsClients, aws_settings: AwsSettings
) -> None:
    """The current version was listed once per process: after a rotation (a secret that
    leaked), a warm function went on handing out keys under the old one until its next
    cold start, hours on. `refresh` (an invocation's start) lists again once a minute;
    asking for the current version never does (it is asked inside transactions). A
    listing that fails keeps the version it had."""
    from botocore.exceptions import ClientError

    keys, prefix = _one_version_loaded(aws_clients, aws_settings)
    create_key_version(aws_clients.kms, aws_clients.ssm, aws_settings.kms_key_id, prefix)
    with _ssm_calls(aws_clients) as calls:
        keys.refresh()
        assert keys.current_version() == 1 and calls == []  # not listed again so soon
        later = time.time() + keys.RELIST_S
        with mock.patch("tessera.adapters.aws.keys.time.time", return_value=later):
            assert keys.current_version() == 1 and calls == []  # not on the way
            keys.refresh()
            assert keys.block_key("b3:" + "ab" * 32)[0] == 2
        assert calls == ["GetParametersByPath"]
    throttled = ClientError({"Error": {"Code": "ThrottlingException"}}, "GetParametersByPath")
    much_later = time.time() + 3 * keys.RELIST_S
    with (
        mock.patch("tessera.adapters.aws.keys.time.time", return_value=much_later),
        mock.patch("tessera.adapters.aws.keys.stored_key_versions", side_effect=throttled),
    ):
        keys.refresh()
        assert keys.current_version() == 2


def test_a_missing_version_costs_one_parameter_store_call_a_minute(
    aws_clients: AwsClients, aws_settings: AwsSettings
) -> None:
    """Maintenance loads the version after the newest it lists (a rotation since its
    listing), and a stored block's header, which its uploader writes, names it: every
    block naming a version that does not exist cost a GetParameter."""
    keys, prefix = _one_version_loaded(aws_clients, aws_settings)
    with _ssm_calls(aws_clients) as calls:
        for _ in range(3):
            with pytest.raises(KeyError):
                keys.secret(2)
        assert calls == ["GetParameter"]
        create_key_version(aws_clients.kms, aws_clients.ssm, aws_settings.kms_key_id, prefix)
        later = time.time() + keys.RELIST_S
        with mock.patch("tessera.adapters.aws.keys.time.time", return_value=later):
            assert len(keys.secret(2)) == 32  # rotated in since: asked again, a minute on


def _one_version_loaded(
    aws_clients: AwsClients, aws_settings: AwsSettings
) -> tuple[KmsKeyService, str]:
    """A key service over a fresh prefix holding version 1, loaded as at a cold start:
    (it, the prefix)."""
    prefix = f"/tessera/test-{uuid.uuid4().hex[:8]}"
    create_key_version(aws_clients.kms, aws_clients.ssm, aws_settings.kms_key_id, prefix)
    keys = KmsKeyService(aws_clients.kms, aws_clients.ssm, prefix)
    keys.load_current()
    return keys, prefix


def test_key_blob_is_bound_to_its_version(
    aws_clients: AwsClients, aws_settings: AwsSettings
) -> None:
    prefix = f"/tessera/test-{uuid.uuid4().hex[:8]}"
    create_key_version(aws_clients.kms, aws_clients.ssm, aws_settings.kms_key_id, prefix)
    blob = aws_clients.ssm.get_parameter(Name=f"{prefix}/v1", WithDecryption=True)
    # Replaying v1's blob as v2 fails: the encryption context names the version.
    aws_clients.ssm.put_parameter(
        Name=f"{prefix}/v2", Value=blob["Parameter"]["Value"], Type="SecureString"
    )
    keys = KmsKeyService(aws_clients.kms, aws_clients.ssm, prefix)
    with pytest.raises(aws_clients.kms.exceptions.InvalidCiphertextException):
        keys.secret(2)


# --- events ----------------------------------------------------------------------------


def test_eventbridge_publisher_batches_and_reports_failures(
    aws_clients: AwsClients, aws_settings: AwsSettings
) -> None:
    publisher = EventBridgePublisher(aws_clients.events, aws_settings.event_bus)
    events = [ChangeEvent(f"e{i}", 1, i, "file", {"path": f"/f{i}"}) for i in range(23)]
    assert publisher.publish(events) == []
    # EventBridge refuses entries without a source one by one: each is reported, none lost.
    refused = EventBridgePublisher(aws_clients.events, aws_settings.event_bus, source="")
    assert [e.event_id for e in refused.publish(events[:12])] == [f"e{i}" for i in range(12)]


def test_eventbridge_requests_stay_under_its_size_limit(
    aws_clients: AwsClients, aws_settings: AwsSettings
) -> None:
    # PutEvents refuses a request over 256 KB whole (moto does not check): ten events of
    # 60 KB went as one request. Now each request stays under the limit, and an event
    # larger than a request may be is reported refused without being sent.
    sent: list[list[int]] = []

    class Recording:
        def put_events(self, **kwargs: Any) -> Any:
            sent.append([len(e["Detail"].encode()) for e in kwargs["Entries"]])
            return aws_clients.events.put_events(**kwargs)

    publisher = EventBridgePublisher(cast(Any, Recording()), aws_settings.event_bus)
    bulky = [ChangeEvent(f"b{i}", 1, i, "file", {"note": "x" * 60_000}) for i in range(10)]
    huge = ChangeEvent("huge", 1, 99, "file", {"note": "x" * 300_000})
    assert publisher.publish([*bulky[:5], huge, *bulky[5:]]) == [huge]
    assert sum(len(request) for request in sent) == 10
    assert all(sum(request) < 256 * 1024 for request in sent)
    assert len(sent) == 3  # four, four and two: as full as the limit allows


# --- identity --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def users(aws_clients: AwsClients, aws_settings: AwsSettings) -> CognitoUsers:
    return CognitoUsers(
        aws_clients.cognito, aws_settings.user_pool_id, aws_settings.user_pool_client_id
    )


@pytest.fixture(scope="module")
def identity(aws_settings: AwsSettings) -> CognitoIdentity:
    return CognitoIdentity(
        region=aws_settings.region,
        pool_id=aws_settings.user_pool_id,
        client_id=aws_settings.user_pool_client_id,
        endpoint_url=aws_settings.endpoint_url,
    )


def test_cognito_sign_in_and_jwks_verification(
    users: CognitoUsers, identity: CognitoIdentity
) -> None:
    email = f"ann-{uuid.uuid4().hex[:6]}@example.com"
    sub = users.create_user(email, "Secret-passw0rd!")
    with pytest.raises(Conflict):
        users.create_user(email, "Secret-passw0rd!")
    tokens = users.token({"email": email, "password": "Secret-passw0rd!"}).to_body()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] > 0
    principal = identity.verify(tokens["access_token"])
    assert (principal.user_id, principal.email) == (sub, email)
    claims = identity.claims(tokens["access_token"])
    assert claims["sub"] == sub and all(isinstance(v, str) for v in claims.values())

    refreshed = users.token({"refresh_token": tokens["refresh_token"]})
    assert identity.verify(refreshed.access_token).user_id == sub

    with pytest.raises(Unauthorized):
        users.token({"email": email, "password": "wrong-passw0rd!"})
    with pytest.raises(BadRequest):
        users.token({"email": email})
    with pytest.raises(BadRequest):
        users.token({"email": email, "password": 12345})


def test_jwks_verifier_rejects_forged_expired_and_foreign_tokens(
    users: CognitoUsers,
    identity: CognitoIdentity,
    aws_settings: AwsSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    email = f"bob-{uuid.uuid4().hex[:6]}@example.com"
    users.create_user(email, "Secret-passw0rd!")
    token = users.token({"email": email, "password": "Secret-passw0rd!"}).access_token
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))

    def reencode(changes: dict[str, object]) -> str:
        body = base64.urlsafe_b64encode(json.dumps({**claims, **changes}).encode()).rstrip(b"=")
        return f"{header}.{body.decode()}.{signature}"

    with pytest.raises(Unauthorized):  # tampered claims: signature no longer matches
        identity.verify(reencode({"sub": "someone-else"}))
    with pytest.raises(Unauthorized):  # signed by another key (HS256, not the pool's)
        identity.verify(jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": "dummy"}))
    with pytest.raises(Unauthorized):
        identity.verify("not-a-jwt")
    other_client = CognitoIdentity(
        region=aws_settings.region,
        pool_id=aws_settings.user_pool_id,
        client_id="another-app-client",
        endpoint_url=aws_settings.endpoint_url,
    )
    with pytest.raises(Unauthorized, match=r"^invalid token$"):
        other_client.verify(token)
    # moto signs with a key it ships: sign with it too, to vary one claim at a time.
    moto_key = jwt.PyJWK(load_resource("cognitoidp/resources/jwks-private.json"))

    def signed(changes: dict[str, object]) -> str:
        return jwt.encode(
            {**claims, **changes}, moto_key.key, algorithm="RS256", headers={"kid": "dummy"}
        )

    assert identity.verify(signed({})).email == email  # the re-signed original is fine
    with pytest.raises(Unauthorized, match="expired"):
        identity.verify(signed({"exp": int(time.time()) - 5}))
    # Refused as API Gateway's authorizer refuses, saying nothing of which check failed;
    # the reason is the gateway's log's
    caplog.set_level(logging.DEBUG, logger="tessera.adapters")
    with pytest.raises(Unauthorized, match=r"^invalid token$"):
        identity.verify(signed({"iss": "https://cognito-idp.us-east-1.amazonaws.com/other"}))
    assert "Invalid issuer" in caplog.text
    with pytest.raises(Unauthorized, match=r"^invalid token$"):
        identity.verify(signed({"token_use": "refresh"}))
    assert "not issued to this app client" in caplog.text


def test_principal_from_claims() -> None:
    assert principal_from_claims({"sub": "u1", "email": "a@b.c"}).user_id == "u1"
    for bad in (None, {}, {"email": "a@b.c"}, {"sub": ""}):
        with pytest.raises(Unauthorized):
            principal_from_claims(bad)


# --- settings --------------------------------------------------------------------------


def test_settings_round_trip_and_errors(aws_settings: AwsSettings) -> None:
    assert AwsSettings.from_env(aws_settings.to_env()) == aws_settings
    with pytest.raises(SettingsError, match="TESSERA_DB_PORT"):
        AwsSettings.from_env({"TESSERA_DB_PORT": "five"})
    with pytest.raises(SettingsError, match="bucket"):
        AwsSettings().require("bucket")
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        db_conninfo(AwsSettings())
    assert db_conninfo(AwsSettings(database_url="postgresql://x/y")) == "postgresql://x/y"


def test_iam_auth_conninfo_uses_fresh_tokens(aws_clients: AwsClients) -> None:
    settings = AwsSettings(
        db_iam_auth=True, db_host="db.example", db_user="app", db_name="tessera", region="us-east-1"
    )
    make = db_conninfo(settings, aws_clients.rds)
    assert callable(make)
    conninfo = make()
    assert "host=db.example" in conninfo and "sslmode=require" in conninfo
    assert "X-Amz-Signature" in conninfo and "Action=connect" in conninfo
    with pytest.raises(SettingsError, match="TESSERA_DB_HOST"):
        db_conninfo(AwsSettings(db_iam_auth=True), aws_clients.rds)


def test_a_refused_password_creates_no_user(users: CognitoUsers) -> None:
    """The pool refuses a weak password: nothing is left behind, so the same email can
    sign up again with a good one (a half-created user made every retry a 409)."""
    email = f"cat-{uuid.uuid4().hex[:6]}@example.com"
    with pytest.raises(BadRequest, match="password"):
        users.create_user(email, "short")
    sub = users.create_user(email, "Secret-passw0rd!")
    tokens = users.token({"email": email, "password": "Secret-passw0rd!"})
    assert tokens.access_token and sub


def test_a_key_set_out_of_reach_is_unavailable_not_unauthorized(
    users: CognitoUsers, aws_settings: AwsSettings
) -> None:
    """A valid token checked while the pool's JWKS cannot be fetched: 503 (retry), not 401
    (which sends the client to sign in again), and the message does not name the URL."""
    email = f"cy-{uuid.uuid4().hex[:6]}@example.com"
    users.create_user(email, "Secret-passw0rd!")
    token = users.token({"email": email, "password": "Secret-passw0rd!"}).access_token
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    unreachable = CognitoIdentity(
        region=aws_settings.region,
        pool_id=aws_settings.user_pool_id,
        client_id=aws_settings.user_pool_client_id,
        endpoint_url=f"http://127.0.0.1:{port}",
    )
    with pytest.raises(Unavailable) as info:
        unreachable.verify(token)
    assert info.value.status == 503 and "127.0.0.1" not in info.value.message
