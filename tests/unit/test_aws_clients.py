"""The AWS clients: timestamps parsed as botocore does (ISO 8601 natively), service names
checked without walking every service botocore ships, and which failures are transient."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    ReadTimeoutError,
    UnknownServiceError,
)
from botocore.loaders import Loader
from botocore.utils import parse_timestamp
from pynamodb.exceptions import QueryError

from tessera.adapters.aws.changes import changes_model
from tessera.adapters.aws.clients import AwsClients, fast_timestamp
from tessera.adapters.aws.errors import is_transient
from tessera.adapters.aws.s3 import S3BlockStore
from tessera.adapters.aws.settings import AwsSettings


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-26T10:31:00.000Z",  # S3's XML (ListObjectsV2 LastModified)
        "2026-11-26T10:31:00.123456+02:00",
        "2026-11-26T10:31:00",  # no zone: botocore's rule applies
        "Thu, 26 Nov 2026 10:31:00 GMT",  # RFC 822 (HTTP headers)
        1795688976,  # epoch seconds (JSON protocols)
        "1795688976.5",
    ],
)
def test_fast_timestamp_agrees_with_botocore(value: str | int) -> None:
    # botocore's stubs type the value as str; the parser takes JSON protocols' numbers too
    ours, theirs = fast_timestamp(value), parse_timestamp(value)  # type: ignore[arg-type]
    assert ours == theirs and (ours.tzinfo is None) == (theirs.tzinfo is None)


def test_iso_timestamps_are_parsed_without_dateutil() -> None:
    parsed = fast_timestamp("2026-11-26T10:31:00.000Z")
    assert parsed == datetime(2026, 11, 26, 10, 31, tzinfo=UTC)
    assert parsed.tzinfo is UTC  # datetime's own zone: dateutil's would be tzutc()


def test_a_listing_parsed_by_the_clients_uses_it() -> None:
    """A ListObjectsV2 page as the S3 client parses it: LastModified in datetime's own UTC
    (botocore's dateutil parser would give tzutc())."""
    clients = AwsClients(AwsSettings())
    shape = clients.s3.meta.service_model.operation_model("ListObjectsV2").output_shape
    body = (
        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>'
        b"<Contents><Key>staging/u/b3:00</Key><LastModified>2026-11-26T10:31:00.000Z"
        b"</LastModified><Size>42</Size></Contents></ListBucketResult>"
    )
    factory = clients._session.get_component("response_parser_factory")
    parsed = factory.create_parser("rest-xml").parse(
        {"status_code": 200, "headers": {}, "body": body}, shape
    )
    (item,) = parsed["Contents"]
    assert item["Size"] == 42
    assert item["LastModified"] == datetime(2026, 11, 26, 10, 31, tzinfo=UTC)
    assert item["LastModified"].tzinfo is UTC


def test_a_client_is_created_without_walking_every_service_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def walk(self: Loader, type_name: str) -> list[str]:
        raise AssertionError(f"listed every service for {type_name}")

    monkeypatch.setattr(Loader, "list_available_services", walk)
    clients = AwsClients(AwsSettings(endpoint_url="http://127.0.0.1:9"))
    assert clients.kms.meta.service_model.service_name == "kms"
    assert clients.ssm.can_paginate("get_parameters_by_path")  # paginators-1 found too


@pytest.mark.parametrize("region", ["eu-west-1", "ap-east-1"])
def test_presigned_urls_go_to_the_buckets_regional_host(
    region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore's default signs for the global host, `<bucket>.s3.amazonaws.com`: a region
    opened since 2019 (ap-east-1) does not serve it, and elsewhere a new bucket's first day
    answers it with a 307 to the regional host, which the signature does not cover."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    clients = AwsClients(AwsSettings(region=region))
    store = S3BlockStore(clients.s3, "tessera-dev-blocks", credentials=clients.credentials)
    host = f"https://tessera-dev-blocks.s3.{region}.amazonaws.com/"
    assert store.presign_get("blocks/ab").url.startswith(host + "blocks/ab?")
    sha = bytes(32)
    puts = store.presign_puts([("staging/up/0-ab", 10, sha), ("staging/up/1-cd", 20, sha)])
    assert [p.url.startswith(host + "staging/up/") for p in puts] == [True, True]


def test_an_unknown_service_is_still_refused_with_botocore_s_message() -> None:
    clients = AwsClients(AwsSettings(endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(UnknownServiceError, match=r"Valid service names are: .*\bkms\b"):
        clients.client("no-such-service")


def test_the_change_tables_client_gives_up_in_seconds() -> None:
    # A commit publishes its event inside the request: PynamoDB's defaults (15 s connect,
    # 30 s read, three retries) held the response of a committed write for minutes when
    # DynamoDB did not answer.
    model = changes_model("changes", region="eu-west-1", host="http://127.0.0.1:9")
    config = model._get_connection().connection.client.meta.config
    # botocore's Config sets these attributes from its options at run time
    timeouts = (getattr(config, "connect_timeout"), getattr(config, "read_timeout"))  # noqa: B009
    assert timeouts == (1, 2)
    assert getattr(config, "retries")["total_max_attempts"] == 2  # noqa: B009


def _client_error(code: str, status: int) -> ClientError:
    answer: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {}}
    answer["ResponseMetadata"]["HTTPStatusCode"] = status
    return ClientError(answer, "Op")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_client_error("SlowDown", 503), True),  # S3
        (_client_error("ThrottlingException", 400), True),  # KMS, SSM, EventBridge
        (_client_error("ProvisionedThroughputExceededException", 400), True),  # DynamoDB
        (_client_error("InternalError", 500), True),
        (_client_error("Whatever", 502), True),
        (ReadTimeoutError(endpoint_url="https://s3"), True),
        (EndpointConnectionError(endpoint_url="https://kms"), True),
        (QueryError("query failed", cause=_client_error("ThrottlingException", 400)), True),
        (_client_error("AccessDenied", 403), False),  # a missing grant: a bug to see
        (_client_error("NoSuchKey", 404), False),
        (_client_error("ValidationException", 400), False),
        (QueryError("query failed", cause=_client_error("ValidationException", 400)), False),
        (ValueError("not AWS"), False),
    ],
)
def test_which_aws_failures_are_transient(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient
