"""moto for the AWS tests: one in-process ThreadedMotoServer per session, provisioned the way
`tessera local up --backend aws` provisions it (real HTTP, so httpx reaches it too)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace

import pytest

from tessera.adapters.aws import AwsClients, AwsSettings
from tessera.local.aws_mode import load_functions
from tessera.local.postgres import ensure_database

from .moto_env import shared_aws_settings


@pytest.fixture(scope="session")
def aws_settings() -> AwsSettings:
    """Settings of a provisioned deployment on the session's moto server (no database)."""
    return shared_aws_settings()


@pytest.fixture(scope="session")
def aws_clients(aws_settings: AwsSettings) -> AwsClients:
    """boto3 clients for `aws_settings`."""
    return AwsClients(aws_settings)


@pytest.fixture(scope="session")
def lambdas(aws_settings: AwsSettings, postgres_url: str) -> Iterator[SimpleNamespace]:
    """The four Lambda handler modules, cold-started with their Lambda environment:
    the moto deployment plus a fresh, migrated metadata database."""
    from tessera.metadata import migrate

    url = ensure_database(postgres_url, f"aws_{uuid.uuid4().hex[:10]}")
    migrate(url)
    env = {
        **replace(aws_settings, database_url=url).to_env(),
        "TESSERA_LONGPOLL_MIN_S": "0.5",
        "TESSERA_POOL_MIN_SIZE": "1",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    modules = load_functions(env)
    yield SimpleNamespace(database_url=url, **modules)
    modules["api"].services.db.close()
    modules["longpoll"].services.db.close()
    modules["outbox_relay"].db.close()
