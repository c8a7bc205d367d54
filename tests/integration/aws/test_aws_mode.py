"""`tessera local up --backend aws`, in process: the gateway dispatches to the Lambda
handlers, tokens come from (moto) Cognito, blocks go straight to (moto) S3, the stream and
the schedule are emulated with the real handlers."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tessera.blocks import decode_block, encode_block, iter_chunks, scan_file
from tessera.domain.errors import Conflict
from tessera.local.aws_mode import AwsLocalCloud, add_user

pytestmark = pytest.mark.aws
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def aws_cloud(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[AwsLocalCloud]:
    name = f"awsmode_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    cloud = AwsLocalCloud(
        tmp_path_factory.mktemp("awsmode") / "state",
        port=0,
        database_url=make_conninfo(postgres_url, dbname=name),
        relay_every=1.0,
    )
    cloud.start()
    try:
        yield cloud
    finally:
        cloud.stop()


def _login(cloud: AwsLocalCloud) -> httpx.Client:
    email = f"u{uuid.uuid4().hex[:6]}@example.com"
    add_user(cloud.root, email, PASSWORD)
    r = httpx.post(f"{cloud.base_url}/v1/auth/token", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    return httpx.Client(
        base_url=cloud.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def _upload(api: httpx.Client, path: str, local: Path, s3: str) -> dict:
    m = scan_file(local)
    blocks = [{"id": b.id, "size": b.size} for b in m.blocks]
    start = api.post(
        "/v1/uploads",
        json={
            "files": [
                {"path": path, "size": m.size, "content_hash": m.content_hash, "blocks": blocks}
            ]
        },
    )
    assert start.status_code == 200, start.text
    keys = {n["id"]: n for n in start.json()["needed"]}
    enc = {
        r.id: encode_block(d, r.id, base64.b64decode(keys[r.id]["key"]), keys[r.id]["key_version"])
        for r, d in iter_chunks(local)
        if r.id in keys
    }
    if enc:
        urls = api.post(
            "/v1/uploads/urls",
            json={
                "upload_id": start.json()["upload_id"],
                "blocks": [
                    {
                        "id": i,
                        "size": len(e),
                        "sha256": base64.b64encode(hashlib.sha256(e).digest()).decode(),
                    }
                    for i, e in enc.items()
                ],
            },
        )
        assert urls.status_code == 200, urls.text
        for u in urls.json()["urls"]:
            assert u["url"].startswith(s3)  # straight to S3
            assert (
                httpx.put(u["url"], content=enc[u["id"]], headers=u["headers"]).status_code == 200
            )
    r = api.post(
        "/v1/commit",
        json={
            "path": path,
            "parent_rev": None,
            "blocks": blocks,
            "size": m.size,
            "content_hash": m.content_hash,
            "upload_id": start.json()["upload_id"],
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_aws_mode_serves_the_api_through_the_lambda_handlers(
    aws_cloud: AwsLocalCloud, tmp_path: Path
) -> None:
    assert httpx.post(f"{aws_cloud.base_url}/v1/list_folder", json={}).status_code == 401
    bad = httpx.post(
        f"{aws_cloud.base_url}/v1/auth/token",
        json={"email": "nobody@example.com", "password": PASSWORD},
    )
    assert bad.status_code == 401
    api = _login(aws_cloud)
    assert aws_cloud.aws is not None
    local = tmp_path / "f.bin"
    local.write_bytes(os.urandom(600_000))
    s3 = aws_cloud.aws.endpoint_url
    assert s3 is not None
    _upload(api, "/f.bin", local, s3)
    listing = api.post("/v1/list_folder", json={"path": ""}).json()
    assert [e["name"] for e in listing["entries"]] == ["f.bin"]

    # A long-poll wakes within a second of a commit (DynamoDB fast path).
    result: list[httpx.Response] = []
    poll = threading.Thread(
        target=lambda: result.append(
            api.post("/v1/list_folder/longpoll", json={"cursor": listing["cursor"], "timeout": 30})
        )
    )
    poll.start()
    time.sleep(0.5)
    other = tmp_path / "g.txt"
    other.write_bytes(b"g" * 100)
    committed = time.monotonic()
    _upload(api, "/g.txt", other, s3)
    poll.join(30)
    assert result and result[0].json()["changes"] is True
    assert time.monotonic() - committed < 5

    dl = api.post("/v1/download", json={"path": "/f.bin"}).json()
    data = b"".join(
        decode_block(httpx.get(b["url"]).content, b["id"], base64.b64decode(b["key"]))
        for b in sorted(dl["blocks"], key=lambda b: b["offset"])
    )
    assert data == local.read_bytes()

    # The emulated schedule relays the outbox; the emulated pipe routes the stream.
    assert aws_cloud.emulator is not None
    deadline = time.monotonic() + 15
    with psycopg.connect(aws_cloud.aws.database_url) as conn:
        while conn.execute("SELECT count(*) FROM outbox WHERE relayed_at IS NULL").fetchone()[0]:
            assert time.monotonic() < deadline, "the emulated relay schedule never ran"
            time.sleep(0.3)


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
