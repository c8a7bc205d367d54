"""moto for the AWS tests: one in-process ThreadedMotoServer per session, provisioned the way
`tessera local up --backend aws` provisions it (real HTTP, so httpx reaches it too)."""

from __future__ import annotations

import pytest

from tessera.adapters.aws import AwsClients, AwsSettings

from .moto_env import shared_aws_settings


@pytest.fixture(scope="session")
def aws_settings() -> AwsSettings:
    """Settings of a provisioned deployment on the session's moto server (no database)."""
    return shared_aws_settings()


@pytest.fixture(scope="session")
def aws_clients(aws_settings: AwsSettings) -> AwsClients:
    """boto3 clients for `aws_settings`."""
    return AwsClients(aws_settings)
