"""The change stream: DynamoDB stream → EventBridge Pipe → `change_router` → `tessera` bus →
rule → dedup queue; and S3's restore completions: default bus → rule → restores queue."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_pipes as pipes
from constructs import Construct

from infra.config import StageConfig
from infra.constructs.messaging import Messaging
from infra.nag import acknowledge, acknowledge_invoke_versions
from tessera.domain.object_keys import CANONICAL_PREFIX
from tessera.maintenance.runner import RESTORE_COMPLETED

EVENT_SOURCE = "tessera"
# Detail-types that can leave staged blocks behind (DESIGN §5): each wakes dedup-verify.
DEDUP_DETAIL_TYPES = ["tessera.file"]


class ChangeStream(Construct):
    """`bus`, the stream `pipe`, and `dedup_queue` (fed by a rule on the bus)."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StageConfig,
        table: dynamodb.ITable,
        router: lambda_.IFunction,
        messaging: Messaging,
    ) -> None:
        super().__init__(scope, id)
        self.bus = events.EventBus(self, "Bus", event_bus_name=f"{config.prefix}")
        router_dlq = messaging.dead_letter_queue("RouterDlq", purpose="the change stream pipe")
        role = iam.Role(
            self,
            "PipeRole",
            assumed_by=iam.ServicePrincipal("pipes.amazonaws.com"),
            description="EventBridge Pipe: changes stream to change_router",
        )
        assert table.table_stream_arn is not None  # the table is created with a stream
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "dynamodb:DescribeStream",
                    "dynamodb:GetRecords",
                    "dynamodb:GetShardIterator",
                ],
                resources=[table.table_stream_arn],
            )
        )
        # EventBridge Pipes also lists the source's streams (its documented source
        # permissions). On "*", as CDK's own `Table.grant_stream_read` grants it: a narrower
        # resource would be a cross-stack token cdk-nag names by its export, stage by stage.
        role.add_to_policy(iam.PolicyStatement(actions=["dynamodb:ListStreams"], resources=["*"]))
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "dynamodb:ListStreams only lists stream ARNs (no data); EventBridge Pipes needs it"
            " for a DynamoDB stream source, and CDK's grant_stream_read grants it on *",
        )
        if table.encryption_key is not None:
            table.encryption_key.grant(role, "kms:Decrypt")
        router.grant_invoke(role)
        acknowledge_invoke_versions(role, router, "the stream pipe")
        # (Not `grant_send_messages`: it also grants kms:ReEncrypt* and GenerateDataKey*.)
        role.add_to_policy(
            iam.PolicyStatement(actions=["sqs:SendMessage"], resources=[router_dlq.queue_arn])
        )
        messaging.key.grant(role, "kms:GenerateDataKey", "kms:Decrypt")
        self.pipe = pipes.CfnPipe(
            self,
            "StreamPipe",
            role_arn=role.role_arn,
            description="changes table stream to the change_router function",
            source=table.table_stream_arn,
            source_parameters=pipes.CfnPipe.PipeSourceParametersProperty(
                dynamo_db_stream_parameters=pipes.CfnPipe.PipeSourceDynamoDBStreamParametersProperty(
                    starting_position="TRIM_HORIZON",
                    batch_size=25,
                    maximum_batching_window_in_seconds=1,
                    maximum_retry_attempts=10,
                    maximum_record_age_in_seconds=6 * 3600,
                    on_partial_batch_item_failure="AUTOMATIC_BISECT",
                    dead_letter_config=pipes.CfnPipe.DeadLetterConfigProperty(
                        arn=router_dlq.queue_arn
                    ),
                ),
                # Only inserts are changes; TTL deletions and idempotent re-puts are not.
                filter_criteria=pipes.CfnPipe.FilterCriteriaProperty(
                    filters=[pipes.CfnPipe.FilterProperty(pattern='{"eventName": ["INSERT"]}')]
                ),
            ),
            target=router.function_arn,
            target_parameters=pipes.CfnPipe.PipeTargetParametersProperty(
                lambda_function_parameters=pipes.CfnPipe.PipeTargetLambdaFunctionParametersProperty(
                    invocation_type="REQUEST_RESPONSE"
                )
            ),
        )
        # The role's policy must exist before the pipe starts reading the stream.
        self.pipe.node.add_dependency(role.node.find_child("DefaultPolicy"))

        rule_dlq = messaging.dead_letter_queue("RuleDlq", purpose="the bus rule to the dedup queue")
        self.dedup_dlq = messaging.dead_letter_queue("DedupDlq", purpose="the dedup queue")
        # Visibility above the consumer's 15-minute timeout, as Lambda requires.
        self.dedup_queue = messaging.work_queue(
            "DedupQueue", visibility=Duration.minutes(30), dlq=self.dedup_dlq
        )
        events.Rule(
            self,
            "ToDedup",
            event_bus=self.bus,
            description="committed files may hold staged blocks: wake dedup-verify",
            event_pattern=events.EventPattern(
                source=[EVENT_SOURCE], detail_type=DEDUP_DETAIL_TYPES
            ),
            targets=[
                targets.SqsQueue(
                    self.dedup_queue,
                    dead_letter_queue=rule_dlq,
                    retry_attempts=8,
                    max_event_age=Duration.hours(6),
                )
            ],
        )


class RestoreEvents(Construct):
    """`queue`: S3's "Object Restore Completed" events for the canonical blocks of the
    blocks bucket (on the default bus), for the cold-storage function to settle at once."""

    def __init__(
        self, scope: Construct, id: str, *, bucket_name: str, messaging: Messaging
    ) -> None:
        super().__init__(scope, id)
        rule_dlq = messaging.dead_letter_queue(
            "RestoreRuleDlq", purpose="the restore-completed rule to the restores queue"
        )
        self.dlq = messaging.dead_letter_queue("RestoresDlq", purpose="the restores queue")
        # Visibility above the consumer's 15-minute timeout, as Lambda requires.
        self.queue = messaging.work_queue(
            "RestoresQueue", visibility=Duration.minutes(30), dlq=self.dlq
        )
        events.Rule(
            self,
            "Completed",
            description="a block's restore from the cold tier finished: settle it",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=[RESTORE_COMPLETED],
                detail={
                    "bucket": {"name": [bucket_name]},
                    "object": {"key": [{"prefix": CANONICAL_PREFIX}]},
                },
            ),
            targets=[
                targets.SqsQueue(
                    self.queue,
                    dead_letter_queue=rule_dlq,
                    retry_attempts=8,
                    max_event_age=Duration.hours(6),
                )
            ],
        )
