"""Custom-resource handler (via the CDK provider framework): apply the schema on deploy.

Create/Update: apply every pending migration (`tessera.metadata.migrate`), grant the
runtime role the data (`tessera.metadata.roles.ensure_app_role`: the other functions
connect as it, never as the master user), make sure the first block-key version exists
(`tessera.adapters.aws.keys.ensure_key_version`), then compare the key versions' secrets
with the fingerprints the database recorded (`tessera.metadata.key_check`): a deploy over
a key parameter put again (deleted by hand, then made anew by this very step) fails, naming
the version, before the new API functions hand out keys under it. Delete: leave the
database alone (the data outlives the app stack). The steps are idempotent, so a retried
or repeated deploy is harmless.

Environment (set by infra/stacks.py, read by `AwsSettings`): TESSERA_DB_SECRET_ARN (the
cluster's master secret), TESSERA_APP_DB_SECRET_ARN (the runtime role's), TESSERA_DB_HOST,
TESSERA_DB_PORT, TESSERA_DB_NAME, TESSERA_KMS_KEY_ID, TESSERA_KEY_PARAM_PREFIX.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

PHYSICAL_ID = "tessera-schema"


def apply(
    event: Mapping[str, Any],
    *,
    conninfo: Callable[[], str],
    migrate: Callable[[str], list[int]],
    grant_app_role: Callable[[str], bool],
    ensure_block_key: Callable[[], int | None],
    check_block_keys: Callable[[str], None],
) -> dict[str, Any]:
    """The provider-framework response for one custom-resource `event`."""
    request = event.get("RequestType")
    if request == "Delete":
        return {"PhysicalResourceId": event.get("PhysicalResourceId", PHYSICAL_ID)}
    if request not in ("Create", "Update"):
        raise ValueError(f"unknown custom resource RequestType {request!r}")
    url = conninfo()
    applied = migrate(url)
    role_created = grant_app_role(url)
    created_key = ensure_block_key()
    check_block_keys(url)
    return {
        "PhysicalResourceId": PHYSICAL_ID,
        "Data": {
            "Applied": ",".join(str(n) for n in applied),
            "AppRoleCreated": "true" if role_created else "",
            "BlockKeyVersionCreated": "" if created_key is None else str(created_key),
        },
    }


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    """Lambda entry point."""
    from tessera.adapters.aws import (
        AwsClients,
        AwsSettings,
        app_credentials,
        ensure_key_version,
        secret_conninfo,
    )
    from tessera.metadata.migrate import migrate
    from tessera.metadata.roles import ensure_app_role

    settings = AwsSettings.from_env()
    clients = AwsClients(settings)

    def check_keys(url: str) -> None:
        from tessera.adapters.aws.keys import KmsKeyService
        from tessera.metadata import Database
        from tessera.metadata.key_check import check_block_keys

        keys = KmsKeyService(clients.kms, clients.ssm, settings.key_param_prefix)
        with Database(url, min_size=0, max_size=1) as db:
            check_block_keys(db, keys)

    return apply(
        event,
        conninfo=lambda: secret_conninfo(settings, clients.secretsmanager),
        migrate=migrate,
        grant_app_role=lambda url: ensure_app_role(
            url, *app_credentials(settings, clients.secretsmanager)
        ),
        ensure_block_key=lambda: ensure_key_version(
            clients.kms, clients.ssm, settings.kms_key_id, settings.key_param_prefix
        ),
        check_block_keys=check_keys,
    )
