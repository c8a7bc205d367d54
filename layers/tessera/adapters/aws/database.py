"""Aurora PostgreSQL access for the Lambda functions (DESIGN §2).

With `TESSERA_DB_IAM_AUTH` the password is an RDS IAM auth token (valid 15 minutes), made
fresh for every new connection by `db_conninfo()`'s callable — psycopg_pool calls it each
time it opens a connection, so a warm Lambda's pool never uses an expired token. Without
it, `DATABASE_URL` is used as-is. The pool is created at import (outside the handler) and
reused across invocations. The deploy-time migrate function instead logs in as the
cluster's master user, from its Secrets Manager secret (`secret_conninfo`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from psycopg.conninfo import make_conninfo

from tessera.adapters.aws.settings import AwsSettings, SettingsError

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient


def iam_conninfo(settings: AwsSettings, rds: RDSClient) -> str:
    """A conninfo whose password is a fresh RDS IAM auth token (TLS required by RDS)."""
    token = rds.generate_db_auth_token(
        DBHostname=settings.db_host,
        Port=settings.db_port,
        DBUsername=settings.db_user,
        Region=settings.region,
    )
    return make_conninfo(
        host=settings.db_host,
        port=settings.db_port,
        dbname=settings.db_name,
        user=settings.db_user,
        password=token,
        sslmode="require",
    )


def db_conninfo(settings: AwsSettings, rds: RDSClient | None = None) -> str | Callable[[], str]:
    """How to connect: a callable making IAM conninfos when configured, else DATABASE_URL."""
    if settings.db_iam_auth:
        if not settings.db_host:
            raise SettingsError("TESSERA_DB_IAM_AUTH needs TESSERA_DB_HOST")
        if rds is None:
            raise SettingsError("RDS IAM auth needs an RDS client")
        client = rds
        return lambda: iam_conninfo(settings, client)
    if not settings.database_url:
        raise SettingsError("set DATABASE_URL, or TESSERA_DB_HOST with TESSERA_DB_IAM_AUTH=1")
    return settings.database_url


def conninfo_from_secret(secret: Mapping[str, Any], settings: AwsSettings) -> str:
    """libpq conninfo for the cluster from its Secrets Manager secret (TLS required).

    The stack's settings win over the secret's host; port and database name come from settings.
    """
    return make_conninfo(
        host=settings.db_host or str(secret["host"]),
        port=str(settings.db_port),
        dbname=settings.db_name,
        user=str(secret["username"]),
        password=str(secret["password"]),
        sslmode="require",
        connect_timeout="30",  # an auto-paused Aurora takes ~15 s to resume
    )


def secret_conninfo(settings: AwsSettings, secretsmanager: Any) -> str:
    """Load the cluster secret `settings.db_secret_arn` and make its conninfo."""
    settings.require("db_secret_arn")
    return conninfo_from_secret(_secret(secretsmanager, settings.db_secret_arn), settings)


def app_credentials(settings: AwsSettings, secretsmanager: Any) -> tuple[str, str]:
    """(username, password) of the runtime role, from `settings.app_db_secret_arn`."""
    settings.require("app_db_secret_arn")
    secret = _secret(secretsmanager, settings.app_db_secret_arn)
    return str(secret["username"]), str(secret["password"])


def _secret(secretsmanager: Any, arn: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(
        secretsmanager.get_secret_value(SecretId=arn)["SecretString"]
    )
    return parsed
