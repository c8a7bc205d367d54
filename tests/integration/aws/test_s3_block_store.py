"""S3BlockStore against moto. moto does not check SigV4 signatures, expiry or the
`x-amz-checksum-sha256` header of a presigned PUT: those tests check what the URL binds
(signed headers, expiry) and that the bytes that arrive are the block, byte for byte."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tessera.adapters.aws import AwsClients, AwsSettings, ColdObjectError, S3BlockStore
from tessera.blocks import block_id, decode_block, encode_block
from tessera.ports import StorageTier

pytestmark = pytest.mark.aws


@pytest.fixture
def store(aws_clients: AwsClients, aws_settings: AwsSettings) -> S3BlockStore:
    return S3BlockStore(aws_clients.s3, aws_settings.bucket)


def _key(prefix: str = "blocks") -> str:
    return f"{prefix}/{uuid.uuid4().hex}"


def test_presigned_put_binds_length_and_checksum_and_delivers_exact_bytes(
    store: S3BlockStore,
) -> None:
    plain = os.urandom(70_000)
    bid = block_id(plain)
    encoded = bytes(encode_block(plain, bid, b"k" * 32, 1))
    key = f"staging/{uuid.uuid4().hex}/{bid[3:]}"
    req = store.presign_put(key, size=len(encoded), sha256=hashlib.sha256(encoded).digest())

    query = parse_qs(urlsplit(req.url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["900"]
    signed = set(query["X-Amz-SignedHeaders"][0].split(";"))
    assert {"content-length", "x-amz-checksum-sha256"} <= signed
    assert (
        req.headers["x-amz-checksum-sha256"]
        == base64.b64encode(hashlib.sha256(encoded).digest()).decode()
    )
    assert req.headers["content-length"] == str(len(encoded))

    resp = httpx.request(req.method, req.url, content=encoded, headers=dict(req.headers))
    assert resp.status_code == 200, resp.text
    head = store.head(key)
    assert head is not None and head.size == len(encoded) and head.tier == StorageTier.HOT
    assert decode_block(store.get(key), bid, b"k" * 32) == plain


@pytest.mark.parametrize("bulk", [True, False])
def test_a_batch_is_presigned_by_botocore_once(
    aws_clients: AwsClients,
    aws_settings: AwsSettings,
    monkeypatch: pytest.MonkeyPatch,
    bulk: bool,
) -> None:
    """With the clients' credentials, botocore signs a batch's first PUT and the rest are
    signed alike (their signatures checked against botocore's in tests/unit); without
    them, botocore signs each. Either way every URL takes its block."""
    credentials = aws_clients.credentials if bulk else None
    store = S3BlockStore(aws_clients.s3, aws_settings.bucket, credentials=credentials)
    signed: list[str] = []
    real = store._presign

    def recording_presign(operation: str, params: dict[str, Any], expires_in: int) -> str:
        signed.append(params["Key"])
        return real(operation, params, expires_in)

    monkeypatch.setattr(store, "_presign", recording_presign)
    bodies = {_key("staging/bulk"): os.urandom(300 + n) for n in range(6)}
    reqs = store.presign_puts(
        [(k, len(b), hashlib.sha256(b).digest()) for k, b in bodies.items()], expires_in=600
    )
    assert len(signed) == (1 if bulk else 6)
    for (key, body), req in zip(bodies.items(), reqs, strict=True):
        assert parse_qs(urlsplit(req.url).query)["X-Amz-Expires"] == ["600"]
        assert req.headers["content-length"] == str(len(body))
        r = httpx.request(req.method, req.url, content=body, headers=dict(req.headers))
        assert r.status_code == 200, r.text
        assert store.get(key) == body
    with pytest.raises(ValueError):
        store.presign_puts([(_key(), 1, b"\0" * 32), (_key(), 1, b"short")])


def test_presign_rejects_bad_arguments(store: S3BlockStore) -> None:
    with pytest.raises(ValueError, match="expires_in"):
        store.presign_put("blocks/x", size=1, sha256=b"\0" * 32, expires_in=901)
    with pytest.raises(ValueError, match="expires_in"):
        store.presign_get("blocks/x", expires_in=0)
    with pytest.raises(ValueError, match="sha256"):
        store.presign_put("blocks/x", size=1, sha256=b"short")
    with pytest.raises(ValueError, match="size"):
        store.presign_put("blocks/x", size=-1, sha256=b"\0" * 32)


def test_presigned_get_returns_the_object(store: S3BlockStore) -> None:
    key = _key()
    store.put(key, b"encoded-bytes")
    req = store.presign_get(key, expires_in=60)
    assert req.method == "GET"
    assert parse_qs(urlsplit(req.url).query)["X-Amz-Expires"] == ["60"]
    assert httpx.get(req.url, headers=dict(req.headers)).content == b"encoded-bytes"


def test_put_get_head_copy_delete_list(store: S3BlockStore) -> None:
    upload = uuid.uuid4().hex
    staged = f"staging/{upload}/{'ab' * 32}"
    store.put(staged, b"x" * 100)
    assert store.head(staged) is not None
    assert list(store.list_keys(f"staging/{upload}/")) == [staged]
    final = _key()
    store.copy(staged, final)
    assert store.get(final) == b"x" * 100
    store.delete(staged)
    store.delete(staged)  # deleting a missing key is fine
    assert store.head(staged) is None
    with pytest.raises(KeyError):
        store.get(staged)
    with pytest.raises(KeyError):
        store.copy(staged, _key())


def test_a_copy_takes_no_header_its_uploader_chose(
    store: S3BlockStore, aws_clients: AwsClients, aws_settings: AwsSettings
) -> None:
    """A presigned PUT signs no Content-Encoding: an uploader's `gzip` on a staged block
    must not travel onto the canonical block (every holder's client decoded by it)."""
    encoded = b"\x01encoded block, not gzip"
    staged = f"staging/{uuid.uuid4().hex}/{'cd' * 32}"
    req = store.presign_put(staged, size=len(encoded), sha256=hashlib.sha256(encoded).digest())
    headers = {**req.headers, "Content-Encoding": "gzip", "Content-Type": "text/html"}
    assert httpx.put(req.url, headers=headers, content=encoded).status_code == 200
    final = _key()
    store.copy(staged, final)
    head = aws_clients.s3.head_object(Bucket=aws_settings.bucket, Key=final)
    assert "ContentEncoding" not in head
    assert head["ContentType"] == "application/octet-stream"
    assert store.get(final) == encoded


def test_list_keys_follows_pages(aws_clients: AwsClients, aws_settings: AwsSettings) -> None:
    store = S3BlockStore(aws_clients.s3, aws_settings.bucket, list_page_size=10)
    prefix = f"staging/{uuid.uuid4().hex}/"
    for i in range(25):
        store.put(f"{prefix}{i:04d}", b"")
    assert sorted(store.list_keys(prefix)) == [f"{prefix}{i:04d}" for i in range(25)]


def test_cold_tier_restore_and_back(store: S3BlockStore) -> None:
    key = _key()
    store.put(key, b"cold data")
    store.set_tier(key, StorageTier.COLD)
    head = store.head(key)
    assert head is not None
    assert (head.tier, head.restoring, head.restored) == (StorageTier.COLD, False, False)
    with pytest.raises(ColdObjectError):
        store.get(key)
    with pytest.raises(ColdObjectError):
        store.copy(key, _key())
    store.restore(key, days=1)
    store.restore(key, days=1)  # idempotent
    head = store.head(key)
    assert head is not None and head.tier == StorageTier.COLD
    # moto completes restores at once; real S3 reports restoring=True for hours first.
    assert head.restored or head.restoring
    assert store.get(key) == b"cold data"
    store.set_tier(key, StorageTier.HOT)
    head = store.head(key)
    assert head is not None and head.tier == StorageTier.HOT
    store.restore(key)  # a hot object needs no restore: not an error


def test_missing_objects(store: S3BlockStore) -> None:
    key = _key()
    assert store.head(key) is None
    with pytest.raises(KeyError):
        store.set_tier(key, StorageTier.COLD)
    with pytest.raises(KeyError):
        store.restore(key)


def test_sizes_lists_each_run_of_staged_keys_once(
    store: S3BlockStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staged keys sort in issue order: a run of asked keys is one listing from its first
    key, as long as the run; keys far apart are listed apart; nothing is HEADed."""
    from tessera.domain import object_keys

    upload = f"up_{uuid.uuid4().hex}"
    keys = [object_keys.staging_key(upload, f"b3:{n:064x}", n) for n in range(300)]
    for n, key in enumerate(keys):
        if n != 6:  # its URL was issued, its PUT never arrived
            store.put(key, b"x" * (n + 1))
    prefix = object_keys.staging_prefix(upload)
    lists: list[tuple[str, object, object]] = []
    real = store.list_sizes

    def recording(prefix: str, **range_: object) -> object:
        lists.append((prefix, range_.get("start_after"), range_.get("limit")))
        return real(prefix, **range_)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "list_sizes", recording)
    monkeypatch.setattr(store, "head", lambda key: pytest.fail(f"HEAD {key}"))
    assert store.sizes(keys[5:9]) == {keys[5]: 6, keys[7]: 8, keys[8]: 9}
    assert lists == [(prefix, f"{prefix}00000005", 4)]
    lists.clear()
    assert store.sizes([keys[3], keys[4], keys[299]]) == {keys[3]: 4, keys[4]: 5, keys[299]: 300}
    assert sorted(lists) == [(prefix, f"{prefix}00000003", 2), (prefix, f"{prefix}0000012b", 1)]
    # a long run is listed in parts, side by side (one was page after page in its commit)
    monkeypatch.setattr("tessera.adapters.aws.s3._RUN_KEYS", 100)
    lists.clear()
    assert len(store.sizes(keys)) == 299
    assert sorted(lists) == [
        (prefix, object_keys.run_start_after(prefix, first), 100) for first in (0, 100, 200)
    ]


def test_sizes_of_an_earlier_layout_lists_the_keys_folder(store: S3BlockStore) -> None:
    """Sessions opened before the ordinal layout keep `staging/<upload>/<group>/<hex>`."""
    upload = f"up_{uuid.uuid4().hex}"
    grouped = [f"staging/{upload}/{g}/{uuid.uuid4().hex}" for g in (0, 0, 1)]
    for key in grouped[1:]:
        store.put(key, b"abc")
    assert store.sizes(grouped) == {grouped[1]: 3, grouped[2]: 3}


def test_a_deleted_block_is_recovered_by_removing_its_delete_marker(
    store: S3BlockStore, aws_clients: AwsClients, aws_settings: AwsSettings
) -> None:
    """The bucket is versioned, as deployed: what gc deletes is gone for every reader (no
    head, no size) yet kept, and docs/deploy.md's recovery (delete the delete marker) brings
    the object back as it was, in its tier."""
    s3, bucket, key = aws_clients.s3, aws_settings.bucket, _key()
    store.put(key, b"block bytes")
    store.set_tier(key, StorageTier.COLD)  # a copy in place (its hot original is deleted)
    store.delete(key)
    assert store.head(key) is None and store.sizes([key]) == {}

    markers = s3.list_object_versions(Bucket=bucket, Prefix=key)["DeleteMarkers"]
    assert [m["IsLatest"] for m in markers] == [True]
    s3.delete_object(Bucket=bucket, Key=key, VersionId=markers[0]["VersionId"])
    head = store.head(key)
    assert head is not None and head.tier is StorageTier.COLD
    store.restore(key, days=1)  # moto restores at once
    assert store.get(key) == b"block bytes"


@pytest.mark.parametrize(
    ("source", "copy", "deleted"),
    [("v1", "v2", ["v1"]), ("null", "null", []), (None, None, [])],
    ids=["versioned", "suspended", "unversioned"],
)
def test_a_tier_move_deletes_only_a_version_its_copy_left_behind(
    aws_clients: AwsClients, source: str | None, copy: str | None, deleted: list[str]
) -> None:
    """With versioning suspended, a copy in place replaces the `null` version (S3's
    documented behaviour; moto answers no version ids there, so its answers are stubbed
    here): deleting the version the copy superseded would have deleted the block."""
    from botocore.stub import Stubber

    s3 = aws_clients.s3
    key = _key()
    answer: dict[str, Any] = {"CopyObjectResult": {}}
    if source is not None:
        answer |= {"CopySourceVersionId": source, "VersionId": copy}
    with Stubber(s3) as stub:
        stub.add_response("head_object", {"ContentLength": 5, "StorageClass": "STANDARD"})
        stub.add_response("copy_object", answer)
        for version in deleted:
            stub.add_response(
                "delete_object", {}, {"Bucket": "b", "Key": key, "VersionId": version}
            )
        S3BlockStore(s3, "b").set_tier(key, StorageTier.COLD)
        stub.assert_no_pending_responses()  # and an unexpected delete would have raised
