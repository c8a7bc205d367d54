"""Bulk presigned PUTs: every URL equals botocore's own for the same PUT and instant."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import botocore.auth
import botocore.session
import pytest
from botocore.config import Config

from tessera.adapters.aws.presign import BulkPutSigner

NOW = datetime(2026, 11, 26, 11, 37, 41, tzinfo=UTC)
KEYS = [
    "staging/up_8f3a/" + "ab" * 32,
    "staging/up_8f3a/" + "0f" * 32,
    "blocks/" + "cd" * 32,
    "quarantine/up_1/odd name+é~",
]


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))


def _client(endpoint: str | None, token: str | None) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        region_name="eu-west-1",
        endpoint_url=endpoint,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        aws_session_token=token,
        config=Config(
            # as `AwsClients` makes it: path style on a custom endpoint, else virtual hosts
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint else "virtual"},
        ),
    )


def _botocore_url(client: Any, key: str, size: int, checksum: str) -> str:
    return str(
        client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": "tessera-blocks",
                "Key": key,
                "ChecksumSHA256": checksum,
                "ContentLength": size,
            },
            ExpiresIn=900,
        )
    )


def _checksum(n: int) -> str:
    return base64.b64encode(hashlib.sha256(str(n).encode()).digest()).decode()


def _same(ours: str, theirs: str) -> bool:
    a, b = urlsplit(ours), urlsplit(theirs)
    query = sorted(parse_qsl(a.query)), sorted(parse_qsl(b.query))
    return (a.scheme, a.netloc, a.path) == (b.scheme, b.netloc, b.path) and query[0] == query[1]


@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:5555"])
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzE/+session=token"])
def test_urls_equal_botocore_for_every_put(endpoint: str | None, token: str | None) -> None:
    client = _client(endpoint, token)
    first = _botocore_url(client, KEYS[0], 1000, _checksum(0))
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    signer = BulkPutSigner.from_reference(first, KEYS[0], 1000, _checksum(0), secret, token)
    assert signer is not None
    for n, key in enumerate(KEYS):
        size = 1000 + 7 * n
        assert _same(
            signer.url(key, size, _checksum(n)), _botocore_url(client, key, size, _checksum(n))
        )


def test_a_reference_it_cannot_reproduce_gives_no_signer() -> None:
    client = _client(None, None)
    first = _botocore_url(client, KEYS[0], 1000, _checksum(0))
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    cases = [
        (first, KEYS[0], 1000, _checksum(0), "another secret", None),  # rotated credentials
        (first, KEYS[0], 1001, _checksum(0), secret, None),  # not the PUT it signed
        (first, KEYS[1], 1000, _checksum(0), secret, None),  # another key
        (first, KEYS[0], 1000, _checksum(0), secret, "a token it lacks"),
        (first.replace("content-length%3B", ""), KEYS[0], 1000, _checksum(0), secret, None),
        (first.split("?")[0], KEYS[0], 1000, _checksum(0), secret, None),
    ]
    for case in cases:
        assert BulkPutSigner.from_reference(*case) is None, case
