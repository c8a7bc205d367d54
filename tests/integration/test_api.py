"""The HTTP API through `build_resolver(services).resolve(event, ctx)` with REST proxy events."""

from __future__ import annotations

import base64
import json
import random
import sys
import threading
import time
import typing
from typing import Any

import pytest
from pydantic import BaseModel

from tessera.api.routes import ROUTES
from tessera.blocks import block_id, content_hash
from tessera.domain import paths
from tessera.domain.services import Services
from tessera.ports import Principal
from tests.concurrency import run_at_once

from .conftest import Caller, api_event, put_file, set_block_state, upload_blocks


def _commit_body(
    path: str, data: bytes, upload_id: str | None, **extra: object
) -> dict[str, object]:
    bid = block_id(data)
    return {
        "path": path,
        "blocks": [{"id": bid, "size": len(data)}],
        "size": len(data),
        "content_hash": content_hash([bid]),
        "upload_id": upload_id,
        **extra,
    }


def test_health_and_openapi_need_no_auth(call: Caller) -> None:
    status, body, _ = call("GET", "/v1/health")
    assert status == 200 and body["status"] == "ok"
    status, doc, _ = call("GET", "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for route in [
        "/v1/uploads",
        "/v1/uploads/urls",
        "/v1/commit",
        "/v1/commit_batch",
        "/v1/download",
        "/v1/metadata",
        "/v1/list_folder",
        "/v1/list_folder/continue",
        "/v1/list_folder/longpoll",
        "/v1/revisions",
        "/v1/restore",
        "/v1/move",
        "/v1/delete",
        "/v1/create_folder",
        "/v1/trash/list",
        "/v1/share",
        "/v1/unshare",
        "/v1/shares",
        "/v1/shares/accept",
        "/v1/shares/decline",
        "/v1/shares/invitations",
        "/v1/account",
    ]:
        assert route in doc["paths"], route
    commit = doc["paths"]["/v1/commit"]["post"]
    assert commit["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "CommitRequest"
    )
    assert "409" in commit["responses"]
    assert "CommitRequest" in doc["components"]["schemas"]
    assert "202" in doc["paths"]["/v1/download"]["post"]["responses"]
    # every route may be throttled or find the database unavailable, and these routes'
    # own answers were missing from the document (docs/api.md has them)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path != "/v1/health":
                assert {"429", "503"} <= set(op["responses"]), (method, path)
    for path, code in [
        ("/v1/uploads/urls", "409"),
        ("/v1/share", "409"),
        ("/v1/unshare", "409"),
        ("/v1/shares/accept", "404"),
        ("/v1/shares/decline", "404"),
        ("/v1/restore", "413"),
    ]:
        assert code in doc["paths"][path]["post"]["responses"], (path, code)


def test_no_claims_is_401(call: Caller) -> None:
    for method, path in [("GET", "/v1/account"), ("POST", "/v1/list_folder")]:
        status, body, _ = call(method, path, {})
        assert status == 401 and body["error"]["code"] == "unauthorized"


def test_commit_list_download_round_trip(
    call: Caller, services: Services, alice: Principal
) -> None:
    upload_id = upload_blocks(services, alice, "/a.txt", [b"hello"])
    status, entry, _ = call(
        "POST", "/v1/commit", _commit_body("/a.txt", b"hello", upload_id), alice
    )
    assert status == 200, entry
    assert entry[".tag"] == "file" and entry["rev"] == 1 and entry["path_lower"] == "/a.txt"
    status, listing, _ = call("POST", "/v1/list_folder", {"path": ""}, alice)
    assert status == 200 and [e["path_display"] for e in listing["entries"]] == ["/a.txt"]
    status, dl, _ = call("POST", "/v1/download", {"path": "/a.txt"}, alice)
    assert status == 200 and dl["blocks"][0]["id"] == block_id(b"hello")
    assert dl["blocks"][0]["key"] and dl["blocks"][0]["method"] == "GET"
    status, acct, _ = call("GET", "/v1/account", None, alice)
    assert status == 200 and acct["used_bytes"] == 5


def test_conflict_body_carries_rev(call: Caller, services: Services, alice: Principal) -> None:
    e = put_file(services, alice, "/c", b"one")
    put_file(services, alice, "/c", b"two", parent_rev=1)
    status, body, _ = call(
        "POST", "/v1/commit", _commit_body("/c", b"one", None, parent_rev=1), alice
    )
    assert status == 409
    assert body["error"]["code"] == "conflict" and body["error"]["rev"] == 2
    assert body["error"]["file_id"] == e.file_id


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"path": "/x"}, "blocks"),
        ({"path": "/x", "blocks": [], "size": -1, "content_hash": "b3:" + "0" * 64}, "size"),
        (
            {
                "path": "/x",
                "blocks": [{"id": "md5:abc", "size": 1}],
                "size": 1,
                "content_hash": "b3:" + "0" * 64,
            },
            "blocks.0.id",
        ),
        ({"path": "/x", "blocks": [], "size": 0, "content_hash": "nope"}, "content_hash"),
        (
            {
                "path": "/x",
                "blocks": [],
                "size": 0,
                "content_hash": "b3:" + "0" * 64,
                "is_admin": True,
            },
            "is_admin",
        ),
    ],
)
def test_malformed_bodies_are_422(
    call: Caller, alice: Principal, body: dict[str, object], field: str
) -> None:
    status, out, _ = call("POST", "/v1/commit", body, alice)
    assert status == 422 and out["error"]["code"] == "invalid"
    assert any(f["field"] == field for f in out["error"]["fields"]), out


@pytest.mark.parametrize("timeout", ["30", True, 30.5])
def test_a_long_poll_timeout_that_is_not_an_integer_is_422_as_on_aws(
    call: Caller, alice: Principal, timeout: object
) -> None:
    """API Gateway's model takes a JSON integer only: "30" and true (taken as 1) were
    answered here and refused there."""
    cursor = call("POST", "/v1/list_folder", {"path": ""}, alice)[1]["cursor"]
    status, out, _ = call(
        "POST", "/v1/list_folder/longpoll", {"cursor": cursor, "timeout": timeout}, alice
    )
    assert status == 422 and out["error"]["fields"][0]["field"] == "timeout", out


@pytest.mark.parametrize("mtime", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_an_mtime_with_no_utc_form_is_422_and_breaks_no_listing(
    call: Caller, alice: Principal, mtime: str
) -> None:
    """Year 10000 once in UTC: PostgreSQL stored it, then every read of the row failed to
    load it (a 500 on each listing of the folder, for every member of a shared one)."""
    empty = {"path": "/p", "blocks": [], "size": 0, "content_hash": content_hash([])}
    status, out, _ = call("POST", "/v1/commit", {**empty, "mtime": mtime}, alice)
    assert status == 422 and out["error"]["fields"][0]["field"] == "mtime", out
    status, out, _ = call(
        "POST", "/v1/commit", {**empty, "mtime": "2026-11-27T12:00:00+09:00"}, alice
    )
    assert status == 200 and out["mtime"] == "2026-11-27T03:00:00Z", out
    status, out, _ = call("POST", "/v1/list_folder", {"path": ""}, alice)
    assert status == 200 and [e["name"] for e in out["entries"]] == ["p"]


def _cjk_path(size: int) -> str:
    """A path of `size` UTF-8 bytes of random CJK names (text that does not compress)."""
    rng = random.Random(size)
    names, left = [], size
    while left > 0:
        take = min(left - 1, 252)
        name = "".join(chr(rng.randrange(0x4E00, 0x9FA5)) for _ in range(take // 3))
        name += "a" * (take - len(name.encode()))
        names.append(name)
        left -= 1 + take
    return "/" + "/".join(names)


def test_the_longest_path_is_stored_and_a_longer_one_is_422(call: Caller, alice: Principal) -> None:
    """PostgreSQL indexes a path's key in btree entries of at most 2,704 bytes: a 3.4 KB
    path that does not compress failed there, as a 503 the client retried for ever."""
    longest = _cjk_path(paths.MAX_PATH_BYTES)
    assert len(longest.encode()) == paths.MAX_PATH_BYTES
    status, out, _ = call("POST", "/v1/create_folder", {"path": longest}, alice)
    assert status == 200, out
    for path in (longest + "b", _cjk_path(3400)):
        status, out, _ = call("POST", "/v1/create_folder", {"path": path}, alice)
        assert status == 422 and "longer than 2048 bytes" in out["error"]["message"], out


def test_a_move_that_would_make_a_path_too_long_is_422_and_moves_nothing(
    call: Caller, alice: Principal
) -> None:
    deep = "/x/" + "/".join(["a" * 200] * 9)  # 1,811 bytes
    assert call("POST", "/v1/create_folder", {"path": deep}, alice)[0] == 200
    status, out, _ = call(
        "POST", "/v1/move", {"from_path": "/x", "to_path": "/" + "b" * 250}, alice
    )
    assert status == 422 and "would be longer than 2048 bytes" in out["error"]["message"], out
    assert call("POST", "/v1/metadata", {"path": deep}, alice)[0] == 200


MANY = 200_000


@pytest.mark.parametrize(
    ("route", "body", "first"),
    [
        ("/v1/uploads", {"files": [{}] * MANY}, "files.0.path"),
        ("/v1/uploads/urls", {"upload_id": "up_x", "blocks": [{}] * MANY}, "blocks.0.id"),
        ("/v1/commit_batch", {"entries": [{}] * MANY}, "entries.0.path"),
        ("/v1/download", {"path": "/a", "have": [7] * 10_000}, "have.0"),
        (
            "/v1/commit",
            {**_commit_body("/a.txt", b"x", None), "blocks": [{}] * MANY},
            "blocks.0.id",
        ),
    ],
    ids=["uploads", "urls", "commit-batch", "download-have", "commit-blocks"],
)
def test_a_list_of_bad_items_is_answered_for_its_first_bad_item(
    call: Caller, alice: Principal, route: str, body: dict[str, object], first: str
) -> None:
    """Each bad field of each item was an error: a 5 MB body of `{}` items took the
    gateway to 8.8 GB and was answered with 407 MB, after 70 s."""
    status, out, _ = call("POST", route, body, alice)
    assert status == 422, out
    assert out["error"]["message"].startswith(first + ":"), out["error"]["message"]
    assert 1 <= len(out["error"]["fields"]) <= 20


def _lists_without_fail_fast(model: type[BaseModel], seen: set[type[BaseModel]]) -> list[str]:
    """`Model.field` of each list in `model`, or a model in it, that reads every item."""
    if model in seen:
        return []
    seen.add(model)
    found = []
    for name, info in model.model_fields.items():
        types = [info.annotation, *typing.get_args(info.annotation)]
        fails_fast = any(getattr(m, "fail_fast", False) for m in info.metadata)
        if any(typing.get_origin(t) is list for t in types) and not fails_fast:
            found.append(f"{model.__name__}.{name}")
        nested = [a for t in types for a in (t, *typing.get_args(t))]
        for t in nested:
            if isinstance(t, type) and issubclass(t, BaseModel):
                found += _lists_without_fail_fast(t, seen)
    return found


def test_every_list_a_request_holds_stops_at_its_first_bad_item() -> None:
    """(The test above for the lists there are; this one for any list added later.)"""
    seen: set[type[BaseModel]] = set()
    found = [n for r in ROUTES if r.request for n in _lists_without_fail_fast(r.request, seen)]
    assert found == []
    assert len(seen) > 20


def test_a_body_of_many_unknown_fields_is_a_small_422(call: Caller, alice: Principal) -> None:
    body = {"path": "/x", **{f"k{i}": 1 for i in range(MANY)}}
    status, out, _ = call("POST", "/v1/create_folder", body, alice)
    assert status == 422 and out["error"]["code"] == "invalid"
    assert out["error"]["message"] == f"body: {MANY} fields are unknown, missing or invalid"
    assert out["error"]["fields"] == []
    few = {"path": "/x", **{f"k{i}": 1 for i in range(30)}}
    status, out, _ = call("POST", "/v1/create_folder", few, alice)
    assert status == 422 and len(out["error"]["fields"]) == 20
    assert out["error"]["message"] == "k0: Extra inputs are not permitted (and 29 more)"


@pytest.mark.parametrize("raw", ["{not json", "[" * 50_000], ids=["malformed", "deeply-nested"])
def test_invalid_json_is_422(call: Caller, alice: Principal, raw: str) -> None:
    status, out, _ = call("POST", "/v1/commit", None, alice, raw_body=raw)
    assert status == 422 and "JSON" in out["error"]["message"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/share", {"path": "/docs", "email": "a\u0000@b.c", "access": "editor"}),
        ("/v1/metadata", {"file_id": "id:\u0000"}),
        ("/v1/commit", _commit_body("/a.txt", b"x", None, idempotency_key="k\u0000")),
        ("/v1/commit", _commit_body("/a\ud800b.txt", b"x", None)),
        ("/v1/share", {"path": "/docs", "email": "a\udfff@b.c", "access": "editor"}),
        ("/v1/commit", _commit_body("/a.txt", b"x", None, idempotency_key="k\udc80")),
    ],
    ids=[
        "share-email",
        "file-id",
        "idempotency-key",
        "path-surrogate",
        "email-surrogate",
        "key-surrogate",
    ],
)
def test_nul_or_a_lone_surrogate_in_any_text_is_422_not_500(
    call: Caller, alice: Principal, route: str, body: dict[str, object]
) -> None:
    """PostgreSQL text holds neither: the value reached psycopg (or the path's UTF-8 length
    check) and failed there (500)."""
    status, out, _ = call("POST", route, body, alice)
    assert status == 422, out
    assert out["error"]["code"] == "invalid"
    assert "NUL" in out["error"]["message"]


def test_a_surrogate_pair_is_one_character_and_welcome(call: Caller, alice: Principal) -> None:
    status, out, _ = call("POST", "/v1/create_folder", {"path": "/\U0001f600"}, alice)
    assert status == 200, out
    assert out["path_display"] == "/\U0001f600"


def test_a_body_that_is_not_utf8_is_422(services: Services, alice: Principal) -> None:
    """The gateway passes such a body base64-encoded; decoding it failed outside the parser."""
    from tessera.api import build_resolver

    event = api_event("POST", "/v1/list_folder", None, alice)
    event.update(body=base64.b64encode(b"\xff{}").decode(), isBase64Encoded=True)
    response = build_resolver(services).resolve(event, None)  # type: ignore[arg-type]
    assert response["statusCode"] == 422
    assert json.loads(response["body"])["error"]["code"] == "invalid"


@pytest.mark.parametrize(
    "bad", ["/../../etc/passwd", "/a/./b", "no-slash", "/a\u0000b", "/" + "x" * 300]
)
def test_traversal_is_422_on_every_path_route(call: Caller, alice: Principal, bad: str) -> None:
    bodies = [
        ("/v1/metadata", {"path": bad}),
        ("/v1/download", {"path": bad}),
        ("/v1/list_folder", {"path": bad}),
        ("/v1/revisions", {"path": bad}),
        ("/v1/restore", {"path": bad, "rev": 1}),
        ("/v1/move", {"from_path": bad, "to_path": "/ok"}),
        ("/v1/move", {"from_path": "/ok", "to_path": bad}),
        ("/v1/delete", {"path": bad}),
        ("/v1/create_folder", {"path": bad}),
        ("/v1/trash/list", {"path": bad}),
        ("/v1/share", {"path": bad, "email": "b@example.com"}),
        ("/v1/unshare", {"path": bad}),
        ("/v1/commit", _commit_body(bad, b"x", None)),
        (
            "/v1/uploads",
            {"files": [{"path": bad, "size": 0, "content_hash": content_hash([]), "blocks": []}]},
        ),
    ]
    for route, body in bodies:
        status, out, _ = call("POST", route, body, alice)
        assert status == 422, (route, out)
        assert out["error"]["code"] in {"invalid_path", "invalid"}, (route, out)


def test_other_users_ids_are_404_and_cursor_400(
    call: Caller, services: Services, alice: Principal, bob: Principal
) -> None:
    e = put_file(services, alice, "/private", b"p")
    upload_id = upload_blocks(services, alice, "/next", [b"n"])
    _, listing, _ = call("POST", "/v1/list_folder", {"path": ""}, alice)
    call("GET", "/v1/account", None, bob)
    assert call("POST", "/v1/metadata", {"file_id": e.file_id}, bob)[0] == 404
    assert call("POST", "/v1/download", {"file_id": e.file_id}, bob)[0] == 404
    report = {"file_id": e.file_id, "rev": e.rev, "block_id": block_id(b"p")}
    assert call("POST", "/v1/blocks/report", report, bob)[0] == 404
    status, body, _ = call("POST", "/v1/blocks/report", {**report, "block_id": "b3:x"}, alice)
    assert status == 422 and body["error"]["fields"][0]["field"] == "block_id"
    status, body, _ = call("POST", "/v1/commit", _commit_body("/next", b"n", upload_id), bob)
    assert status == 404
    status, body, _ = call("POST", "/v1/list_folder/continue", {"cursor": listing["cursor"]}, bob)
    assert status == 400 and body["error"]["code"] == "invalid_cursor"
    status, body, _ = call(
        "POST", "/v1/list_folder/longpoll", {"cursor": "forged.cursor", "timeout": 30}, alice
    )
    assert status == 400 and body["error"]["code"] == "invalid_cursor"


def test_restoring_is_202_with_retry_after(
    call: Caller, services: Services, alice: Principal
) -> None:
    from tessera.ports import StorageTier

    put_file(services, alice, "/cold", b"cold")
    bid = block_id(b"cold")
    bs = services.block_store
    bs.copy(next(iter(bs.list_keys("staging/"))), "blocks/" + bid[3:])
    bs.set_tier("blocks/" + bid[3:], StorageTier.COLD)
    with services.db.transaction() as store:
        store.conn.execute("UPDATE version_blocks SET staged_key = NULL")
        set_block_state(store, [bid], "cold")
    status, body, headers = call("POST", "/v1/download", {"path": "/cold"}, alice)
    assert status == 202 and body["restoring"] is True
    assert headers["Retry-After"] == str(services.settings.restore_retry_after_s)


def test_unavailable_carries_retry_after(
    call: Caller, services: Services, alice: Principal
) -> None:
    put_file(services, alice, "/q", b"q")
    with services.db.transaction() as store:
        store.conn.execute("UPDATE version_blocks SET staged_key = NULL")
        set_block_state(store, [block_id(b"q")], "quarantined")
    status, body, headers = call("POST", "/v1/download", {"path": "/q"}, alice)
    assert status == 503 and "Retry-After" in headers
    assert body["error"]["code"] == "block_unavailable"


def test_unknown_errors_are_bare_500(
    call: Caller, services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("secret internals: password=hunter2")

    monkeypatch.setattr(services.db, "transaction", boom)
    status, body, _ = call("GET", "/v1/account", None, alice)
    assert status == 500 and body == {"error": {"code": "internal", "message": "internal error"}}


def test_unknown_route_is_404_json(call: Caller, alice: Principal) -> None:
    status, body, _ = call("POST", "/v1/nope", {}, alice)
    assert status == 404 and body["error"]["code"] == "not_found"


def test_batch_and_share_over_http(
    call: Caller, services: Services, alice: Principal, bob: Principal
) -> None:
    call("GET", "/v1/account", None, bob)
    upload_id = upload_blocks(services, alice, "/T/a", [b"a"])
    status, out, _ = call(
        "POST",
        "/v1/commit_batch",
        {
            "entries": [
                _commit_body("/T/a", b"a", upload_id),
                _commit_body("/T/b", b"never uploaded", upload_id),
            ]
        },
        alice,
    )
    assert status == 200
    assert [(e[".tag"], e["status"]) for e in out["entries"]] == [
        ("success", 200),
        ("failure", 422),
    ]
    status, share, _ = call(
        "POST", "/v1/share", {"path": "/T", "email": bob.email, "access": "viewer"}, alice
    )
    # an invitation: bob is not a member until he accepts it
    assert status == 200 and share["members"] == [{"email": alice.email, "access": "owner"}]
    assert share["invited"] == [{"email": bob.email, "access": "viewer"}]
    status, shares, _ = call("POST", "/v1/shares", {}, bob)
    assert status == 200 and shares["shares"] == []
    assert [
        (i["ns_id"], i["name"], i["owner_email"], i["access"]) for i in shares["invitations"]
    ] == [(share["ns_id"], "T", alice.email, "viewer")]
    status, body, _ = call("POST", "/v1/delete", {"path": "/T/a"}, bob)
    assert status == 404 and body["error"]["code"] == "not_found"  # not in his view yet
    status, accepted, _ = call("POST", "/v1/shares/accept", {"ns_id": share["ns_id"]}, bob)
    assert status == 200 and accepted["path_display"] == "/T" and accepted["invited"] == []
    assert accepted["ns_id"] == share["ns_id"] and accepted["access"] == "viewer"
    assert accepted["members"][1] == {"email": bob.email, "access": "viewer"}
    status, body, _ = call("POST", "/v1/delete", {"path": "/T/a"}, bob)
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, shares, _ = call("POST", "/v1/shares", {}, bob)
    assert status == 200 and shares["shares"][0]["access"] == "viewer"
    assert shares["invitations"] == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/list_folder", {"path": ""}, 200),
        ("POST", "/v1/list_folder", {"path": "", "recursive": True}, 200),
        ("POST", "/v1/metadata", {"path": "/nothing.txt"}, 404),
        ("POST", "/v1/revisions", {"path": "/nothing.txt"}, 404),
        ("POST", "/v1/trash/list", {"path": ""}, 200),
        ("POST", "/v1/shares", None, 200),
        ("GET", "/v1/account", None, 200),
        ("POST", "/v1/download", {"path": "/nothing.txt"}, 404),
        # long-poll planning reads no database; a cursor a newcomer cannot own is 400
        ("POST", "/v1/list_folder/longpoll", {"cursor": "c1.1.e30.00", "timeout": 30}, 400),
        ("POST", "/v1/list_folder/continue", {"cursor": "c1.1.e30.00"}, 400),
    ],
)
def test_a_new_users_first_call_may_be_a_read(
    call: Caller, method: str, path: str, body: dict[str, object] | None, status: int
) -> None:
    """Provisioning happens in its own write transaction, so a read-only first request
    (list_folder's snapshot is READ ONLY) answers normally instead of a 500."""
    newcomer = Principal(user_id="u-first-read", email="first-read@example.com")
    got, answer, _ = call(method, path, body, newcomer)
    assert got == status, answer
    # The user exists afterwards: a second read sees the same (empty) root.
    got, listing, _ = call("POST", "/v1/list_folder", {"path": ""}, newcomer)
    assert got == 200 and listing["entries"] == []


def test_a_taken_email_under_another_user_id_is_409(call: Caller, alice: Principal) -> None:
    assert call("POST", "/v1/list_folder", {"path": ""}, alice)[0] == 200
    impostor = Principal(user_id="u-other", email=alice.email.upper())
    status, body, _ = call("POST", "/v1/list_folder", {"path": ""}, impostor)
    assert status == 409 and body["error"]["code"] == "conflict", body


def test_an_unreachable_database_is_503_with_retry_after(
    services: Services, alice: Principal
) -> None:
    """No connection within the pool's timeout: the client is told to retry, not 500."""
    import dataclasses
    import socket

    from tessera.api import build_resolver
    from tessera.metadata import Database
    from tessera.metadata.db import RETRY_AFTER_S

    from .conftest import api_event

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = Database(f"postgresql://u@127.0.0.1:{port}/x?connect_timeout=1", timeout=0.5)
    try:
        resolver = build_resolver(dataclasses.replace(services, db=dead))
        response = resolver.resolve(api_event("GET", "/v1/account", None, alice), None)  # type: ignore[arg-type]
    finally:
        dead.close()
    assert response["statusCode"] == 503
    headers = dict(response.get("headers") or {})
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers.setdefault(name, values[0])
    assert headers["Retry-After"] == str(RETRY_AFTER_S)
    assert '"unavailable"' in response["body"] and "OperationalError" not in response["body"]


def test_requests_at_once_are_each_answered_for_their_own_caller(services: Services) -> None:
    """The local gateway resolves requests on many threads at once. Powertools keeps the
    event being resolved on its router class, shared by every thread: a request was routed
    with another's path and answered with another user's account (their listing, their
    block keys), and a commit could run twice."""
    from tessera.api import build_resolver

    from .conftest import principal

    resolver = build_resolver(services)
    users = [principal(f"racer{n}") for n in range(8)]
    for who in users:  # their accounts exist before the race
        resolver.resolve(api_event("GET", "/v1/account", None, who), None)  # type: ignore[arg-type]
    turn = iter(range(len(users)))
    lock = threading.Lock()

    def calls() -> list[str]:
        with lock:
            n = next(turn)
        who, wrong = users[n], []
        for i in range(60):
            if (i + n) % 3 == 0:  # another route, another method, in between
                answer = resolver.resolve(api_event("GET", "/v1/health"), None)  # type: ignore[arg-type]
                if json.loads(answer["body"]).get("status") != "ok":
                    wrong.append(answer["body"])
                continue
            answer = resolver.resolve(api_event("GET", "/v1/account", None, who), None)  # type: ignore[arg-type]
            body = json.loads(answer["body"])
            if body.get("email") != who.email:
                wrong.append(answer["body"])
        return wrong

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns often: the race shows in a few calls
    try:
        results, errors = run_at_once(calls, threads=len(users))
    finally:
        sys.setswitchinterval(interval)
    assert errors == [] and len(results) == len(users)
    assert [w for wrong in results for w in wrong] == []


def test_a_routes_first_calls_at_once_all_answer(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Powertools builds a route's middleware stack at its first call, unlocked: two first
    calls at once wrapped it twice, and the route answered 500 until a restart."""
    from aws_lambda_powertools.event_handler import api_gateway

    from tessera.api import build_resolver

    def slow_debug(message: object, *args: Any, **kwargs: Any) -> None:
        if str(message).startswith("Building middleware stack"):
            time.sleep(0.002)  # a slow build: the first calls at once overlap in it

    monkeypatch.setattr(api_gateway.logger, "debug", slow_debug)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(5):
            resolver = build_resolver(services)  # its routes not called yet

            def health(resolver: Any = resolver) -> int:
                return int(resolver.resolve(api_event("GET", "/v1/health"), None)["statusCode"])

            results, errors = run_at_once(health, threads=8)
            assert errors == [] and results == [200] * 8
            assert health() == 200  # and after
    finally:
        sys.setswitchinterval(interval)
