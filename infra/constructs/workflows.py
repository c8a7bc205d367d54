"""Maintenance workflows: one Step Functions state machine per workflow, EventBridge Scheduler
schedules for them and for the outbox relay.

The states come from `tessera.maintenance.state_machine_definition` (one home for the step
names, their order, the `more` loops and the transient-error retries); this construct adds
a Catch on every Task that publishes the failure to the alarm topic and fails the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra.config import StageConfig, retention
from infra.constructs.messaging import Messaging
from infra.nag import acknowledge, acknowledge_invoke_versions
from tessera.maintenance.workflows import WORKFLOWS, Workflow, state_machine_definition


def construct_id(wf: Workflow) -> str:
    """The construct id of a workflow's resources: its function's name in CamelCase
    (`cold_storage` → `ColdStorage`)."""
    return "".join(part.title() for part in wf.function.split("_"))


NOTIFY_STATE = "NotifyFailure"
FAILED_STATE = "Failed"


def with_failure_alarm(asl: dict[str, Any], topic_arn: str, workflow: str) -> dict[str, Any]:
    """`asl` with a Catch on every Task: publish the error to `topic_arn`, then fail the run.

    (The Tasks' own Retry handles transient errors first; what is left is a real failure.)
    """
    states = {name: dict(state) for name, state in asl["States"].items()}
    if NOTIFY_STATE in states or FAILED_STATE in states:
        raise ValueError(f"{workflow}: state names {NOTIFY_STATE}/{FAILED_STATE} are reserved")
    for state in states.values():
        if state["Type"] == "Task":
            state["Catch"] = [
                {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": NOTIFY_STATE}
            ]
    states[NOTIFY_STATE] = {
        "Type": "Task",
        "Resource": "arn:aws:states:::sns:publish",
        "Parameters": {
            "TopicArn": topic_arn,
            "Subject": f"Tessera maintenance workflow {workflow} failed",
            "Message": {
                "workflow": workflow,
                "execution.$": "$$.Execution.Id",
                "error.$": "$.error",
            },
        },
        "ResultPath": None,
        "Next": FAILED_STATE,
    }
    states[FAILED_STATE] = {"Type": "Fail", "Error": f"{workflow}.Failed"}
    return {**asl, "States": states}


class Workflows(Construct):
    """`state_machines` by workflow id, their `schedules`, and the relay schedule."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StageConfig,
        functions: Mapping[str, lambda_.IFunction],
        relay: lambda_.IFunction,
        messaging: Messaging,
    ) -> None:
        super().__init__(scope, id)
        self.state_machines: dict[str, sfn.StateMachine] = {}
        self.schedules: dict[str, scheduler.Schedule] = {}
        schedule_dlq = messaging.dead_letter_queue("ScheduleDlq", purpose="the schedules")
        # One role for every schedule; each target adds exactly its own permission to it.
        self.scheduler_role = iam.Role(
            self,
            "SchedulerRole",
            assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
            description="EventBridge Scheduler: start the maintenance runs and the relay",
        )
        # Scheduler delivers dead-letter events with this role, and the queue is encrypted
        # with the messaging key: without these, failed runs would be dropped, not queued.
        messaging.key.grant(self.scheduler_role, "kms:GenerateDataKey", "kms:Decrypt")
        for wf in WORKFLOWS.values():
            wf_id = construct_id(wf)
            machine = self._state_machine(config, wf, functions[wf.function], messaging)
            self.state_machines[wf_id] = machine
            self.schedules[wf_id] = scheduler.Schedule(
                self,
                f"{wf_id}Schedule",
                description=f"Tessera {config.stage}: {wf.name} ({wf.schedule}): {wf.description}",
                schedule=scheduler.ScheduleExpression.expression(wf.schedule),
                target=scheduler_targets.StepFunctionsStartExecution(
                    machine,
                    # The execution input; a step reads `as_of` from it (absent: now).
                    input=scheduler.ScheduleTargetInput.from_object({"trigger": "schedule"}),
                    dead_letter_queue=schedule_dlq,
                    role=self.scheduler_role,
                    retry_attempts=3,
                    max_event_age=Duration.hours(1),
                ),
            )
        self.relay_schedule = scheduler.Schedule(
            self,
            "OutboxRelaySchedule",
            description=f"Tessera {config.stage}: outbox relay sweep every minute",
            schedule=scheduler.ScheduleExpression.rate(Duration.minutes(1)),
            target=scheduler_targets.LambdaInvoke(
                relay,
                input=scheduler.ScheduleTargetInput.from_object({"trigger": "schedule"}),
                dead_letter_queue=schedule_dlq,
                role=self.scheduler_role,
                # The next sweep a minute later does the same work: do not pile up retries.
                retry_attempts=1,
                max_event_age=Duration.minutes(2),
            ),
        )
        acknowledge_invoke_versions(self.scheduler_role, relay, "the scheduler")

    def _state_machine(
        self,
        config: StageConfig,
        wf: Workflow,
        function: lambda_.IFunction,
        messaging: Messaging,
    ) -> sfn.StateMachine:
        wf_id = construct_id(wf)
        topic: sns.ITopic = messaging.alarm_topic
        asl = with_failure_alarm(
            state_machine_definition(wf.name, function.function_arn), topic.topic_arn, wf.name
        )
        log_group = logs.LogGroup(
            self,
            f"{wf_id}Logs",
            retention=retention(config),
            removal_policy=RemovalPolicy.DESTROY,
        )
        machine = sfn.StateMachine(
            self,
            wf_id,
            state_machine_name=f"{config.prefix}-{wf.function.replace('_', '-')}",
            definition_body=sfn.DefinitionBody.from_string(json.dumps(asl)),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=False
            ),
        )
        # A definition from a string carries no grants: invoke the one function, publish to
        # the one topic (encrypted with the messaging key).
        # (Not `topic.grant_publish`: it also grants kms:GenerateDataKey* and ReEncrypt*.)
        function.grant_invoke(machine)
        machine.add_to_role_policy(
            iam.PolicyStatement(actions=["sns:Publish"], resources=[topic.topic_arn])
        )
        messaging.key.grant(machine, "kms:GenerateDataKey", "kms:Decrypt")
        acknowledge_invoke_versions(machine, function, f"the {wf.name} state machine")
        acknowledge(
            machine,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments/PutTelemetryRecords/GetSampling* and CloudWatch Logs "
            "vended log delivery support no resource-level permissions (tracing, logging)",
        )
        failed = cloudwatch.Alarm(
            self,
            f"{wf_id}FailedAlarm",
            alarm_description=f"{wf.name} maintenance runs failed",
            metric=machine.metric_failed(period=Duration.minutes(5), statistic="Sum"),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        failed.add_alarm_action(messaging.alarm_action)
        return machine
