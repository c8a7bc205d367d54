"""The maintenance workflows as data: each one's name, ordered steps and retry policy.

One description serves both runners: the local runner (`tessera.maintenance.runner`) walks
the steps in order, re-invoking a step while it reports `more`; `state_machine_definition`
turns the same description into Amazon States Language for Step Functions, whose Task
states invoke the workflow's Lambda function (`functions/<function>/handler.py`) with
`{"step": "<step name>", "input": <execution input>}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Step:
    """One step of a workflow: a Lambda invocation that processes one bounded batch."""

    name: str
    description: str
    # The Settings field holding how often the local scheduler also runs this step on its
    # own (seconds): where AWS triggers it from a queue, on events the laptop has no bus for
    setting: str | None = None


@dataclass(frozen=True)
class Workflow:
    """A maintenance workflow: its steps run in order, each until it reports no `more`."""

    name: str  # `tessera admin run <name>`
    function: str  # folder under functions/ holding its Lambda handler
    description: str
    steps: tuple[Step, ...]
    schedule: str  # its EventBridge Scheduler expression on AWS (the one home of it)
    setting: str  # the Settings field holding the local scheduler's interval (seconds)
    # Its steps decrypt stored blocks: its function is given the block keys (infra), and
    # compares them with the recorded fingerprints at its cold start (`lambdas`)
    decodes_blocks: bool = False

    def step(self, name: str) -> Step:
        """The step called `name`; KeyError naming the valid steps otherwise."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"workflow {self.name!r} has no step {name!r}; steps: {self.step_names}")

    @property
    def step_names(self) -> list[str]:
        """The names of the steps, in order."""
        return [s.name for s in self.steps]


WORKFLOWS: dict[str, Workflow] = {
    w.name: w
    for w in (
        Workflow(
            name="dedup",
            function="dedup_verify",
            description="Verify staged block copies; promote, drop as duplicate or quarantine.",
            steps=(Step("verify", "decode each staged copy (decrypt, decompress, re-hash)"),),
            schedule="rate(1 hour)",  # a sweep: the dedup queue triggers it for each commit
            setting="dedup_interval_s",
            decodes_blocks=True,
        ),
        Workflow(
            name="gc",
            function="gc",
            description=(
                "Purge old trash and versions, expire uploads, delete unreferenced blocks,"
                " correct quota counters."
            ),
            steps=(
                Step("purge_trash", "delete files in the trash past the trash retention"),
                Step("purge_versions", "delete non-latest versions past the version retention"),
                Step("expire_uploads", "expire abandoned upload sessions and their staged copies"),
                Step("expire_idempotency_keys", "delete idempotency keys past the retention"),
                Step("expire_run_records", "delete records of maintenance runs past the retention"),
                Step("delete_blocks", "delete blocks at refcount 0 past the grace period"),
                Step("recount_usage", "correct namespaces whose quota counter drifted"),
            ),
            schedule="cron(15 3 * * ? *)",  # daily, 03:15 UTC
            setting="gc_interval_s",
        ),
        Workflow(
            name="cold",
            function="cold_storage",
            description="Move blocks unread for N days to the cold tier; finish restores.",
            steps=(
                Step(
                    "complete_restores", "mark restored blocks live again (re-issue lost restores)"
                ),
                Step("move_cold", "move blocks unread past the threshold to the cold tier"),
            ),
            # daily, 04:15 UTC: S3's restore-completed events settle restores in between
            schedule="cron(15 4 * * ? *)",
            setting="cold_interval_s",
            decodes_blocks=True,
        ),
        Workflow(
            name="scrub",
            function="scrub",
            description=(
                "Check reported blocks and that every block's object is there; re-verify a"
                " sample; report and repair damage."
            ),
            steps=(
                Step(
                    "reported",
                    "check the blocks clients reported unreadable, repair what fails",
                    setting="reported_interval_s",
                ),
                Step("inventory", "list every block's object beside its row, repair what lacks"),
                Step("scrub", "re-verify a sample of live blocks, repair from duplicates"),
            ),
            # weekly, Sunday 05:15 UTC: the scrub queue triggers `reported` for each report
            schedule="cron(15 5 ? * SUN *)",
            setting="scrub_interval_s",
            decodes_blocks=True,
        ),
    )
}

# Errors worth retrying inside the state machine (by class name, which Lambda reports as
# the error type; Step Functions matches names, not their bases): Lambda's own transient
# failures, a step that lost a race for a lock, and the database out of reach for a moment
# (a failover, a proxy that could not lend a connection, a connection it cut), which
# failed a whole daily run and paged; anything else fails the run.
RETRYABLE = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
    "Lambda.ClientExecutionTimeoutException",
    "LockNotAvailable",
    "DeadlockDetected",
    "SerializationFailure",
    "PoolTimeout",
    "OperationalError",
    "Unavailable",  # the same, through `Database.transaction` (the key check at a start)
    "ConnectionTimeout",
    "AdminShutdown",
    "CrashShutdown",
    "CannotConnectNow",
    "ConnectionException",
    "ConnectionFailure",
    "SqlclientUnableToEstablishSqlconnection",
]


def is_retryable(error: BaseException) -> bool:
    """Whether a step failing with `error` is retried (Step Functions matches the class
    name alone, not its bases)."""
    return type(error).__name__ in RETRYABLE


def workflow(name: str) -> Workflow:
    """The workflow called `name`; KeyError naming the valid ones otherwise."""
    try:
        return WORKFLOWS[name]
    except KeyError:
        raise KeyError(f"no workflow {name!r}; workflows: {sorted(WORKFLOWS)}") from None


def state_machine_definition(name: str, function_arn: str) -> dict[str, Any]:
    """Amazon States Language for workflow `name`, invoking the Lambda at `function_arn`.

    Each step is a Task (payload `{"step", "input": <execution input>}`, result kept under
    `$.results.<step>`), retried with backoff on transient errors, followed by a Choice that
    loops back while the step's result says `more` is true. The execution input may carry
    `as_of` (ISO-8601) to act as if at another time.
    """
    wf = workflow(name)
    states: dict[str, Any] = {}
    for i, step in enumerate(wf.steps):
        nxt = wf.steps[i + 1].name if i + 1 < len(wf.steps) else "Done"
        task, choice = f"{step.name}", f"{step.name}_more?"
        states[task] = {
            "Type": "Task",
            "Comment": step.description,
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {
                "FunctionName": function_arn,
                "Payload": {"step": step.name, "input.$": "$$.Execution.Input"},
            },
            "ResultSelector": {"result.$": "$.Payload"},
            "ResultPath": f"$.results.{step.name}",
            "Retry": [
                {
                    "ErrorEquals": RETRYABLE,
                    "IntervalSeconds": 2,
                    "MaxAttempts": 6,
                    "BackoffRate": 2.0,
                    "JitterStrategy": "FULL",
                }
            ],
            "Next": choice,
        }
        states[choice] = {
            "Type": "Choice",
            "Choices": [
                {
                    "Variable": f"$.results.{step.name}.result.more",
                    "BooleanEquals": True,
                    "Next": task,
                }
            ],
            "Default": nxt,
        }
    states["Done"] = {"Type": "Succeed"}
    return {
        "Comment": f"Tessera maintenance: {wf.description}",
        "StartAt": wf.steps[0].name,
        "States": states,
        "TimeoutSeconds": 6 * 3600,
    }
