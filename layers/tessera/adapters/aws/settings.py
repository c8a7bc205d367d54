"""`AwsSettings`: everything the AWS adapters and the Lambda functions read from the environment.

Read once per process (once per cold start) by `AwsSettings.from_env()`; nothing else in
`tessera` looks at `os.environ` for AWS configuration. The variable names are the contract
with the CDK app (see `docs/aws.md`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tessera.domain.errors import TesseraError


class SettingsError(TesseraError):
    """A required environment variable is missing or malformed (a deployment error)."""

    code = "misconfigured"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class AwsSettings:
    """Names and endpoints of the AWS resources one Tessera deployment uses."""

    region: str = "us-east-1"
    # Points every client at one endpoint (a moto server); None means the real AWS endpoints.
    endpoint_url: str | None = None
    bucket: str = ""
    changes_table: str = "tessera-changes"
    changes_ttl_days: int = 7
    kms_key_id: str = ""
    key_param_prefix: str = "/tessera/block-keys"
    event_bus: str = "tessera"
    event_source: str = "tessera"
    user_pool_id: str = ""
    user_pool_client_id: str = ""
    # Metadata database: a plain URL, or host/port/name/user with an RDS IAM auth token.
    database_url: str = ""
    db_host: str = ""
    db_port: int = 5432
    db_name: str = "tessera"
    db_user: str = "tessera"
    db_iam_auth: bool = False
    # The cluster's master secret (JSON: username, password, host...): the migrate function only.
    db_secret_arn: str = ""
    # The runtime role's secret (JSON: username, password): the migrate function makes the
    # role from it (`tessera.metadata.roles`); the other functions connect as it, by IAM.
    app_db_secret_arn: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AwsSettings:
        """Settings from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        return cls(
            region=env.get("TESSERA_REGION") or env.get("AWS_REGION") or "us-east-1",
            endpoint_url=env.get("TESSERA_AWS_ENDPOINT") or None,
            bucket=env.get("TESSERA_BUCKET", ""),
            changes_table=env.get("TESSERA_CHANGES_TABLE") or "tessera-changes",
            changes_ttl_days=_int(env, "TESSERA_CHANGES_TTL_DAYS", 7),
            kms_key_id=env.get("TESSERA_KMS_KEY_ID", ""),
            key_param_prefix=env.get("TESSERA_KEY_PARAM_PREFIX") or "/tessera/block-keys",
            event_bus=env.get("TESSERA_EVENT_BUS") or "tessera",
            event_source=env.get("TESSERA_EVENT_SOURCE") or "tessera",
            user_pool_id=env.get("TESSERA_USER_POOL_ID", ""),
            user_pool_client_id=env.get("TESSERA_USER_POOL_CLIENT_ID", ""),
            database_url=env.get("DATABASE_URL", ""),
            db_host=env.get("TESSERA_DB_HOST", ""),
            db_port=_int(env, "TESSERA_DB_PORT", 5432),
            db_name=env.get("TESSERA_DB_NAME") or "tessera",
            db_user=env.get("TESSERA_DB_USER") or "tessera",
            db_iam_auth=_flag(env, "TESSERA_DB_IAM_AUTH"),
            db_secret_arn=env.get("TESSERA_DB_SECRET_ARN", ""),
            app_db_secret_arn=env.get("TESSERA_APP_DB_SECRET_ARN", ""),
        )

    def require(self, *names: str) -> None:
        """Raise `SettingsError` naming every field in `names` that is empty."""
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            raise SettingsError(f"missing AWS settings: {', '.join(missing)}")

    def to_env(self) -> dict[str, str]:
        """The environment that `from_env` turns back into these settings (AWS mode, tests)."""
        env = {
            "TESSERA_REGION": self.region,
            "TESSERA_BUCKET": self.bucket,
            "TESSERA_CHANGES_TABLE": self.changes_table,
            "TESSERA_CHANGES_TTL_DAYS": str(self.changes_ttl_days),
            "TESSERA_KMS_KEY_ID": self.kms_key_id,
            "TESSERA_KEY_PARAM_PREFIX": self.key_param_prefix,
            "TESSERA_EVENT_BUS": self.event_bus,
            "TESSERA_EVENT_SOURCE": self.event_source,
            "TESSERA_USER_POOL_ID": self.user_pool_id,
            "TESSERA_USER_POOL_CLIENT_ID": self.user_pool_client_id,
            "DATABASE_URL": self.database_url,
            "TESSERA_DB_HOST": self.db_host,
            "TESSERA_DB_PORT": str(self.db_port),
            "TESSERA_DB_NAME": self.db_name,
            "TESSERA_DB_USER": self.db_user,
            "TESSERA_DB_IAM_AUTH": "1" if self.db_iam_auth else "",
            "TESSERA_DB_SECRET_ARN": self.db_secret_arn,
            "TESSERA_APP_DB_SECRET_ARN": self.app_db_secret_arn,
        }
        if self.endpoint_url:
            env["TESSERA_AWS_ENDPOINT"] = self.endpoint_url
        return env
