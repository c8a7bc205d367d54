"""The maintenance Lambda functions, called directly with real event shapes (moto does not
run Lambda code): S3 block store, KMS/SSM keys and the DynamoDB change feed on moto,
metadata in real PostgreSQL."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tessera.blocks import block_id
from tessera.domain.object_keys import canonical_key
from tessera.local.aws_mode import load_function
from tessera.maintenance.workflows import WORKFLOWS
from tessera.ports import StorageTier

from .aws.moto_env import shared_aws_settings
from .test_maintenance_world import (
    ALICE,
    BLOCK,
    BOB,
    World,
    make_world,
)

pytestmark = pytest.mark.aws


@pytest.fixture
def aws_world(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """A world on moto, with the Lambda environment of that deployment in os.environ."""
    from tessera.adapters.aws.wiring import AwsRuntime

    settings = replace(shared_aws_settings(), database_url=database_url)
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TESSERA_POOL_MIN_SIZE", "1")
    runtime = AwsRuntime(aws=settings)
    yield from make_world(
        database_url, tmp_path, store=runtime.block_store(), keys=runtime.key_service()
    )


def _stored_file(w: World, blocks: int) -> tuple[str, bytes, list[str]]:
    """Alice's verified file of `blocks` blocks: its path, its bytes, its block ids in
    id order."""
    data = secrets.token_bytes(blocks * BLOCK)
    path = f"/{secrets.token_hex(8)}.bin"
    w.put(ALICE, path, data)
    w.run("dedup")
    return path, data, [str(r[0]) for r in w.sql("SELECT block_id FROM blocks ORDER BY 1")]


def _handler(function: str) -> Any:
    module: ModuleType = load_function(function)  # a cold start
    return module.handler


def test_every_workflow_has_a_function() -> None:
    for wf in WORKFLOWS.values():
        assert callable(_handler(wf.function))


def test_dedup_function_from_the_queue_and_gc_steps_from_the_state_machine(
    aws_world: World,
) -> None:
    data = secrets.token_bytes(2 * BLOCK)
    path = f"/{secrets.token_hex(8)}.bin"
    aws_world.put(ALICE, path, data)
    aws_world.put(BOB, path, data)
    upload_ids = [str(r[0]) for r in aws_world.sql("SELECT DISTINCT upload_id FROM upload_blocks")]

    dedup = _handler("dedup_verify")
    # a file event naming no session (a delete, a move, a folder): nothing to verify. It
    # had set off a sweep of every staged copy
    for payload in ({"op": "delete"}, {"op": "commit", "upload_ids": []}):
        body = {"detail-type": "file", "detail": {"kind": "file", "payload": payload}}
        idle = dedup({"Records": [{"messageId": "0", "body": json.dumps(body)}]}, None)
        assert (idle["promoted"], idle["dropped"]) == (0, 0), idle
    # an SQS batch from the EventBridge rule (a commit event): only that session is verified
    payload = {"op": "commit", "upload_ids": [upload_ids[0]]}
    body = {"detail-type": "file", "detail": {"kind": "file", "payload": payload}}
    event = {"Records": [{"messageId": "1", "body": json.dumps(body)}]}
    first = dedup(event, None)
    assert (first["promoted"], first["dropped"]) == (2, 0)
    second = dedup({"step": "verify", "input": {}}, None)  # the scheduled sweep
    assert (second["promoted"], second["dropped"], second["more"]) == (0, 2, False)
    assert aws_world.get(BOB, path) == data

    gc = _handler("gc")
    as_of = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    for step in WORKFLOWS["gc"].step_names:
        result = gc({"step": step, "input": {"as_of": as_of, "allow_future": True}}, None)
        assert result["more"] is False and result["errors"] == []
    assert aws_world.get(ALICE, path) == data
    whole = gc({"as_of": as_of, "allow_future": True}, None)  # a direct invoke: all steps
    assert whole["blocks_deleted"] == 0


def restore_completed(key: str) -> dict[str, Any]:
    """An SQS record carrying S3's "Object Restore Completed" event for `key`, as the
    EventBridge rule puts it on the restores queue (AWS's documented event shape)."""
    event = {
        "version": "0",
        "id": secrets.token_hex(8),
        "detail-type": "Object Restore Completed",
        "source": "aws.s3",
        "account": "123456789012",
        "time": datetime.now(UTC).isoformat(),
        "region": "us-east-1",
        "resources": ["arn:aws:s3:::blocks"],
        "detail": {
            "version": "0",
            "bucket": {"name": "blocks"},
            "object": {"key": key, "size": 1024, "etag": "e"},
            "request-id": "r",
            "requester": "s3.amazonaws.com",
            "restore-expiry-time": "2026-12-04T00:00:00Z",
            "source-storage-class": "GLACIER",
        },
    }
    return {"messageId": secrets.token_hex(4), "body": json.dumps(event)}


def test_cold_storage_function_settles_the_restores_s3_reports(aws_world: World) -> None:
    """A restore S3 reports done (its event, by way of the queue) is settled at once: the
    block is copied back to STANDARD and live, where it waited for the daily run."""
    path, data, ids = _stored_file(aws_world, 2)
    cold = _handler("cold_storage")
    as_of = (datetime.now(UTC) + timedelta(days=91)).isoformat()
    cold({"step": "move_cold", "input": {"as_of": as_of, "allow_future": True}}, None)
    assert not isinstance(aws_world.get(ALICE, path), bytes)  # restores started
    keys = [canonical_key(i) for i in ids]

    reported = cold({"Records": [restore_completed(keys[0]), {"body": "not json"}]}, None)
    assert reported["restores_completed"] == 1
    states = aws_world.sql("SELECT state FROM blocks ORDER BY block_id")
    assert states == [("live",), ("restoring",)]
    head = aws_world.store.head(keys[0])
    assert head is not None and head.tier is StorageTier.HOT
    again = cold({"Records": [restore_completed(keys[0])]}, None)  # delivered twice
    assert again["restores_completed"] == 0

    cold({"Records": [restore_completed(keys[1])]}, None)
    assert aws_world.get(ALICE, path) == data


def test_scrub_function_repairs_blocks_from_the_buckets_earlier_versions(
    aws_world: World,
) -> None:
    """On the versioned bucket, a block deleted (a gc bug) and one overwritten with bad
    bytes are copied back from their noncurrent versions, not quarantined."""
    path, data, ids = _stored_file(aws_world, 2)
    deleted, overwritten = (canonical_key(i) for i in ids)
    aws_world.store.delete(deleted)
    aws_world.store.put(overwritten, b"not a block")

    result = _handler("scrub")({"step": "scrub", "input": {}}, None)
    assert (result["damaged"], result["repaired"], result["unrepaired"]) == (2, 2, 0)
    assert aws_world.get(ALICE, path) == data
    assert aws_world.sql("SELECT DISTINCT state FROM blocks") == [("live",)]


def test_scrub_functions_inventory_finds_a_deleted_block_among_the_listed(
    aws_world: World,
) -> None:
    """The inventory step pages through ListObjectsV2 from the pass's position."""
    path, data, ids = _stored_file(aws_world, 3)
    aws_world.store.delete(canonical_key(ids[2]))

    result = _handler("scrub")({"step": "inventory", "input": {}}, None)
    assert (result["inventoried"], result["damaged"], result["repaired"]) == (3, 1, 1)
    assert result["checked"] == 0 and result["more"] is False
    assert aws_world.get(ALICE, path) == data


def test_scrub_function_checks_the_blocks_clients_report_from_its_queue(
    aws_world: World,
) -> None:
    """A client's report of a block S3 lost reaches the scrub function as the bus puts its
    event on the scrub queue, and the block is undeleted at once, not at the weekly run."""
    from tessera.adapters.aws.events import detail_of
    from tessera.domain import reports
    from tessera.domain.models import BlockReportRequest

    data = secrets.token_bytes(2 * BLOCK)
    entry = aws_world.put(ALICE, "/photo.raw", data)
    aws_world.run("dedup")
    lost = block_id(data[:BLOCK])
    aws_world.store.delete(canonical_key(lost))
    req = BlockReportRequest(file_id=entry.file_id, rev=entry.rev, block_id=lost)
    assert reports.report_block(aws_world.svc, ALICE, req).queued
    [event] = [e for e in aws_world.feed.events if e.kind == reports.REPORTED]
    # the change router's entry for it (`EventBridgePublisher`), as the rule queues it
    body = {"source": "tessera", "detail-type": f"tessera.{event.kind}", "detail": detail_of(event)}
    record = {"messageId": "1", "body": json.dumps(body, default=str)}
    result = _handler("scrub")({"Records": [record]}, None)
    assert (result["checked"], result["damaged"], result["repaired"]) == (1, 1, 1)
    assert aws_world.get(ALICE, "/photo.raw") == data


def test_a_key_parameter_put_again_stops_the_functions_before_they_judge_a_block(
    aws_world: World,
) -> None:
    """A block-key parameter put again with another data key (deleted by hand, then made
    anew by a deploy's `ensure_key_version`): every block failed authentication, and scrub
    quarantined each one it sampled, for good. A cold start now compares each version's
    secret with the fingerprint recorded at the first one, and refuses."""
    import base64

    from tessera.adapters.aws import AwsClients
    from tessera.metadata.key_check import BlockKeysMismatch

    path, data, _ = _stored_file(aws_world, 2)
    scrub = {"step": "scrub", "input": {}}
    assert _handler("scrub")(scrub, None)["ok"] == 2  # records version 1's fingerprint
    settings = replace(shared_aws_settings(), database_url="")
    clients = AwsClients(settings)
    name = f"{settings.key_param_prefix}/v1"
    kept = clients.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    other = clients.kms.generate_data_key(
        KeyId=settings.kms_key_id,
        KeySpec="AES_256",
        EncryptionContext={"purpose": "tessera-block-key", "version": "1"},
    )["CiphertextBlob"]
    put = {"Name": name, "Type": "SecureString", "Overwrite": True}
    clients.ssm.put_parameter(**put, Value=base64.b64encode(other).decode())  # type: ignore[arg-type]
    try:
        with pytest.raises(BlockKeysMismatch, match="key version 1's secret is not the one"):
            _handler("scrub")(scrub, None)
    finally:  # the moto deployment is shared by the session's AWS tests
        clients.ssm.put_parameter(**put, Value=kept)  # type: ignore[arg-type]
    assert aws_world.sql("SELECT DISTINCT state FROM blocks") == [("live",)]
    assert _handler("scrub")(scrub, None)["ok"] == 2  # the right one back: it runs again
    assert aws_world.get(ALICE, path) == data


def test_functions_reject_bad_events(aws_world: World) -> None:
    from tessera.domain.errors import BadRequest

    gc = _handler("gc")
    with pytest.raises(BadRequest, match="no step"):
        gc({"step": "verify", "input": {}}, None)
    with pytest.raises(BadRequest, match="ISO-8601"):
        gc({"step": "purge_trash", "input": {"as_of": "soon"}}, None)
    with pytest.raises(BadRequest, match="not triggered by a queue"):
        gc({"Records": []}, None)
    # a mistyped year in an execution's input purged trash still within its retention
    later = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    with pytest.raises(BadRequest, match="in the future"):
        gc({"step": "purge_trash", "input": {"as_of": later}}, None)
    with pytest.raises(BadRequest, match="in the future"):
        gc({"as_of": later, "allow_future": "yes"}, None)  # only `true` allows it
