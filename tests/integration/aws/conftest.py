"""moto for the AWS tests: one in-process ThreadedMotoServer per session, provisioned the way
`tessera local up --backend aws` provisions it (real HTTP, so httpx reaches it too)."""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace

import pytest
from psycopg.conninfo import make_conninfo

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


@pytest.fixture(scope="session")
def lambdas(aws_settings: AwsSettings, postgres_url: str) -> Iterator[SimpleNamespace]:
    """The four Lambda handler modules, imported (cold start) with their environment set:
    the moto deployment plus a fresh, migrated metadata database."""
    import psycopg

    from tessera.metadata import migrate

    name = f"aws_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(postgres_url, dbname=name)
    migrate(url)
    env = {
        **replace(aws_settings, database_url=url).to_env(),
        "TESSERA_LONGPOLL_MIN_S": "0.5",
        "TESSERA_POOL_MIN_SIZE": "1",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        modules = {
            n: importlib.import_module(f"functions.{n}.handler")
            for n in ("api", "longpoll", "outbox_relay", "change_router")
        }
    finally:  # the modules keep what they read at import; restore the process environment
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield SimpleNamespace(database_url=url, **modules)
    modules["api"].services.db.close()
    modules["longpoll"].services.db.close()
    modules["outbox_relay"].db.close()
