"""Running steps and workflows: the one entry point of the CLI, the scheduler and Lambda.

`run_step` runs one step once (one bounded batch of work: a Step Functions Task);
`run_workflow` runs every step of a workflow until none reports `more` (the local runner);
`handle_event` is what each Lambda handler calls with its event.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from tessera.domain.errors import BadRequest
from tessera.domain.object_keys import canonical_block_id

from . import cold, dedup, gc, scrub
from .context import MaintenanceContext, log
from .results import ColdResult, DedupResult, GcResult, ScrubResult, StepResult
from .workflows import workflow

StepFn = Callable[[MaintenanceContext, datetime], StepResult]

STEPS: dict[tuple[str, str], StepFn] = {
    ("dedup", "verify"): dedup.verify_staged,
    ("gc", "purge_trash"): gc.purge_trash,
    ("gc", "purge_versions"): gc.purge_versions,
    ("gc", "expire_uploads"): gc.expire_uploads,
    ("gc", "expire_idempotency_keys"): gc.expire_idempotency_keys,
    ("gc", "expire_run_records"): gc.expire_run_records,
    ("gc", "delete_blocks"): gc.delete_blocks,
    ("gc", "recount_usage"): gc.recount_usage,
    ("cold", "complete_restores"): cold.complete_restores,
    ("cold", "move_cold"): cold.move_cold,
    ("scrub", "reported"): scrub.reported,
    ("scrub", "inventory"): scrub.inventory,
    ("scrub", "scrub"): scrub.scrub,
}

RESULTS: dict[str, type[StepResult]] = {
    "dedup": DedupResult,
    "gc": GcResult,
    "cold": ColdResult,
    "scrub": ScrubResult,
}


def parse_as_of(value: str | None, *, now: datetime, allow_future: bool = False) -> datetime | None:
    """An ISO-8601 instant (naive means UTC); BadRequest when it is not one, or when it is
    later than `now` without `allow_future`: a run as of then is not a preview, it deletes
    now the trash and versions kept until then."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"as_of {value!r} is not an ISO-8601 date/time") from exc
    when = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if when > now and not allow_future:
        raise BadRequest(
            f"as_of {value} is in the future: the run would delete now what is kept until "
            "then (allow the future explicitly if that is what you want)"
        )
    return when


def run_step(
    ctx: MaintenanceContext, name: str, step: str, *, as_of: datetime | None = None
) -> StepResult:
    """Run one step of workflow `name` once; logs and records what it did."""
    workflow(name).step(step)  # KeyError naming the valid ones
    started = ctx.clock.now()
    when = as_of or started
    result = STEPS[(name, step)](ctx, when)
    summary = result.to_dict()
    log.info("maintenance %s.%s as of %s: %s", name, step, when.isoformat(), json.dumps(summary))
    with ctx.repo.transaction() as tx:
        tx.record_run(name, step, as_of=when, started_at=started, result=summary)
    return result


def run_workflow(
    ctx: MaintenanceContext, name: str, *, as_of: datetime | None = None
) -> StepResult:
    """Run every step of workflow `name`, each until it has nothing left; the summed result.

    When `ctx.stopping` is set, the run ends after the step in progress, with `more` set:
    the next run picks up what is left."""
    wf = workflow(name)
    total = RESULTS[name]()
    when = as_of or ctx.clock.now()
    for step in wf.step_names:
        while True:
            result = run_step(ctx, name, step, as_of=when)
            total.add(result)
            if not result.more:
                break
            if ctx.stopping.is_set():
                total.more = True
                return total
    total.more = False
    return total


def handle_event(ctx: MaintenanceContext, name: str, event: Mapping[str, Any]) -> dict[str, Any]:
    """A Lambda invocation of workflow `name`'s function.

    - `{"step": S, "input": {"as_of"?: ISO}}` (Step Functions Task): run step S once;
      the result says `more` when the state machine should invoke it again.
    - `{}` or `{"as_of"?}` (direct invoke): run the whole workflow.
    - an SQS batch (`Records`): for dedup, verify the staged copies of the upload
      sessions named in the messages (`upload_id` in the body or its `detail`), or all;
      for cold, settle the restores S3 reported done (EventBridge's "Object Restore
      Completed" events, one a message); for scrub, check the blocks clients reported
      unreadable (`block_reported` events), or every pending report.

    An `as_of` in the future is refused unless `"allow_future": true` comes with it.
    """
    if "Records" in event:
        take = QUEUED.get(name)
        if take is None:
            raise BadRequest(f"{name} is not triggered by a queue")
        return take(ctx, _bodies(event["Records"])).to_dict()
    raw_input = event.get("input")
    params: Mapping[str, Any] = raw_input if isinstance(raw_input, Mapping) else event
    as_of = parse_as_of(
        params.get("as_of"), now=ctx.clock.now(), allow_future=params.get("allow_future") is True
    )
    step = event.get("step")
    if step is None:
        return run_workflow(ctx, name, as_of=as_of).to_dict()
    if not isinstance(step, str):
        raise BadRequest(f"step must be a string, not {step!r}")
    try:
        return run_step(ctx, name, step, as_of=as_of).to_dict()
    except KeyError as exc:
        raise BadRequest(str(exc.args[0])) from exc


def _bodies(records: Any) -> list[dict[str, Any]]:
    """The JSON object each SQS record carries; unreadable ones are left out."""
    out: list[dict[str, Any]] = []
    for record in records if isinstance(records, list) else []:
        try:
            body = json.loads(record.get("body") or "{}")
        except (ValueError, AttributeError):
            continue
        if isinstance(body, dict):
            out.append(body)
    return out


def _verify_named_uploads(ctx: MaintenanceContext, bodies: list[dict[str, Any]]) -> StepResult:
    """dedup-verify the upload sessions the messages name; nothing when they name none.

    Every file event reaches the queue (deletes, moves, folders, commits of blocks already
    stored), and one naming no session had set off a sweep of every staged copy (up to
    25,000 reads), racing the runs the uploads' own events started. What no event names,
    the hourly sweep verifies."""
    uploads = _named(bodies, "upload_id")
    if not uploads:
        return DedupResult()
    return dedup.verify_staged(ctx, ctx.clock.now(), upload_ids=uploads)


class ReportsLeft(Exception):
    """A queue batch's reports outlasted the step's budget, or a check failed: failing the
    invocation has SQS deliver the batch again after its visibility timeout (the reports
    checked by then are not checked twice; after five tries it goes to the dead-letter
    queue, alarmed), where returning would have left the rest for the weekly run. A verdict
    is no failure: a block found beyond repair (quarantined, its holders told) is done."""


def _check_reported_blocks(ctx: MaintenanceContext, bodies: list[dict[str, Any]]) -> StepResult:
    """Check the reported blocks the messages name, or every pending report if none."""
    blocks = _named(bodies, "block_id")
    result = scrub.reported(ctx, ctx.clock.now(), block_ids=blocks or None)
    if result.more or result.put_off:
        raise ReportsLeft(f"reports left after {result.checked} checks: {result.to_dict()}")
    return result


def _named(bodies: list[dict[str, Any]], field: str) -> list[str]:
    """The ids SQS messages name: a `<field>`, or a list `<field>s` (a commit's event
    names its `upload_ids`), at the top of the body, in its EventBridge `detail` or the
    change's `payload`."""
    ids: set[str] = set()
    for body in bodies:
        detail = body.get("detail")
        payload = detail.get("payload") if isinstance(detail, dict) else None
        for source in (body, detail, payload):
            if not isinstance(source, dict):
                continue
            named = source.get(field + "s")
            for value in [source.get(field), *(named if isinstance(named, list) else [])]:
                if isinstance(value, str):
                    ids.add(value)
    return sorted(ids)


RESTORE_COMPLETED = "Object Restore Completed"  # S3's EventBridge detail-type


def _settle_reported_restores(ctx: MaintenanceContext, bodies: list[dict[str, Any]]) -> StepResult:
    """Settle the blocks whose restore S3 reported done."""
    ids = [block_id for body in bodies if (block_id := _restored_block(body)) is not None]
    return cold.settle_reported_restores(ctx, ids, ctx.clock.now())


def _restored_block(body: dict[str, Any]) -> str | None:
    """The block an S3 "Object Restore Completed" event names; None for any other event or
    key (a staged copy never goes cold)."""
    if body.get("source") != "aws.s3" or body.get("detail-type") != RESTORE_COMPLETED:
        return None
    detail = body.get("detail")
    obj = detail.get("object") if isinstance(detail, dict) else None
    key = obj.get("key") if isinstance(obj, dict) else None
    return canonical_block_id(key) if isinstance(key, str) else None


QueueHandler = Callable[[MaintenanceContext, list[dict[str, Any]]], StepResult]
#: the workflows a queue triggers, and what each does with a batch of message bodies
QUEUED: dict[str, QueueHandler] = {
    "dedup": _verify_named_uploads,
    "cold": _settle_reported_restores,
    "scrub": _check_reported_blocks,
}
