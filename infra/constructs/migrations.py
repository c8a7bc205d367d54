"""Schema migrations on every deploy: a custom resource backed by `functions/migrate`."""

from __future__ import annotations

import hashlib
from pathlib import Path

from aws_cdk import CustomResource
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

from infra.config import StageConfig, retention
from infra.nag import acknowledge, acknowledge_invoke_versions


def migrations_fingerprint(layers_root: Path) -> str:
    """SHA-256 over every migration file's name and bytes, and the runtime role's grants
    (`tessera/metadata/roles.py`): a new or changed migration, or grant, changes it, which
    makes CloudFormation update the custom resource, which runs the migrate function. (With
    the migrations alone, the deploy that moved the functions to the runtime role never
    made it: no migration had changed, and every function lost the database.)"""
    digest = hashlib.sha256()
    metadata = layers_root / "tessera" / "metadata"
    for path in [*sorted((metadata / "migrations").glob("*.sql")), metadata / "roles.py"]:
        digest.update(path.name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


class Migrations(Construct):
    """`resource`: applies pending migrations (and the first block-key version) on deploy."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StageConfig,
        function: lambda_.IFunction,
    ) -> None:
        super().__init__(scope, id)
        provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=function,
            log_group=logs.LogGroup(self, "ProviderLogs", retention=retention(config)),
        )
        acknowledge(
            provider,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaBasicExecutionRole]",
            "the CDK custom resource provider framework's own function role; CDK creates it "
            "and it only writes its logs and invokes the migrate function",
        )
        acknowledge_invoke_versions(provider, function, "the custom resource provider")
        acknowledge(
            provider,
            "AwsSolutions-L1",
            "the provider framework function's Node.js runtime is chosen by aws-cdk-lib, "
            "not by this app; it moves with CDK upgrades",
        )
        self.resource = CustomResource(
            self,
            "Schema",
            service_token=provider.service_token,
            resource_type="Custom::TesseraSchema",
            properties={"Fingerprint": migrations_fingerprint(config.layers_root)},
        )
