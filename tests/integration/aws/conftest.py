"""moto for the AWS tests: one in-process ThreadedMotoServer per session, provisioned the way
`tessera local up --backend aws` provisions it (real HTTP, so httpx reaches it too)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tessera.adapters.aws import AwsClients, AwsSettings
from tessera.local.aws_mode import MotoCloud, provision


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto server running in this process."""
    with MotoCloud() as cloud:
        yield cloud.endpoint_url


@pytest.fixture(scope="session")
def aws_settings(moto_endpoint: str) -> AwsSettings:
    """Settings of a provisioned deployment on the moto server (no database)."""
    return provision(moto_endpoint)


@pytest.fixture(scope="session")
def aws_clients(aws_settings: AwsSettings) -> AwsClients:
    """boto3 clients for `aws_settings`."""
    return AwsClients(aws_settings)
