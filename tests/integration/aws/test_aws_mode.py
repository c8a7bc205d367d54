"""`tessera local up --backend aws`, in process: the gateway dispatches to the Lambda
handlers, tokens come from (moto) Cognito, blocks go straight to (moto) S3, the stream and
the schedule are emulated with the real handlers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tessera.adapters.aws import AwsClients, AwsSettings
from tessera.domain.errors import Conflict
from tessera.local.aws_mode import AwsLocalCloud, add_user, provision
from tessera.local.postgres import ensure_database

from .flow import Client, http_send

pytestmark = pytest.mark.aws
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def aws_cloud(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[AwsLocalCloud]:
    name = f"awsmode_{uuid.uuid4().hex[:8]}"
    cloud = AwsLocalCloud(
        tmp_path_factory.mktemp("awsmode") / "state",
        port=0,
        database_url=ensure_database(postgres_url, name),
        relay_every=1.0,
        deployment=f"t-{name[-8:]}",  # in-process moto servers share their state
        demo=True,
    )
    cloud.start()
    try:
        yield cloud
    finally:
        cloud.stop()


def _login(cloud: AwsLocalCloud) -> Client:
    email = f"u{uuid.uuid4().hex[:6]}@example.com"
    add_user(cloud.root, email, PASSWORD)
    r = httpx.post(f"{cloud.base_url}/v1/auth/token", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    return Client(http_send(httpx.Client(base_url=cloud.base_url, headers=auth, timeout=60)))


def _bus_queue(settings: AwsSettings) -> tuple[Any, str]:
    """An SQS queue receiving every event on the bus (as a rule would route them)."""
    clients = AwsClients(settings)
    sqs = clients.client("sqs")
    url = sqs.create_queue(QueueName=f"bus-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    rule = f"all-{uuid.uuid4().hex[:6]}"
    events = clients.events
    events.put_rule(
        Name=rule, EventBusName=settings.event_bus, EventPattern=json.dumps({"source": ["tessera"]})
    )
    events.put_targets(
        Rule=rule, EventBusName=settings.event_bus, Targets=[{"Id": "q", "Arn": arn}]
    )
    return sqs, url


def test_aws_mode_serves_the_api_through_the_lambda_handlers(
    aws_cloud: AwsLocalCloud, tmp_path: Path
) -> None:
    assert aws_cloud.aws is not None and aws_cloud.emulator is not None
    assert httpx.post(f"{aws_cloud.base_url}/v1/list_folder", json={}).status_code == 401
    bad = httpx.post(
        f"{aws_cloud.base_url}/v1/auth/token",
        json={"email": "nobody@example.com", "password": PASSWORD},
    )
    assert bad.status_code == 401
    sqs, queue = _bus_queue(aws_cloud.aws)
    api = _login(aws_cloud)
    local = tmp_path / "f.bin"
    local.write_bytes(os.urandom(600_000))
    assert api.upload("/f.bin", local)[0] == 200
    status, listing = api.call("/v1/list_folder", {"path": ""})
    assert [e["name"] for e in listing["entries"]] == ["f.bin"]

    # A long-poll wakes within a second or so of a commit (DynamoDB fast path).
    result: list[tuple[int, Any]] = []
    poll = threading.Thread(
        target=lambda: result.append(
            api.call("/v1/list_folder/longpoll", {"cursor": listing["cursor"], "timeout": 30})
        )
    )
    poll.start()
    time.sleep(0.5)
    assert not result
    other = tmp_path / "g.txt"
    other.write_bytes(b"g" * 100)
    status, entry = api.upload("/g.txt", other)
    committed = time.monotonic()
    assert status == 200
    poll.join(30)
    assert result and result[0][1]["changes"] is True
    assert time.monotonic() - committed < 5
    assert api.download("/f.bin") == local.read_bytes()

    # The emulated pipe: stream record -> change_router -> the bus -> a rule's queue.
    seen: set[str] = set()
    deadline = time.monotonic() + 20
    while f"ns{entry['ns_id']}" not in {e.split("-")[0] for e in seen}:
        assert time.monotonic() < deadline, f"no bus event for the commits; saw {seen}"
        for m in sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", []):
            seen.add(json.loads(m["Body"])["detail"]["event_id"])
    # The emulated schedule: the relay sweeps every outbox row.
    with psycopg.connect(aws_cloud.aws.database_url) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM outbox").fetchone()
            assert row is not None
            if not row[0]:
                break
            assert time.monotonic() < deadline, "the emulated relay schedule never ran"
            time.sleep(0.3)


def test_demo_login_is_kept_private_and_signs_in(aws_cloud: AwsLocalCloud) -> None:
    path = aws_cloud.state.demo_credentials
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    email, password = path.read_text().split()
    assert (email, password) == aws_cloud.demo_login
    r = httpx.post(
        f"{aws_cloud.base_url}/v1/auth/token", json={"email": email, "password": password}
    )
    assert r.status_code == 200, r.text


def test_adduser_cli_in_aws_mode(aws_cloud: AwsLocalCloud) -> None:
    email = f"cli{uuid.uuid4().hex[:6]}@example.com"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tessera_client",
            "local",
            "adduser",
            email,
            "--password",
            PASSWORD,
            "--state",
            str(aws_cloud.root),
            "--backend",
            "aws",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert f"created {email}" in r.stdout
    token = httpx.post(
        f"{aws_cloud.base_url}/v1/auth/token", json={"email": email, "password": PASSWORD}
    )
    assert token.status_code == 200
    with pytest.raises(Conflict):  # the same user again: a clear error, nothing changed
        add_user(aws_cloud.root, email, "another passphrase")
    token = httpx.post(
        f"{aws_cloud.base_url}/v1/auth/token", json={"email": email, "password": PASSWORD}
    )
    assert token.status_code == 200


def test_deployment_names_that_ssm_reserves_are_refused() -> None:
    for name in ("", "aws-mode", "ssm1"):
        with pytest.raises(ValueError, match="deployment name"):
            provision("http://127.0.0.1:1", name=name)


def test_the_emulator_lists_stream_shards_now_and_then(aws_cloud: AwsLocalCloud) -> None:
    """Each 0.5 s pump reads the stream; the shards are listed again only every
    SHARD_LISTING_S (two moto requests each time), or when none is open."""
    from tessera.local import aws_mode

    emulator = aws_cloud.emulator
    assert emulator is not None
    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(model.name)

    events = emulator._streams.meta.events
    events.register("before-call", record)
    try:
        emulator._shards_listed = time.monotonic()
        for _ in range(4):
            emulator.pump_once()
        assert "DescribeStream" not in calls and "GetRecords" in calls
        emulator._shards_listed -= aws_mode.SHARD_LISTING_S
        emulator.pump_once()
        assert "DescribeStream" in calls
    finally:
        events.unregister("before-call", record)


def test_the_emulated_pipe_delivers_again_from_the_record_the_router_failed_on(
    aws_cloud: AwsLocalCloud,
) -> None:
    """As the deployed pipe (ReportBatchItemFailures) does: the records before the first
    reported failure are in, the rest are delivered again. They were dropped here."""
    from tessera.adapters.aws import DynamoChangeFeed, changes_model
    from tessera.local.aws_mode import Emulator
    from tessera.ports import ChangeEvent

    settings = aws_cloud.aws
    assert settings is not None
    real = aws_cloud.functions["change_router"].handler
    batches: list[list[str]] = []

    def flaky(event: list[dict[str, Any]], context: Any) -> Any:
        seqs = [r["dynamodb"]["SequenceNumber"] for r in event]  # (a pipe's bare list)
        batches.append(seqs)
        if len(batches) == 1:  # the second record of the first batch fails
            return {"batchItemFailures": [{"itemIdentifier": event[1]["eventID"]}]}
        return real(event, context)

    pipe = Emulator(settings, aws_cloud.functions["outbox_relay"].handler, flaky)
    pipe._open_shards("LATEST")
    model = changes_model(
        settings.changes_table, region=settings.region, host=settings.endpoint_url
    )
    ns = int(uuid.uuid4().int % 2**52)
    DynamoChangeFeed(model).publish_many(
        [ChangeEvent(f"pipe-{ns}-{n}", ns, n, "file", {"n": n}) for n in (1, 2, 3)]
    )
    assert pipe.pump_once() == 1  # the first record went in
    assert pipe.pump_once() == 2
    assert len(batches) == 2 and batches[1] == batches[0][1:]
