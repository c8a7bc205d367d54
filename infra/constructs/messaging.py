"""Encrypted SQS queues and the alarm topic: the async plumbing shared by the other constructs."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import StageConfig
from infra.constructs.keys import cmk
from infra.nag import acknowledge

DLQ_RETENTION = Duration.days(14)


class Messaging(Construct):
    """`key` (for queues and the topic), `alarm_topic`, and factories for queues and DLQs.

    Every dead-letter queue made here gets an alarm on its depth, so no async path can
    fail silently.
    """

    def __init__(self, scope: Construct, id: str, *, config: StageConfig) -> None:
        super().__init__(scope, id)
        self.key = cmk(self, "Messaging", config=config, description="queues and alarm topic")
        # Services that write to these queues/topic on their own behalf need the key too:
        # EventBridge (rules to queues and to their dead-letter queues) and CloudWatch
        # (alarms to the topic), for what a sender of an encrypted message calls, as AWS
        # documents it (not Encrypt or ReEncrypt*, which `grant_encrypt_decrypt` gave).
        # CDK's SqsQueue rule target still grants EventBridge those two itself, through
        # `grantSendMessages`, which a target gives no way to narrow. No aws:SourceAccount
        # condition: whether both services send one is unverified without a deploy, and a
        # missing one would silence the alarms.
        for service in ("events.amazonaws.com", "cloudwatch.amazonaws.com"):
            self.key.grant(iam.ServicePrincipal(service), "kms:Decrypt", "kms:GenerateDataKey*")
        self.alarm_topic = sns.Topic(
            self,
            "Alarms",
            display_name=f"Tessera {config.stage} alarms",
            master_key=self.key,
            enforce_ssl=True,
        )
        self.alarm_action = cw_actions.SnsAction(self.alarm_topic)
        self.dlqs: list[sqs.Queue] = []

    def dead_letter_queue(self, id: str, *, purpose: str) -> sqs.Queue:
        """A DLQ (KMS, TLS-only, 14 days) with an alarm when anything lands in it."""
        queue = sqs.Queue(
            self,
            id,
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.key,
            enforce_ssl=True,
            retention_period=DLQ_RETENTION,
        )
        acknowledge(
            queue,
            "AwsSolutions-SQS3",
            f"this queue is itself the dead-letter queue of {purpose}; it is alarmed on depth",
        )
        alarm = cloudwatch.Alarm(
            self,
            f"{id}Depth",
            alarm_description=f"messages in the dead-letter queue of {purpose}",
            metric=queue.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(1), statistic="Maximum"
            ),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(self.alarm_action)
        self.dlqs.append(queue)
        return queue

    def work_queue(self, id: str, *, visibility: Duration, dlq: sqs.IQueue) -> sqs.Queue:
        """A work queue (KMS, TLS-only) that moves a message to `dlq` after 5 receives."""
        return sqs.Queue(
            self,
            id,
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.key,
            enforce_ssl=True,
            visibility_timeout=visibility,
            dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=5),
        )
