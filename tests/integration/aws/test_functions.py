"""The Lambda handlers end to end on moto + real PostgreSQL, called with real event shapes
(moto runs no Lambda code, and its Scheduler and Pipes never fire).

upload → PUT to presigned S3 URLs → commit → list → long-poll wakes → download → decrypt.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tessera.adapters.aws import (
    AwsClients,
    AwsSettings,
    DynamoChangeFeed,
    KmsKeyService,
    S3BlockStore,
    changes_model,
)
from tessera.blocks import decode_block, scan_file
from tessera.metadata.outbox import RelayResult

from .flow import Client, lambda_client, lambda_send
from .lambda_events import Context, rest_event, stream_record

pytestmark = pytest.mark.aws


def _claims() -> dict[str, str]:
    user = uuid.uuid4().hex[:8]
    return {"sub": f"user-{user}", "email": f"{user}@example.com", "token_use": "id"}


def _write(tmp: Path, name: str, size: int) -> Path:
    path = tmp / name
    path.write_bytes(os.urandom(size))
    return path


def test_full_flow_through_the_handlers(
    lambdas: SimpleNamespace, tmp_path: Path, aws_settings: AwsSettings, aws_clients: AwsClients
) -> None:
    ann = lambda_client(lambdas, _claims())
    local = _write(tmp_path, "big.bin", 3 * 1024 * 1024 + 123)
    status, entry = ann.upload("/docs/big.bin", local)
    assert status == 200, entry
    assert entry["rev"] == 1 and entry["size"] == local.stat().st_size

    # S3 holds only ciphertext, and exactly the bytes the client encoded (moto checks no
    # checksum, so check the stored blocks ourselves: size, then decrypt + re-hash).
    store = S3BlockStore(aws_clients.s3, aws_settings.bucket)
    status, dl = ann.call("/v1/download", {"path": "/docs/big.bin"})
    assert status == 200
    plain = local.read_bytes()
    for block in dl["blocks"]:
        keys = [k for k in store.list_keys("staging/") if k.endswith(block["id"][3:])]
        keys += [f"blocks/{block['id'][3:]}"] if store.head(f"blocks/{block['id'][3:]}") else []
        assert keys, f"block {block['id']} is not in S3"
        stored = store.get(keys[0])
        head = store.head(keys[0])
        assert head is not None and head.size == len(stored)
        assert plain[block["offset"] : block["offset"] + 64] not in stored
        chunk = decode_block(stored, block["id"], base64.b64decode(block["key"]))
        assert chunk == plain[block["offset"] : block["offset"] + block["size"]]

    status, listing = ann.call("/v1/list_folder", {"path": "/docs"})
    assert status == 200
    assert [e["name"] for e in listing["entries"]] == ["big.bin"]

    # A long-poll (the longpoll function, on DynamoDB) wakes when another device commits.
    result: list[tuple[int, Any]] = []
    poll = threading.Thread(
        target=lambda: result.append(
            ann.call("/v1/list_folder/longpoll", {"cursor": listing["cursor"], "timeout": 30})
        )
    )
    started = time.monotonic()
    poll.start()
    time.sleep(0.5)
    assert not result, "long-poll returned before any change"
    status, _ = ann.upload("/docs/small.txt", _write(tmp_path, "small.txt", 1000))
    assert status == 200
    poll.join(20)
    assert result == [(200, {"changes": True, "backoff": None})] or (
        result and result[0][1]["changes"] is True
    )
    assert time.monotonic() - started < 10

    status, changes = ann.call("/v1/list_folder/continue", {"cursor": listing["cursor"]})
    assert status == 200
    assert [e["name"] for e in changes["entries"]] == ["small.txt"]

    # API Gateway's `{proxy+}` hands the api function the long-poll with a trailing slash:
    # it answers at once, where it had waited (up to the Lambda's timeout) for a change
    status, body = ann.send(
        "/v1/list_folder/longpoll/", {"cursor": changes["cursor"], "timeout": 30}
    )
    assert status == 404 and "/v1/list_folder/longpoll" in body["error"]["message"], body
    assert ann.download("/docs/big.bin") == plain

    # A stale parent is a 409 carrying the current rev; nothing is lost.
    edited = _write(tmp_path, "edit.bin", 5000)
    status, body = ann.upload("/docs/big.bin", edited, parent_rev=1)
    assert status == 200 and body["rev"] == 2
    status, body = ann.upload("/docs/big.bin", _write(tmp_path, "e2.bin", 10), parent_rev=1)
    assert status == 409, body
    assert body["error"]["code"] == "conflict"
    assert ann.download("/docs/big.bin") == edited.read_bytes()


def test_acl_and_authentication(lambdas: SimpleNamespace, tmp_path: Path) -> None:
    owner_claims, guest_claims = _claims(), _claims()
    owner, guest = lambda_client(lambdas, owner_claims), lambda_client(lambdas, guest_claims)
    assert owner.upload("/team/plan.txt", _write(tmp_path, "plan.txt", 2000))[0] == 200
    status, _ = guest.call("/v1/account")  # the API provisions a user on first sight
    assert status == 200
    status, body = owner.call(
        "/v1/share", {"path": "/team", "email": guest_claims["email"], "access": "viewer"}
    )
    assert status == 200, body
    # an invitation: the guest is a member once they accept it
    status, body = guest.call("/v1/shares/accept", {"ns_id": body["ns_id"]})
    assert status == 200 and body["path_display"] == "/team", body
    assert body["access"] == "viewer"
    # A viewer may read but not write: 403, and the file is unchanged.
    assert guest.download("/team/plan.txt") == (tmp_path / "plan.txt").read_bytes()
    status, body = guest.upload("/team/evil.txt", _write(tmp_path, "evil.txt", 10))
    assert status == 403, body
    assert body["error"]["code"] == "forbidden"
    # ...nor commit blocks it can read into the shared folder.
    manifest = scan_file(tmp_path / "plan.txt")
    status, body = guest.call(
        "/v1/commit",
        {
            "path": "/team/copy.txt",
            "parent_rev": None,
            "size": manifest.size,
            "content_hash": manifest.content_hash,
            "blocks": [{"id": b.id, "size": b.size} for b in manifest.blocks],
        },
    )
    assert status == 403, body
    status, listing = owner.call("/v1/list_folder", {"path": "/team"})
    assert [e["name"] for e in listing["entries"]] == ["plan.txt"]

    # No authorizer claims (a request that bypassed the Cognito authorizer): 401.
    for claims in (None, {}, {"email": "x@example.com"}):
        status, body = lambda_send(lambdas.api.handler, claims)("/v1/list_folder", {"path": ""})
        assert status == 401 and body["error"]["code"] == "unauthorized"
    # The body never names the caller: a user_id in it is rejected, not obeyed.
    status, body = guest.call("/v1/list_folder", {"path": "", "user_id": owner_claims["sub"]})
    assert status == 422


# --- the outbox relay and the change router -------------------------------------------


def _feed_items(aws_settings: AwsSettings, ns_ids: set[int]) -> list[tuple[int, int, str]]:
    model = changes_model(
        aws_settings.changes_table, region=aws_settings.region, host=aws_settings.endpoint_url
    )
    feed = DynamoChangeFeed(model)
    return [(e.ns_id, e.seq, e.event_id) for ns in ns_ids for e in feed.changes_after(ns, 0)]


_OUTBOX_COLUMNS = "ns_id, seq, event_id, kind, payload, created_at"


def _outbox(url: str, user_ns: set[int]) -> list[tuple[int, int, str]]:
    """The pending outbox rows of `user_ns` (the relay deletes what it delivered)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT ns_id, seq, event_id FROM outbox WHERE ns_id = ANY(%s) ORDER BY ns_id, seq",
            (list(user_ns),),
        ).fetchall()
    return [(int(a), int(b), str(c)) for a, b, c in rows]


@pytest.fixture
def broken_fast_path(
    monkeypatch: pytest.MonkeyPatch, lambdas: SimpleNamespace, aws_settings: AwsSettings
) -> None:
    """Point the api function's change feed at a table that does not exist: every fast-path
    DynamoDB put fails (ResourceNotFoundException), the commits themselves succeed."""
    missing = changes_model(
        f"missing-{uuid.uuid4().hex[:6]}",
        region=aws_settings.region,
        host=aws_settings.endpoint_url,
    )
    monkeypatch.setattr(lambdas.api.services, "feed", DynamoChangeFeed(missing))


def _new_user(lambdas: SimpleNamespace) -> tuple[Client, int]:
    """A client of a new user, and the user's root namespace."""
    client = lambda_client(lambdas, _claims())
    status, account = client.call("/v1/account", None)
    assert status == 200, account
    return client, int(account["root_ns_id"])


@pytest.mark.usefixtures("broken_fast_path")
def test_relay_delivers_every_event_once_when_the_fast_path_fails(
    lambdas: SimpleNamespace, tmp_path: Path, aws_settings: AwsSettings
) -> None:
    ann, ns = _new_user(lambdas)
    for i in range(5):
        assert ann.upload(f"/n{i}.txt", _write(tmp_path, f"n{i}.txt", 100 + i))[0] == 200
    outbox = _outbox(lambdas.database_url, {ns})
    assert len(outbox) == 5
    assert _feed_items(aws_settings, {ns}) == []  # the fast path delivered nothing

    result = lambdas.outbox_relay.handler({"min_age_s": 0}, Context())
    assert result["failed"] == [] and result["relayed"] >= 5
    assert _feed_items(aws_settings, {ns}) == outbox
    assert _outbox(lambdas.database_url, {ns}) == []  # delivered rows leave the queue
    expected = outbox
    # A second sweep finds nothing of ours to do; the table still holds each event once.
    lambdas.outbox_relay.handler({"min_age_s": 0}, Context())
    assert _feed_items(aws_settings, {ns}) == expected


def test_a_longpoll_answers_before_the_gateway_gives_up(lambdas: SimpleNamespace) -> None:
    """API Gateway ends a request 29 s after it received it, a cold start included; the
    wait counted from the handler's start, so after a slow start a full wait answered 504."""
    claims = _claims()
    client = lambda_client(lambdas, claims)
    status, listing = client.call("/v1/list_folder", {"path": ""})
    assert status == 200, listing
    event = rest_event(
        "/v1/list_folder/longpoll", {"cursor": listing["cursor"], "timeout": 30}, claims=claims
    )
    event["requestContext"]["requestTimeEpoch"] = int((time.time() - 27.5) * 1000)
    started = time.monotonic()
    answer = lambdas.longpoll.handler(event, Context())
    assert (answer["statusCode"], json.loads(answer["body"])["changes"]) == (200, False)
    assert time.monotonic() - started < 5  # a wait of 20 s or more, before


def test_a_sweep_lasts_as_long_as_the_function_may(
    lambdas: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fixed 50 batches a sweep fell behind for good above 83 writes/s: the sweep goes on
    until the function's time is nearly spent (the budget itself: test_outbox_relay.py)."""
    relay = lambdas.outbox_relay
    budgets: list[float] = []

    def sweep(*args: Any, budget_s: float, **kwargs: Any) -> RelayResult:
        budgets.append(budget_s)
        return RelayResult()

    monkeypatch.setattr(relay, "relay_outbox", sweep)
    relay.handler({}, Context(remaining_ms=55_000))
    relay.handler({}, Context(remaining_ms=3_000))
    assert budgets == [55 - relay.RESERVE_S, 0.0]


@pytest.mark.usefixtures("broken_fast_path")
def test_a_failed_sweep_leaves_its_rows_pending(
    lambdas: SimpleNamespace, tmp_path: Path, aws_settings: AwsSettings
) -> None:
    from tessera.metadata.outbox import relay_outbox

    ann, ns = _new_user(lambdas)
    assert ann.upload("/p.txt", _write(tmp_path, "p.txt", 10))[0] == 200
    result = relay_outbox(lambdas.outbox_relay.db, lambdas.api.services.feed)  # also broken
    assert result.relayed == 0 and result.failed
    pending = _outbox(lambdas.database_url, {ns})
    assert len(pending) == 1  # still to relay
    assert lambdas.outbox_relay.handler({"min_age_s": 0}, Context())["failed"] == []
    assert _outbox(lambdas.database_url, {ns}) == []
    assert _feed_items(aws_settings, {ns}) == pending


@pytest.mark.usefixtures("broken_fast_path")
def test_an_event_the_table_refuses_is_dead_lettered_and_the_rest_delivered(
    lambdas: SimpleNamespace, tmp_path: Path, aws_settings: AwsSettings
) -> None:
    """The database goes back to an earlier point (a restore) while the table keeps what
    was relayed: the next commit gets a seq the table holds. Its event id differs (a token
    per write), so the table refuses it instead of taking it for the old one: the row goes
    to outbox_dead, the table keeps its item, and the rows behind it are delivered."""
    ann, ns = _new_user(lambdas)
    for i in range(2):
        assert ann.upload(f"/d{i}.txt", _write(tmp_path, f"d{i}.txt", 20 + i))[0] == 200
    before = _outbox(lambdas.database_url, {ns})
    assert lambdas.outbox_relay.handler({"min_age_s": 0}, Context())["dead"] == []
    _, reused, _ = before[-1]
    with psycopg.connect(lambdas.database_url) as conn:  # back to before the last commit
        conn.execute("DELETE FROM journal WHERE ns_id = %s AND seq = %s", (ns, reused))
        conn.execute("UPDATE namespaces SET latest_seq = %s WHERE ns_id = %s", (reused - 1, ns))
    for i in range(2, 4):
        assert ann.upload(f"/d{i}.txt", _write(tmp_path, f"d{i}.txt", 20 + i))[0] == 200
    after = _outbox(lambdas.database_url, {ns})
    assert [seq for _, seq, _ in after] == [reused, reused + 1]
    poison = after[0][2]
    assert poison != before[-1][2]

    result = lambdas.outbox_relay.handler({"min_age_s": 0}, Context())
    assert result["dead"] == [poison] and result["failed"] == []
    assert _feed_items(aws_settings, {ns}) == [*before, after[1]]
    assert _outbox(lambdas.database_url, {ns}) == []
    with psycopg.connect(lambdas.database_url) as conn:
        dead = conn.execute("SELECT event_id FROM outbox_dead WHERE ns_id = %s", (ns,)).fetchall()
    assert dead == [(poison,)]


@pytest.mark.usefixtures("broken_fast_path")
def test_an_event_over_the_tables_item_limit_is_dead_lettered_not_retried_for_ever(
    lambdas: SimpleNamespace, tmp_path: Path, aws_settings: AwsSettings
) -> None:
    """DynamoDB refuses an item over 400 KB however often it is sent; the relay, which
    claims the oldest rows first, stalled behind such a row for good (nothing was relayed
    again). Now it goes to outbox_dead and the rows behind it are delivered."""
    ann, ns = _new_user(lambdas)
    for i in range(3):
        assert ann.upload(f"/o{i}.txt", _write(tmp_path, f"o{i}.txt", 30 + i))[0] == 200
    rows = _outbox(lambdas.database_url, {ns})
    poison = rows[0][2]
    with psycopg.connect(lambdas.database_url) as conn:
        conn.execute(
            "UPDATE outbox SET payload = payload || jsonb_build_object('bulk', repeat('x', %s))"
            " WHERE event_id = %s",
            (500_000, poison),
        )
    result = lambdas.outbox_relay.handler({"min_age_s": 0}, Context())
    assert result["dead"] == [poison] and result["failed"] == []
    assert _feed_items(aws_settings, {ns}) == rows[1:]
    assert _outbox(lambdas.database_url, {ns}) == []
    with psycopg.connect(lambdas.database_url) as conn:
        error = conn.execute("SELECT error FROM outbox_dead WHERE event_id = %s", (poison,))
        assert "DynamoDB refuses" in error.fetchone()[0]  # type: ignore[index]


@pytest.mark.usefixtures("broken_fast_path")
def test_concurrent_sweeps_share_the_work_without_duplicates(
    lambdas: SimpleNamespace, tmp_path: Path, aws_settings: AwsSettings
) -> None:
    users = [_new_user(lambdas) for _ in range(3)]
    clients = [c for c, _ in users]
    namespaces = {ns for _, ns in users}
    for c in clients:
        for i in range(4):
            assert c.upload(f"/c{i}.txt", _write(tmp_path, f"c{i}.txt", 50 + i))[0] == 200
    with psycopg.connect(lambdas.database_url) as conn:  # ours, to queue again after...
        ours = conn.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE ns_id = ANY(%s)", (list(namespaces),)
        ).fetchall()
    lambdas.outbox_relay.handler({"min_age_s": 0}, Context())  # ...draining every row
    with psycopg.connect(lambdas.database_url) as conn:
        conn.cursor().executemany(
            f"INSERT INTO outbox ({_OUTBOX_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
            [(*row[:4], Jsonb(row[4]), row[5]) for row in ours],
        )
    from tessera.metadata.outbox import relay_outbox

    with ThreadPoolExecutor(2) as pool:  # two sweeps at once, small batches to interleave
        results = list(
            pool.map(
                lambda _: relay_outbox(lambdas.outbox_relay.db, lambdas.outbox_relay.feed, batch=2),
                range(2),
            )
        )
    assert sum(r.relayed for r in results) == 12  # each row relayed by exactly one sweep
    assert all(r.failed == [] for r in results)
    items = _feed_items(aws_settings, namespaces)
    assert len(items) == 12 and len({e for *_, e in items}) == 12


def test_change_router_reports_partial_failures(
    lambdas: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    aws_settings: AwsSettings,
    aws_clients: AwsClients,
) -> None:
    router = lambdas.change_router
    records = [stream_record(1, i, f"route-{i}") for i in range(1, 4)]
    records.append(stream_record(1, 9, "expired", name="REMOVE"))  # TTL expiry: not an event
    assert router.handler({"Records": records}, Context()) == {"batchItemFailures": []}
    assert router.handler(records, Context()) == {"batchItemFailures": []}  # Pipe: a bare list

    # EventBridge refuses one entry (an empty detail-type): only that record is retried.
    original = router.publisher._entry

    def entry(event: Any) -> Any:
        e = original(event)
        return {**e, "DetailType": ""} if event.event_id == "route-2" else e

    monkeypatch.setattr(router.publisher, "_entry", entry)
    resp = router.handler({"Records": records}, Context())  # a stream mapping: SequenceNumber
    assert resp == {
        "batchItemFailures": [{"itemIdentifier": records[1]["dynamodb"]["SequenceNumber"]}]
    }
    # an EventBridge Pipe (the deployed source) matches failures on eventID only
    assert router.handler(records, Context()) == {
        "batchItemFailures": [{"itemIdentifier": records[1]["eventID"]}]
    }


def test_change_router_puts_ten_events_per_call(lambdas: SimpleNamespace) -> None:
    """A stream batch reaches the bus in PutEvents calls of ten entries, not one per record."""
    router = lambdas.change_router
    records = [stream_record(2, i, f"ten-{i}") for i in range(1, 26)]
    calls: list[int] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(len(params["Entries"]))

    client = router.publisher._events
    client.meta.events.register("provide-client-params.events.PutEvents", record)
    try:
        assert router.handler({"Records": records}, Context()) == {"batchItemFailures": []}
    finally:
        client.meta.events.unregister("provide-client-params.events.PutEvents", record)
    assert calls == [10, 10, 5]


@pytest.mark.usefixtures("broken_fast_path")
def test_relay_publishes_its_lag_as_relay_lag_seconds(
    lambdas: SimpleNamespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    relay = lambdas.outbox_relay
    ann, ns = _new_user(lambdas)
    relay.handler({"min_age_s": 0}, Context())  # drain older tests' rows
    assert ann.upload("/lag.txt", _write(tmp_path, "lag.txt", 10))[0] == 200
    with psycopg.connect(lambdas.database_url) as conn:  # the row is 2 minutes old
        conn.execute(
            "UPDATE outbox SET created_at = now() - interval '120 seconds' WHERE ns_id = %s", (ns,)
        )

    def emitted(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The handler's answer and its EMF record (metrics on, stdout captured)."""
        relay.metrics.clear_metrics()
        capsys.readouterr()
        monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
        try:
            answer = relay.handler(event, Context())
        finally:
            monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"_aws"' in x]
        records = [r for r in lines if "RelayLagSeconds" in r]
        assert len(records) == 1, lines
        value = records[0]["RelayLagSeconds"]  # EMF: a value or a list of values
        assert (value if isinstance(value, list) else [value]) == [answer["lag_s"]]
        return answer, records[0]

    # A sweep that skips young rows leaves ours pending: the lag is its age.
    answer, record = emitted({"min_age_s": 3600})
    assert 120 <= answer["lag_s"] < 180
    (directive,) = record["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Tessera"
    assert ["service"] in directive["Dimensions"]
    assert record["service"] == "tessera-outbox-relay"
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units["RelayLagSeconds"] == "Seconds"

    # Once everything is relayed the lag is 0 (still published: the alarm treats no data as
    # a relay that is not running).
    answer, record = emitted({"min_age_s": 0})
    assert answer["relayed"] >= 1 and answer["failed"] == [] and answer["dead"] == []
    assert answer["lag_s"] == 0
    assert record["OutboxDeadLettered"] in (0, [0])  # published at 0 too, for its alarm


@pytest.mark.parametrize(
    ("code", "status", "answer"),
    [("SlowDown", 503, 503), ("ThrottlingException", 400, 503), ("AccessDenied", 403, 500)],
)
def test_aws_throttling_is_503_with_retry_after_not_500(
    lambdas: SimpleNamespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    status: int,
    answer: int,
) -> None:
    """An AWS call still throttled after botocore's retries answers 503 `unavailable` with
    Retry-After, so the client comes back shortly; a failure that is a bug (a missing grant)
    stays a 500. moto never throttles: the store's call raises what botocore would."""
    from botocore.exceptions import ClientError

    def refused(*_: object, **__: object) -> None:
        answer: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        raise ClientError(answer, "ListObjectsV2")

    monkeypatch.setattr(lambdas.api.services.block_store, "sizes", refused)
    claims = _claims()
    answers: list[dict[str, Any]] = []

    def send(path: str, body: Any) -> tuple[int, Any]:
        answers.append(lambdas.api.handler(rest_event(path, body, claims=claims), Context()))
        return answers[-1]["statusCode"], json.loads(answers[-1]["body"])

    status_, body = Client(send).upload("/a.bin", _write(tmp_path, "a.bin", 1000))
    assert status_ == answer, body
    if answer == 503:
        assert body["error"]["code"] == "unavailable"
        assert int(answers[-1]["multiValueHeaders"]["Retry-After"][0]) >= 1
    else:
        assert body["error"]["code"] == "internal"
    assert send("/v1/list_folder", {"path": ""})[0] == 200  # the function is fine afterwards


def test_the_api_function_refuses_block_keys_the_database_does_not_know(
    aws_settings: AwsSettings, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key parameter put again by hand between deploys: the API function checked no
    secret, and handed out block keys under the new one until a maintenance function's
    start refused. Its cold start now checks the secret against the record: refused, every
    request that needs a key answers 503 with what to do, and the record is kept."""
    from tessera.local.aws_mode import environment, load_function

    wrong = b"\x01" * 32
    with psycopg.connect(database_url, autocommit=True) as conn:  # blocks under version 1
        conn.execute(
            "INSERT INTO key_fingerprints (key_version, fingerprint) VALUES (1, %s)", (wrong,)
        )
        conn.execute(
            "INSERT INTO blocks (block_id, size, stored_size, key_version, state)"
            " VALUES (%s, 1, 1, 1, 'live')",
            ("b3:" + "ab" * 32,),
        )
    env = replace(aws_settings, database_url=database_url).to_env()
    # checked again at each request, not a minute on
    monkeypatch.setattr(KmsKeyService, "REFUSED_S", 0)
    with environment({**env, "POWERTOOLS_METRICS_DISABLED": "true"}):
        api = load_function("api")  # its start is refused, but it starts
    try:
        answers: list[dict[str, Any]] = []
        claims = _claims()

        def send(path: str, body: Any) -> tuple[int, Any]:
            answers.append(api.handler(rest_event(path, body, claims=claims), Context()))
            return answers[-1]["statusCode"], json.loads(answers[-1]["body"])

        status, body = Client(send).upload("/a.bin", _write(tmp_path, "a.bin", 1000))
        assert status == 503 and body["error"]["code"] == "unavailable", body
        assert "block keys do not match" in body["error"]["message"]
        assert answers[-1]["multiValueHeaders"]["Retry-After"] == ["300"]
        with psycopg.connect(database_url) as conn:
            kept = conn.execute("SELECT fingerprint FROM key_fingerprints").fetchall()
            sessions = conn.execute("SELECT count(*) FROM upload_sessions").fetchone()
        assert kept == [(wrong,)]
        assert sessions == (0,)  # none made: it would count against the user's uploads
        with psycopg.connect(database_url, autocommit=True) as conn:  # the operator's fix
            conn.execute("DELETE FROM key_fingerprints")
        assert Client(send).upload("/a.bin", tmp_path / "a.bin")[0] == 200  # no restart
    finally:
        api.services.db.close()


def test_the_functions_commit_without_notifying(lambdas: SimpleNamespace) -> None:
    """Nothing LISTENs on AWS (the change feed is DynamoDB): a NOTIFY would serialise
    every commit on PostgreSQL's notify lock for nothing."""
    assert lambdas.api.services.db.notify is False
    assert lambdas.longpoll.services.db.notify is False


def test_each_invocation_refreshes_the_block_keys_before_it_runs(
    lambdas: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation reaches a warm function at its next invocation's start (once a minute),
    before any lock is held: asked inside a transaction, an SSM round trip held its locks."""
    refreshed: list[str] = []
    monkeypatch.setattr(lambdas.api.services.keys, "refresh", lambda: refreshed.append("."))
    status, _ = lambda_send(lambdas.api.handler, _claims())("/v1/account", None)
    assert status == 200 and refreshed == ["."]
