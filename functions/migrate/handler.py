"""Custom-resource handler (via the CDK provider framework): apply the schema on deploy.

Create/Update: apply every pending migration (`tessera.metadata.migrate`), then make sure the
first block-key version exists (`tessera.adapters.aws.keys.create_key_version`). Delete: leave
the database alone (the data outlives the app stack). Both steps are idempotent, so a retried
or repeated deploy is harmless.

Environment (set by infra/stacks.py): TESSERA_DB_SECRET_ARN (the cluster's master secret),
TESSERA_DB_HOST, TESSERA_DB_PORT, TESSERA_DB_NAME, TESSERA_KMS_KEY_ID, TESSERA_KEY_PARAM_PREFIX.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

PHYSICAL_ID = "tessera-schema"


def conninfo_from_secret(secret: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """libpq conninfo for the cluster from its Secrets Manager secret (TLS required)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(
        host=env.get("TESSERA_DB_HOST") or str(secret["host"]),
        port=str(env.get("TESSERA_DB_PORT") or secret.get("port", 5432)),
        dbname=env.get("TESSERA_DB_NAME") or str(secret.get("dbname", "tessera")),
        user=str(secret["username"]),
        password=str(secret["password"]),
        sslmode="require",
        connect_timeout="30",  # an auto-paused Aurora takes ~15 s to resume
    )


def apply(
    event: Mapping[str, Any],
    *,
    conninfo: Callable[[], str],
    migrate: Callable[[str], list[int]],
    ensure_block_key: Callable[[], int | None],
) -> dict[str, Any]:
    """The provider-framework response for one custom-resource `event`."""
    request = event.get("RequestType")
    if request == "Delete":
        return {"PhysicalResourceId": event.get("PhysicalResourceId", PHYSICAL_ID)}
    if request not in ("Create", "Update"):
        raise ValueError(f"unknown custom resource RequestType {request!r}")
    applied = migrate(conninfo())
    created_key = ensure_block_key()
    return {
        "PhysicalResourceId": PHYSICAL_ID,
        "Data": {
            "Applied": ",".join(str(n) for n in applied),
            "BlockKeyVersionCreated": "" if created_key is None else str(created_key),
        },
    }


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    """Lambda entry point."""
    import boto3

    from tessera.adapters.aws.keys import create_key_version, list_key_versions
    from tessera.metadata.migrate import migrate

    env = os.environ
    ssm = boto3.client("ssm")
    prefix = env["TESSERA_KEY_PARAM_PREFIX"]

    def load_conninfo() -> str:
        raw = boto3.client("secretsmanager").get_secret_value(
            SecretId=env["TESSERA_DB_SECRET_ARN"]
        )["SecretString"]
        return conninfo_from_secret(json.loads(raw), env)

    def ensure_block_key() -> int | None:
        if list_key_versions(ssm, prefix):
            return None
        return create_key_version(boto3.client("kms"), ssm, env["TESSERA_KMS_KEY_ID"], prefix)

    return apply(event, conninfo=load_conninfo, migrate=migrate, ensure_block_key=ensure_block_key)
