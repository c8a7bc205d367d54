"""Customer-managed KMS keys, one per kind of secret, all with yearly rotation."""

from __future__ import annotations

from aws_cdk import Aws, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from infra.config import StageConfig


def cmk(scope: Construct, id: str, *, config: StageConfig, description: str) -> kms.Key:
    """A rotating customer-managed key that outlives its stack.

    A deleted key makes every byte it protected unreadable, so keys are retained in every
    stage (and KMS waits 30 days before deleting one scheduled for deletion anyway).
    """
    return kms.Key(
        scope,
        id,
        description=f"Tessera {config.stage}: {description}",
        enable_key_rotation=True,
        removal_policy=RemovalPolicy.RETAIN,
        alias=f"alias/{config.prefix}-{id.lower()}",
    )


def grant_via_dynamodb(grantee: iam.IGrantable, key: kms.IKey, *actions: str) -> None:
    """`key` for `actions`, by way of DynamoDB only: the changes table's key is the database
    key, which also encrypts Aurora and its master secret, and whoever reads the table (or
    its stream) has no business decrypting those."""
    grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
        actions=list(actions),
        resources=[key.key_arn],
        conditions={"StringEquals": {"kms:ViaService": f"dynamodb.{Aws.REGION}.amazonaws.com"}},
    ))  # fmt: skip


class Keys(Construct):
    """The data keys: blocks bucket, database (Aurora and the changes table), block-key secret."""

    def __init__(self, scope: Construct, id: str, *, config: StageConfig) -> None:
        super().__init__(scope, id)
        self.blocks = cmk(self, "Blocks", config=config, description="SSE-KMS of the blocks bucket")
        self.database = cmk(
            self, "Database", config=config, description="Aurora, its secret, the changes table"
        )
        self.block_key_secret = cmk(
            self, "BlockKeySecret", config=config, description="envelope key of block-key secrets"
        )
