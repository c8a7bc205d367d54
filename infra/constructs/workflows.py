"""Maintenance workflows: one Step Functions state machine per workflow, EventBridge Scheduler
schedules for them and for the outbox relay, and the dedup queue → dedup-verify pipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_pipes as pipes
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from infra.config import StageConfig, retention
from infra.constructs.messaging import Messaging
from infra.nag import acknowledge, acknowledge_invoke_versions


@dataclass(frozen=True)
class Workflow:
    """A maintenance workflow: its Lambda function (folder name), its steps, and its schedule.

    Each step invokes the function with `{"step": <step>, "workflow", "as_of", "input",
    "execution"}`; steps run in order.
    """

    name: str
    function: str
    steps: Sequence[str]
    schedule: scheduler.ScheduleExpression
    description: str


WORKFLOWS: tuple[Workflow, ...] = (
    Workflow(
        "DedupVerify",
        "dedup_verify",
        ["dedup_verify"],
        scheduler.ScheduleExpression.rate(Duration.hours(1)),
        "hourly sweep of staged blocks (the dedup queue also starts runs after commits)",
    ),
    Workflow(
        "Gc",
        "gc",
        ["gc"],
        scheduler.ScheduleExpression.cron(hour="3", minute="15"),
        "daily garbage collection",
    ),
    Workflow(
        "ColdStorage",
        "cold_storage",
        ["cold_storage"],
        scheduler.ScheduleExpression.cron(hour="4", minute="15"),
        "daily move of unread blocks to Glacier Flexible Retrieval",
    ),
    Workflow(
        "Scrub",
        "scrub",
        ["scrub"],
        scheduler.ScheduleExpression.cron(week_day="SUN", hour="5", minute="15"),
        "weekly re-verification of a sample of stored blocks",
    ),
)

# Lambda's own limit is 15 minutes per invocation; a whole run may chain several steps.
STATE_MACHINE_TIMEOUT = Duration.hours(2)


class Workflows(Construct):
    """`state_machines` by workflow name, their `schedules`, the relay schedule, the dedup pipe."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StageConfig,
        functions: Mapping[str, lambda_.IFunction],
        relay: lambda_.IFunction,
        dedup_queue: sqs.IQueue,
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
        for wf in WORKFLOWS:
            machine = self._state_machine(config, wf, functions[wf.function], messaging)
            self.state_machines[wf.name] = machine
            self.schedules[wf.name] = scheduler.Schedule(
                self,
                f"{wf.name}Schedule",
                description=f"Tessera {config.stage}: {wf.description}",
                schedule=wf.schedule,
                target=scheduler_targets.StepFunctionsStartExecution(
                    machine,
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
        self.dedup_pipe = self._queue_to_state_machine(
            dedup_queue, self.state_machines["DedupVerify"]
        )

    def _state_machine(
        self,
        config: StageConfig,
        wf: Workflow,
        function: lambda_.IFunction,
        messaging: Messaging,
    ) -> sfn.StateMachine:
        notify = tasks.SnsPublish(
            self,
            f"{wf.name}Alarm",
            topic=messaging.alarm_topic,
            subject=f"Tessera {config.stage}: {wf.function} failed",
            message=sfn.TaskInput.from_object(
                {
                    "workflow": wf.function,
                    "execution": sfn.JsonPath.string_at("$$.Execution.Id"),
                    "error": sfn.JsonPath.object_at("$.error"),
                }
            ),
            result_path=sfn.JsonPath.DISCARD,
        ).next(sfn.Fail(self, f"{wf.name}Failed", error=f"{wf.function}.Failed"))
        chain: sfn.IChainable | None = None
        last: sfn.INextable | None = None
        for step in wf.steps:
            task = tasks.LambdaInvoke(
                self,
                f"{wf.name}-{step}",
                lambda_function=function,
                payload=sfn.TaskInput.from_object(
                    {
                        "step": step,
                        "workflow": wf.function,
                        "as_of": sfn.JsonPath.string_at("$$.Execution.StartTime"),
                        "execution": sfn.JsonPath.string_at("$$.Execution.Id"),
                        "input": sfn.JsonPath.entire_payload,
                    }
                ),
                payload_response_only=True,
                result_path=f"$.results.{step}",
                retry_on_service_exceptions=True,
            )
            # Every step is idempotent (issue 6), so retrying a failed run is always safe.
            task.add_retry(
                errors=["States.ALL"],
                interval=Duration.seconds(30),
                max_attempts=3,
                backoff_rate=2,
                jitter_strategy=sfn.JitterType.FULL,
            )
            task.add_catch(notify, errors=["States.ALL"], result_path="$.error")
            if last is None:
                chain = task
            else:
                last.next(task)
            last = task
        assert chain is not None and last is not None, f"{wf.name} has no steps"
        last.next(sfn.Succeed(self, f"{wf.name}Done"))
        log_group = logs.LogGroup(
            self,
            f"{wf.name}Logs",
            retention=retention(config),
            removal_policy=RemovalPolicy.DESTROY,
        )
        machine = sfn.StateMachine(
            self,
            wf.name,
            state_machine_name=f"{config.prefix}-{wf.function.replace('_', '-')}",
            definition_body=sfn.DefinitionBody.from_chainable(chain),
            timeout=STATE_MACHINE_TIMEOUT,
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=False
            ),
        )
        acknowledge_invoke_versions(machine, function, f"the {wf.function} state machine")
        acknowledge(
            machine,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments/PutTelemetryRecords/GetSampling* support no resource-level "
            "permissions (state machine tracing)",
        )
        failed = cloudwatch.Alarm(
            self,
            f"{wf.name}FailedAlarm",
            alarm_description=f"{wf.function} runs failed",
            metric=machine.metric_failed(period=Duration.minutes(5), statistic="Sum"),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        failed.add_alarm_action(messaging.alarm_action)
        return machine

    def _queue_to_state_machine(
        self, queue: sqs.IQueue, machine: sfn.StateMachine
    ) -> pipes.CfnPipe:
        """Batches of dedup-queue messages each start one dedup-verify run (fire and forget:
        the run itself retries and alarms; the message is done once the run has started)."""
        role = iam.Role(
            self,
            "DedupPipeRole",
            assumed_by=iam.ServicePrincipal("pipes.amazonaws.com"),
            description="EventBridge Pipe: dedup queue to the dedup-verify state machine",
        )
        queue.grant_consume_messages(role)
        machine.grant_start_execution(role)
        pipe = pipes.CfnPipe(
            self,
            "DedupPipe",
            role_arn=role.role_arn,
            description="dedup queue to the dedup-verify state machine",
            source=queue.queue_arn,
            source_parameters=pipes.CfnPipe.PipeSourceParametersProperty(
                sqs_queue_parameters=pipes.CfnPipe.PipeSourceSqsQueueParametersProperty(
                    batch_size=100, maximum_batching_window_in_seconds=60
                )
            ),
            target=machine.state_machine_arn,
            target_parameters=pipes.CfnPipe.PipeTargetParametersProperty(
                step_function_state_machine_parameters=pipes.CfnPipe.PipeTargetStateMachineParametersProperty(
                    invocation_type="FIRE_AND_FORGET"
                ),
                input_template='{"trigger": "queue"}',
            ),
        )
        pipe.node.add_dependency(role.node.find_child("DefaultPolicy"))
        return pipe
