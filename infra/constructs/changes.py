"""The DynamoDB `changes` table: the change journal long-poll reads, streamed to the bus."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from constructs import Construct

from infra.config import StageConfig

TTL_ATTRIBUTE = "expires_at"


class ChangesTable(Construct):
    """pk `ns_id` (number), sk `seq` (number), on-demand, TTL, NEW_IMAGE stream, PITR, CMK."""

    def __init__(self, scope: Construct, id: str, *, config: StageConfig, key: kms.IKey) -> None:
        super().__init__(scope, id)
        self.table = dynamodb.Table(
            self,
            "Changes",
            partition_key=dynamodb.Attribute(name="ns_id", type=dynamodb.AttributeType.NUMBER),
            sort_key=dynamodb.Attribute(name="seq", type=dynamodb.AttributeType.NUMBER),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            time_to_live_attribute=TTL_ATTRIBUTE,
            stream=dynamodb.StreamViewType.NEW_IMAGE,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=key,
            # The table is a cache of Aurora's outbox (rebuildable by the relay), but the
            # stream and cursors in flight make deleting it in prod a visible outage.
            removal_policy=RemovalPolicy.RETAIN if config.is_prod else RemovalPolicy.DESTROY,
            deletion_protection=config.is_prod,
        )
