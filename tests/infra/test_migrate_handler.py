"""functions/migrate: the deploy-time custom resource, against real PostgreSQL (and moto for
the block-key bootstrap: SSM + KMS)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.infra

HANDLER = Path(__file__).resolve().parents[2] / "functions" / "migrate" / "handler.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migrate_handler", HANDLER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_create_applies_migrations_once_and_bootstraps_the_block_key(
    empty_database_url: str,
) -> None:
    import boto3
    import psycopg
    from moto import mock_aws

    from tessera.adapters.aws.keys import KmsKeyService, ensure_key_version, list_key_versions
    from tessera.metadata import Database
    from tessera.metadata.key_check import BlockKeysMismatch, check_block_keys
    from tessera.metadata.migrate import available_migrations, migrate
    from tessera.metadata.roles import ensure_app_role

    handler = _load()
    with mock_aws():
        kms = boto3.client("kms", region_name="us-east-1")
        ssm = boto3.client("ssm", region_name="us-east-1")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]

        prefix = "/tessera/test/block-keys"

        def ensure() -> int | None:
            return ensure_key_version(kms, ssm, key_id, prefix)

        def check(url: str) -> None:
            with Database(url, min_size=0, max_size=1) as db:
                check_block_keys(db, KmsKeyService(kms, ssm, prefix))

        steps = {
            "migrate": migrate,
            "grant_app_role": lambda url: ensure_app_role(url, "tessera_app_it", "pw"),
            "ensure_block_key": ensure,
            "check_block_keys": check,
        }
        first = handler.apply(
            {"RequestType": "Create"}, conninfo=lambda: empty_database_url, **steps
        )
        expected = ",".join(str(m.number) for m in available_migrations())
        assert first["PhysicalResourceId"] == handler.PHYSICAL_ID
        assert first["Data"] == {
            "Applied": expected,
            "AppRoleCreated": "true",
            "BlockKeyVersionCreated": "1",
        }
        update = {"RequestType": "Update", "PhysicalResourceId": handler.PHYSICAL_ID}
        again = handler.apply(update, conninfo=lambda: empty_database_url, **steps)
        assert again["Data"] == {"Applied": "", "AppRoleCreated": "", "BlockKeyVersionCreated": ""}
        assert list_key_versions(ssm, prefix) == [1]

        # a block stored under version 1, then its parameter deleted and made anew (by
        # this step, as a deploy would): the deploy fails before new functions use it
        with psycopg.connect(empty_database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO blocks (block_id, size, stored_size, key_version, state)"
                " VALUES (%s, 1, 1, 1, 'live')",
                ("b3:" + "0" * 64,),
            )
        ssm.delete_parameter(Name=f"{prefix}/v1")
        with pytest.raises(BlockKeysMismatch, match="key version 1's secret is not the one"):
            handler.apply(update, conninfo=lambda: empty_database_url, **steps)


def test_delete_leaves_the_database_alone() -> None:
    handler = _load()

    def fail(*_: object) -> list[int]:
        raise AssertionError("Delete must not touch the database")

    out = handler.apply(
        {"RequestType": "Delete", "PhysicalResourceId": "tessera-schema"},
        conninfo=lambda: "unused", migrate=fail, grant_app_role=fail,
        ensure_block_key=lambda: None, check_block_keys=fail,
    )  # fmt: skip
    assert out == {"PhysicalResourceId": "tessera-schema"}


def test_unknown_request_type_is_an_error() -> None:
    handler = _load()
    with pytest.raises(ValueError, match="RequestType 'Poke'"):
        handler.apply(
            {"RequestType": "Poke"},
            conninfo=lambda: "unused", migrate=lambda _c: [], grant_app_role=lambda _c: False,
            ensure_block_key=lambda: None, check_block_keys=lambda _c: None,
        )  # fmt: skip


def test_conninfo_from_secret_requires_tls_and_prefers_the_stack_settings() -> None:
    from psycopg.conninfo import conninfo_to_dict

    from tessera.adapters.aws import AwsSettings
    from tessera.adapters.aws.database import conninfo_from_secret

    secret = {"host": "h", "port": 5432, "username": "tessera", "password": "p w'x"}
    settings = AwsSettings.from_env({"TESSERA_DB_HOST": "cluster.local", "TESSERA_DB_PORT": "5433"})
    params = conninfo_to_dict(conninfo_from_secret(secret, settings))
    assert params["host"] == "cluster.local" and params["port"] == "5433"
    assert params["sslmode"] == "require" and params["password"] == "p w'x"
    assert params["dbname"] == "tessera" and params["user"] == "tessera"


def test_the_runtime_roles_credentials_come_from_its_secret() -> None:
    import json

    import boto3
    from moto import mock_aws

    from tessera.adapters.aws import AwsSettings, SettingsError, app_credentials

    with mock_aws():
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        value = {"username": "tessera_app", "password": "p w'x", "engine": "postgres"}
        arn = sm.create_secret(Name="app", SecretString=json.dumps(value))["ARN"]
        settings = AwsSettings.from_env({"TESSERA_APP_DB_SECRET_ARN": arn})
        assert app_credentials(settings, sm) == ("tessera_app", "p w'x")
        with pytest.raises(SettingsError, match="app_db_secret_arn"):
            app_credentials(AwsSettings.from_env({}), sm)
