"""The maintenance workflows as data, their results, and event/settings parsing (no I/O)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tessera.domain.errors import BadRequest, Unavailable
from tessera.domain.object_keys import canonical_block_id, quarantine_key
from tessera.maintenance import (
    WORKFLOWS,
    DedupResult,
    GcResult,
    MaintenanceSettings,
    canonical_key,
    parse_as_of,
    state_machine_definition,
)
from tessera.maintenance.context import MaintenanceContext
from tessera.maintenance.lambdas import make_handler
from tessera.maintenance.runner import RESULTS, STEPS, _bodies, _named, _restored_block
from tessera.maintenance.workflows import RETRYABLE, is_retryable, workflow
from tessera.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_step_has_an_implementation_and_every_workflow_a_function() -> None:
    declared = {(w.name, s.name) for w in WORKFLOWS.values() for s in w.steps}
    assert declared == set(STEPS)
    assert set(RESULTS) == set(WORKFLOWS)
    for wf in WORKFLOWS.values():
        handler = ROOT / "functions" / wf.function / "handler.py"
        assert handler.is_file(), handler
        assert f'make_handler("{wf.name}")' in handler.read_text()
        assert hasattr(MaintenanceSettings(), wf.setting)


def _failing_with(code: str) -> Callable[[], MaintenanceContext]:
    def build() -> MaintenanceContext:
        raise ClientError({"Error": {"Code": code, "Message": code}}, "GetParametersByPath")

    return build


def test_an_aws_service_failing_for_a_while_fails_a_step_by_a_name_it_retries() -> None:
    """botocore's `ClientError` is no name the state machine retries: one SSM throttle (a
    scale-out's cold starts each list the key versions) failed the whole run and paged."""
    throttled = make_handler("gc", build=_failing_with("ThrottlingException"))
    with pytest.raises(Unavailable, match="ThrottlingException") as raised:
        throttled({"step": "purge_trash", "input": {}}, None)
    assert is_retryable(raised.value)
    assert "ClientError" not in RETRYABLE  # (so the name matters)
    refused = make_handler("gc", build=_failing_with("AccessDeniedException"))
    with pytest.raises(ClientError):  # a bug in the grants: failed at once, as before
        refused({"step": "purge_trash", "input": {}}, None)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_state_machine_walks_each_step_and_loops_while_more(name: str) -> None:
    arn = "arn:aws:lambda:eu-west-1:123456789012:function:tessera-" + name
    asl = state_machine_definition(name, arn)
    json.dumps(asl)  # serialisable as the definition body
    steps = WORKFLOWS[name].step_names
    assert asl["StartAt"] == steps[0]
    states = asl["States"]
    for i, step in enumerate(steps):
        task = states[step]
        assert task["Type"] == "Task"
        assert task["Parameters"]["FunctionName"] == arn
        assert task["Parameters"]["Payload"]["step"] == step
        assert task["Parameters"]["Payload"]["input.$"] == "$$.Execution.Input"
        assert "LockNotAvailable" in task["Retry"][0]["ErrorEquals"]
        choice = states[task["Next"]]
        assert choice["Type"] == "Choice"
        assert choice["Choices"][0]["Next"] == step  # loop while `more`
        assert choice["Choices"][0]["Variable"].endswith(".more")
        assert choice["Default"] == (steps[i + 1] if i + 1 < len(steps) else "Done")
    assert states["Done"] == {"Type": "Succeed"}
    # every Next / Default points at a state that exists
    targets = {t["Next"] for t in states.values() if "Next" in t}
    targets |= {t["Default"] for t in states.values() if "Default" in t}
    assert targets <= set(states)


def test_unknown_workflow_and_step_name_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="workflows: \\['cold', 'dedup', 'gc', 'scrub'\\]"):
        workflow("compact")
    with pytest.raises(KeyError, match="steps: \\['verify'\\]"):
        WORKFLOWS["dedup"].step("sweep")


def test_results_sum_across_batches() -> None:
    total = GcResult()
    total.add(GcResult(more=True, blocks_deleted=3, bytes_freed=100, errors=["x"]))
    total.add(GcResult(more=False, blocks_deleted=2, bytes_freed=50))
    assert (total.blocks_deleted, total.bytes_freed, total.more, total.errors) == (
        5,
        150,
        False,
        ["x"],
    )
    counters = DedupResult(promoted=1).counters()
    assert counters["promoted"] == 1 and "more" not in counters and "errors" not in counters
    assert DedupResult(dropped=2).to_dict()["dropped"] == 2


def test_a_result_reports_its_first_errors_and_counts_the_rest() -> None:
    """A step's answer lives in Step Functions' state (256 KB at most): an inventory that
    met thousands of lost blocks failed its run on its own report."""
    errors = [f"b3:{n:064x}: missing (no duplicate or earlier version)" for n in range(5000)]
    reported = GcResult(errors=errors).to_dict()
    assert reported["errors"][:50] == errors[:50]
    assert reported["errors"][50:] == ["... and 4950 more"]
    assert len(json.dumps(reported)) < 16_000
    assert GcResult(errors=errors[:50]).to_dict()["errors"] == errors[:50]


def test_as_of_is_iso_8601_in_utc_and_not_later_than_now_unless_allowed() -> None:
    now = datetime(2027, 6, 1, tzinfo=UTC)
    assert parse_as_of(None, now=now) is None and parse_as_of("", now=now) is None
    assert parse_as_of("2027-01-02T03:04:05Z", now=now) == datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_as_of("2027-01-02", now=now) == datetime(2027, 1, 2, tzinfo=UTC)
    with pytest.raises(BadRequest, match="ISO-8601"):
        parse_as_of("next tuesday", now=now)
    with pytest.raises(BadRequest, match="in the future"):
        parse_as_of("2072-01-02", now=now)
    assert parse_as_of("2072-01-02", now=now, allow_future=True) == datetime(2072, 1, 2, tzinfo=UTC)


def test_queue_messages_name_upload_sessions() -> None:
    records = [
        {"body": json.dumps({"upload_id": "up_a"})},
        {"body": json.dumps({"detail": {"upload_id": "up_b"}})},
        {"body": json.dumps({"detail": {"payload": {"upload_id": "up_c"}}})},
        {"body": json.dumps({"detail": {"payload": {"upload_id": "up_a"}}})},
        {"body": "not json"},
        {"body": json.dumps(["a list"])},
        {"body": json.dumps({"detail": {"upload_id": 7}})},
        {  # what the server core's commit event looks like on the bus
            "body": json.dumps(
                {
                    "detail-type": "file",
                    "detail": {
                        "kind": "file",
                        "payload": {"op": "commit", "upload_ids": ["up_d", "up_e", 5]},
                    },
                }
            )
        },
    ]
    assert _named(_bodies(records), "upload_id") == ["up_a", "up_b", "up_c", "up_d", "up_e"]
    assert _bodies("garbage") == []


def _restore_event(key: object, detail_type: str = "Object Restore Completed") -> dict[str, Any]:
    """An S3 event as EventBridge puts it on a queue (only the fields Tessera reads vary)."""
    return {
        "version": "0",
        "source": "aws.s3",
        "detail-type": detail_type,
        "detail": {
            "version": "0",
            "bucket": {"name": "tessera-dev-blocks-123456789012-eu-west-1"},
            "object": {"key": key, "size": 1048, "etag": "x"},
            "source-storage-class": "GLACIER",
        },
    }


def test_restore_events_name_canonical_blocks_only() -> None:
    hex_id = "ab" * 32
    assert _restored_block(_restore_event("blocks/" + hex_id)) == "b3:" + hex_id
    assert _restored_block(_restore_event(f"staging/up_1/00000001-{hex_id}")) is None
    assert _restored_block(_restore_event("blocks/" + "zz" * 32)) is None
    assert _restored_block(_restore_event("blocks/" + hex_id + "/x")) is None
    assert _restored_block(_restore_event(7)) is None
    assert _restored_block(_restore_event("blocks/" + hex_id, "Object Created")) is None
    assert _restored_block({**_restore_event("blocks/" + hex_id), "source": "tessera"}) is None
    assert _restored_block({**_restore_event("blocks/" + hex_id), "detail": "x"}) is None


def test_settings_widen_the_server_settings_from_the_environment() -> None:
    base = Settings(trash_retention_days=7, upload_ttl_s=60)
    env = {"TESSERA_GC_GRACE_HOURS": "2", "TESSERA_COLD_AFTER_DAYS": "10"}
    widened = MaintenanceSettings.widen(base, env)
    assert (widened.trash_retention_days, widened.upload_ttl_s) == (7, 60)
    assert (widened.gc_grace_hours, widened.cold_after_days) == (2, 10)
    assert MaintenanceSettings.widen(widened, {}) is widened
    with pytest.raises(ValueError, match="TESSERA_GC_GRACE_HOURS"):
        MaintenanceSettings.widen(base, {"TESSERA_GC_GRACE_HOURS": "a day"})


def test_store_keys() -> None:
    bid = "b3:" + "ab" * 32
    assert canonical_key(bid) == "blocks/" + "ab" * 32
    assert canonical_block_id(canonical_key(bid)) == bid
    assert canonical_block_id("landing/blocks/" + "ab" * 32) is None
    assert quarantine_key("staging/up_1/" + "ab" * 32) == "quarantine/up_1/" + "ab" * 32


def test_settled_copy_grace_must_outlast_presigned_urls() -> None:
    assert MaintenanceSettings().settled_copy_grace_s >= 20 * 60
    with pytest.raises(ValueError, match="settled_copy_grace_s"):
        MaintenanceSettings(settled_copy_grace_s=900, presign_ttl_s=900)
    with pytest.raises(ValueError, match="settled_copy_grace_s"):
        MaintenanceSettings.from_env({"TESSERA_SETTLED_COPY_GRACE_S": "60"})
    assert (
        MaintenanceSettings.from_env({"TESSERA_SETTLED_COPY_GRACE_S": "3600"}).settled_copy_grace_s
        == 3600
    )
