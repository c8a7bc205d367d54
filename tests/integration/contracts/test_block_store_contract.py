"""The BlockStore contract: every adapter (filesystem, S3) must pass these.

Presigned URLs are exercised with real HTTP (httpx) against the store's URLs; a backend
that cannot check something (moto does not verify signatures, expiry or checksums) names
the check in its harness's `unsupported` and that test skips with the reason.
"""

from __future__ import annotations

import hashlib
import os
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tessera.ports import StorageTier
from tests.corruption import with_last_byte_flipped

from .harnesses import BlockStoreHarness


def _key(prefix: str = "blocks") -> str:
    return f"{prefix}/{os.urandom(32).hex()}"


def _tamper(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_put_get_head_delete(block_store_harness: BlockStoreHarness) -> None:
    store = block_store_harness.store
    key = _key()
    assert store.head(key) is None
    store.put(key, b"stored bytes")
    assert store.get(key) == b"stored bytes"
    head = store.head(key)
    assert head is not None
    assert (head.key, head.size, head.tier) == (key, 12, StorageTier.HOT)
    store.delete(key)
    assert store.head(key) is None
    with pytest.raises(KeyError):
        store.get(key)
    store.delete(key)  # deleting a missing key is not an error


def test_put_overwrites(block_store_harness: BlockStoreHarness) -> None:
    store = block_store_harness.store
    key = _key()
    store.put(key, b"one")
    store.put(key, b"two!")
    assert store.get(key) == b"two!"


def test_copy_and_list(block_store_harness: BlockStoreHarness) -> None:
    store = block_store_harness.store
    upload = os.urandom(8).hex()
    staged = _key(f"staging/{upload}")
    dst = _key()
    store.put(staged, b"block")
    store.copy(staged, dst)
    assert store.get(dst) == b"block"
    assert store.get(staged) == b"block"  # copy leaves the source
    assert set(store.list_keys(f"staging/{upload}/")) == {staged}
    assert dst in set(store.list_keys("blocks/"))
    with pytest.raises(KeyError):
        store.copy(_key(), _key())


def test_list_sizes_lists_exactly_the_prefix(block_store_harness: BlockStoreHarness) -> None:
    store = block_store_harness.store
    upload = os.urandom(8).hex()
    small, big = _key(f"staging/{upload}"), _key(f"staging/{upload}")
    store.put(small, b"x")
    store.put(big, b"y" * 3000)
    store.put(_key(f"staging/{upload}x"), b"a sibling session whose id extends ours")
    assert dict(store.list_sizes(f"staging/{upload}/")) == {small: 1, big: 3000}
    partial = dict(store.list_sizes(f"staging/{upload[:6]}"))  # a prefix mid-segment
    assert {small, big} < set(partial)
    assert list(store.list_sizes(f"staging/{os.urandom(8).hex()}/")) == []
    store.set_tier(big, StorageTier.COLD)  # cold objects are listed as well
    assert dict(store.list_sizes(f"staging/{upload}/"))[big] == 3000


def test_list_sizes_from_a_key_on_lists_in_key_order(
    block_store_harness: BlockStoreHarness,
) -> None:
    """`start_after` and `limit` are ListObjectsV2's StartAfter and MaxKeys: the keys after
    one, in key order, at most `limit` (a commit lists its run of staged keys this way)."""
    store = block_store_harness.store
    prefix = f"staging/{os.urandom(8).hex()}/"
    keys = [f"{prefix}{n:08x}-{os.urandom(4).hex()}" for n in range(7)]
    for n, key in enumerate(reversed(keys)):
        store.put(key, b"z" * (n + 1))
    store.put(f"{prefix[:-1]}x/00000003-aa", b"a sibling session")
    run = list(store.list_sizes(prefix, start_after=f"{prefix}00000002", limit=3))
    assert run == [(keys[2], 5), (keys[3], 4), (keys[4], 3)]
    assert [k for k, _ in store.list_sizes(prefix, start_after=keys[4])] == keys[5:]
    assert [k for k, _ in store.list_sizes(prefix, limit=2)] == keys[:2]
    assert list(store.list_sizes(prefix, start_after=f"{prefix}00000007", limit=5)) == []


def test_sizes_answers_for_the_keys_that_have_an_object(
    block_store_harness: BlockStoreHarness,
) -> None:
    """How a commit checks its staged blocks, whatever the store answers it with."""
    store = block_store_harness.store
    upload = f"up_{os.urandom(8).hex()}"
    keys = [f"staging/{upload}/{n:08x}-{os.urandom(4).hex()}" for n in (0, 1, 2, 500)]
    grouped = f"staging/{upload}x/0/{os.urandom(4).hex()}"
    canonical, absent = _key(), _key()
    for n, key in enumerate([keys[0], keys[2], keys[3], grouped, canonical]):
        store.put(key, b"q" * (n + 1))
    store.set_tier(keys[3], StorageTier.COLD)
    assert store.sizes([*keys, grouped, canonical, absent]) == {
        keys[0]: 1,
        keys[2]: 2,
        keys[3]: 3,
        grouped: 4,
        canonical: 5,
    }
    assert store.sizes([]) == {}


def test_cold_tier_needs_restore(block_store_harness: BlockStoreHarness) -> None:
    store = block_store_harness.store
    key = _key()
    store.put(key, b"cold bytes")
    store.set_tier(key, StorageTier.COLD)
    head = store.head(key)
    assert head is not None
    assert (head.tier, head.restoring, head.restored, head.size) == (
        StorageTier.COLD,
        False,
        False,
        10,
    )
    with pytest.raises(block_store_harness.not_restored_error):
        store.get(key)
    with pytest.raises(block_store_harness.not_restored_error):
        store.copy(key, _key())
    store.restore(key, days=1)
    store.restore(key, days=1)  # idempotent
    deadline = time.monotonic() + 10
    while not (head := store.head(key)) or not head.restored:
        assert head is not None and head.restoring
        assert time.monotonic() < deadline, "restore never completed"
        time.sleep(0.2)
    assert head.tier is StorageTier.COLD
    assert store.get(key) == b"cold bytes"
    store.set_tier(key, StorageTier.HOT)
    head = store.head(key)
    assert head is not None and head.tier is StorageTier.HOT
    assert store.get(key) == b"cold bytes"
    # the moves kept no second copy of the same bytes (on S3 each is a copy in place,
    # which left the hot original a noncurrent version, paid for 30 more days)
    assert store.earlier_versions(key) == []


def test_a_block_overwritten_or_deleted_keeps_its_earlier_versions(
    block_store_harness: BlockStoreHarness,
) -> None:
    """What scrub repairs a block from: the store keeps what a canonical key held before
    each overwrite or delete (S3: the versioned bucket), newest first, for a copy back."""
    store = block_store_harness.store
    key, restored = _key(), _key()
    assert store.earlier_versions(key) == []
    store.put(key, b"first")
    store.put(key, b"second!")
    assert [v.size for v in store.earlier_versions(key)] == [5]
    store.delete(key)
    versions = store.earlier_versions(key)
    assert [(v.size, v.tier) for v in versions] == [(7, StorageTier.HOT), (5, StorageTier.HOT)]
    assert store.head(key) is None
    store.copy(key, restored, version=versions[1].version_id)
    assert store.get(restored) == b"first"
    store.copy(key, key, version=versions[0].version_id)  # the block back under its key
    assert store.get(key) == b"second!"
    with pytest.raises(KeyError):
        store.copy(_key(), restored, version=versions[0].version_id)  # another key's


def test_an_earlier_version_in_the_cold_tier_needs_a_restore(
    block_store_harness: BlockStoreHarness,
) -> None:
    store = block_store_harness.store
    key = _key()
    store.put(key, b"cold block")
    store.set_tier(key, StorageTier.COLD)
    store.delete(key)
    versions = store.earlier_versions(key)
    assert [(v.size, v.tier) for v in versions] == [(10, StorageTier.COLD)]
    with pytest.raises(block_store_harness.not_restored_error):
        store.copy(key, _key(), version=versions[0].version_id)


def test_presigned_put_then_get(block_store_harness: BlockStoreHarness) -> None:
    store = block_store_harness.store
    key = _key("staging/up1")
    body = os.urandom(5000)
    req = store.presign_put(key, size=len(body), sha256=hashlib.sha256(body).digest())
    assert req.method == "PUT"
    assert req.expires_at is not None
    r = httpx.put(req.url, content=body, headers=dict(req.headers))
    assert r.status_code == 200, r.text
    assert store.get(key) == body
    get = store.presign_get(key, expires_in=60)
    r = httpx.get(get.url, headers=dict(get.headers))
    assert r.status_code == 200
    assert r.content == body


def test_a_batch_of_presigned_puts_delivers_each_body(
    block_store_harness: BlockStoreHarness,
) -> None:
    store = block_store_harness.store
    keys = [_key("staging/batch") for _ in range(5)]
    bodies = [os.urandom(100 + n) for n in range(5)]
    reqs = store.presign_puts(
        [(k, len(b), hashlib.sha256(b).digest()) for k, b in zip(keys, bodies, strict=True)]
    )
    assert len(reqs) == len(bodies)
    for req, body in zip(reqs, bodies, strict=True):
        r = httpx.put(req.url, content=body, headers=dict(req.headers))
        assert r.status_code == 200, r.text
    assert [store.get(k) for k in keys] == bodies
    assert store.presign_puts([]) == []


def test_presign_refuses_more_than_15_minutes(block_store_harness: BlockStoreHarness) -> None:
    store = block_store_harness.store
    with pytest.raises(ValueError):
        store.presign_get(_key(), expires_in=901)
    with pytest.raises(ValueError):
        store.presign_put(_key(), size=1, sha256=b"\0" * 32, expires_in=901)


def _without_checksum(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() != "x-amz-checksum-sha256"}


@pytest.mark.parametrize(
    ("check", "mutate", "status"),
    [
        # S3: the body's checksum is not the header's (BadDigest)
        ("presign_wrong_checksum", lambda body, h: (with_last_byte_flipped(body), None, h), 400),
        # S3: a signed header missing, or not the signed value (SignatureDoesNotMatch)
        ("presign_wrong_checksum", lambda body, h: (body, None, _without_checksum(h)), 403),
        ("presign_wrong_size", lambda body, h: (body + b"extra", None, h), 403),
        ("presign_wrong_size", lambda body, h: (body[:-10], None, h), 403),
        ("presign_signature", lambda body, h: (body, {"sig": "0" * 64}, h), 403),
        ("presign_signature", lambda body, h: (body, {"size": "4"}, h), 403),
    ],
    ids=[
        "checksum",
        "no-checksum-header",
        "too-long",
        "too-short",
        "tampered-sig",
        "tampered-size",
    ],
)
def test_presigned_put_rejects_bad_requests(
    block_store_harness: BlockStoreHarness, check: str, mutate: object, status: int
) -> None:
    """Each as S3 answers it: the URL signs `content-length` and `x-amz-checksum-sha256`
    (a client that sent neither passed every local test and failed every upload on AWS)."""
    block_store_harness.require(check)
    store = block_store_harness.store
    key = _key("staging/up2")
    body = os.urandom(1000)
    req = store.presign_put(key, size=len(body), sha256=hashlib.sha256(body).digest())
    sent, query, headers = mutate(body, dict(req.headers))  # type: ignore[operator]
    url = _tamper(req.url, **query) if query else req.url
    r = httpx.put(url, content=sent, headers=headers)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert store.head(key) is None, "a rejected PUT must store nothing"


def test_presigned_put_expires(block_store_harness: BlockStoreHarness) -> None:
    block_store_harness.require("presign_expiry")
    store = block_store_harness.store
    key = _key("staging/up3")
    body = b"late"
    req = store.presign_put(key, size=len(body), sha256=hashlib.sha256(body).digest(), expires_in=1)
    time.sleep(2.1)
    r = httpx.put(req.url, content=body, headers=dict(req.headers))
    assert r.status_code == 403, r.text
    assert store.head(key) is None


def test_presigned_get_replayed_after_expiry(block_store_harness: BlockStoreHarness) -> None:
    block_store_harness.require("presign_expiry")
    store = block_store_harness.store
    key = _key()
    store.put(key, b"secret")
    req = store.presign_get(key, expires_in=3)  # whole seconds: valid for 2-3 s
    assert httpx.get(req.url).status_code == 200
    assert req.expires_at is not None
    time.sleep(max(0.0, req.expires_at.timestamp() - time.time()) + 1.1)
    r = httpx.get(req.url)
    assert r.status_code == 403
    assert b"secret" not in r.content


def test_presigned_get_is_bound_to_its_key(block_store_harness: BlockStoreHarness) -> None:
    block_store_harness.require("presign_signature")
    store = block_store_harness.store
    mine, other = _key(), _key()
    store.put(mine, b"mine")
    store.put(other, b"other")
    req = store.presign_get(mine)
    r = httpx.get(req.url.replace(mine.split("/")[1], other.split("/")[1]))
    assert r.status_code == 403
    # a GET signature is not a PUT signature
    r = httpx.put(req.url, content=b"overwrite")
    assert r.status_code == 403
    assert store.get(mine) == b"mine"


def test_a_deleted_block_is_undeleted_in_its_tier(block_store_harness: BlockStoreHarness) -> None:
    """What scrub does first for a block whose object is missing: undo the delete (S3:
    remove its delete markers, however many deletes stacked them), which works for a
    cold object too, where a copy of a cold version would need a restore first."""
    store = block_store_harness.store
    hot, cold = _key(), _key()
    store.put(hot, b"old")
    store.put(hot, b"newest")
    store.delete(hot)
    store.delete(hot)  # a retried delete of a key already gone
    store.put(cold, b"cold block")
    store.set_tier(cold, StorageTier.COLD)
    store.delete(cold)
    assert store.undelete(hot) and store.undelete(cold)
    assert store.get(hot) == b"newest"
    head = store.head(cold)
    assert head is not None and (head.tier, head.size) == (StorageTier.COLD, 10)
    assert not store.undelete(hot)  # it has an object: left alone
    assert store.get(hot) == b"newest"
    assert not store.undelete(_key())  # never written: nothing to bring back
