"""The change stream: DynamoDB stream → EventBridge Pipe → `change_router` → `tessera` bus →
rules → dedup and scrub queues; and S3's restore completions: default bus → rule → restores
queue."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_pipes as pipes
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import StageConfig
from infra.constructs.keys import grant_via_dynamodb
from infra.constructs.messaging import Messaging
from infra.nag import acknowledge, acknowledge_invoke_versions
from tessera.domain.object_keys import CANONICAL_PREFIX
from tessera.domain.reports import REPORTED
from tessera.maintenance.runner import RESTORE_COMPLETED

EVENT_SOURCE = "tessera"
# Detail-types that can leave staged blocks behind (DESIGN §5): each wakes dedup-verify.
DEDUP_DETAIL_TYPES = ["tessera.file"]
# A client reported a block unreadable (POST /v1/blocks/report): scrub checks it now.
SCRUB_DETAIL_TYPES = [f"tessera.{REPORTED}"]


class ChangeStream(Construct):
    """`bus`, the stream `pipe`, and `dedup_queue` and `scrub_queue` (each fed by a rule
    on the bus)."""

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
        if table.encryption_key is not None:  # (the stream's records: by way of DynamoDB)
            grant_via_dynamodb(role, table.encryption_key, "kms:Decrypt")
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

        def fed_by_bus(name: str, detail_types: list[str], description: str) -> sqs.Queue:
            """The work queue `<name>Queue`, fed Tessera's events of `detail_types` by the
            rule `To<name>` on the bus."""
            pattern = events.EventPattern(source=[EVENT_SOURCE], detail_type=detail_types)
            return queue_fed_by_rule(
                self, f"To{name}", name=name, messaging=messaging, description=description,
                pattern=pattern, bus=self.bus,
            )  # fmt: skip

        self.dedup_queue = fed_by_bus(
            "Dedup", DEDUP_DETAIL_TYPES, "committed files may hold staged blocks: wake dedup-verify"
        )
        self.scrub_queue = fed_by_bus(
            "Scrub", SCRUB_DETAIL_TYPES, "a client could not read a block: wake scrub to check it"
        )


def queue_fed_by_rule(
    scope: Construct,
    rule_id: str,
    *,
    name: str,
    messaging: Messaging,
    description: str,
    pattern: events.EventPattern,
    bus: events.IEventBus | None = None,
) -> sqs.Queue:
    """The work queue `<name>Queue` and the rule `rule_id` on `bus` (None: the default bus)
    that puts the events matching `pattern` on it; each with its alarmed dead-letter queue."""
    what = f"the {name.lower()} queue"
    rule_dlq = messaging.dead_letter_queue(f"{name}RuleDlq", purpose=f"the rule to {what}")
    dlq = messaging.dead_letter_queue(f"{name}Dlq", purpose=what)
    # Visibility above the consumer's 15-minute timeout, as Lambda requires.
    queue = messaging.work_queue(f"{name}Queue", visibility=Duration.minutes(30), dlq=dlq)
    events.Rule(
        scope,
        rule_id,
        event_bus=bus,
        description=description,
        event_pattern=pattern,
        targets=[
            targets.SqsQueue(
                queue, dead_letter_queue=rule_dlq, retry_attempts=8, max_event_age=Duration.hours(6)
            )
        ],
    )
    return queue


class RestoreEvents(Construct):
    """`queue`: S3's "Object Restore Completed" events for the canonical blocks of the
    blocks bucket (on the default bus), for the cold-storage function to settle at once."""

    def __init__(
        self, scope: Construct, id: str, *, bucket_name: str, messaging: Messaging
    ) -> None:
        super().__init__(scope, id)
        self.queue = queue_fed_by_rule(
            self,
            "Completed",
            name="Restores",
            messaging=messaging,
            description="a block's restore from the cold tier finished: settle it",
            pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=[RESTORE_COMPLETED],
                detail={
                    "bucket": {"name": [bucket_name]},
                    "object": {"key": [{"prefix": CANONICAL_PREFIX}]},
                },
            ),
        )
