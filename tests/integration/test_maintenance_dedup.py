"""dedup-verify against real PostgreSQL and the local block store (DESIGN §5)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tessera.adapters.local.key_file import KeyFileKeyService
from tessera.blocks import BlockIntegrityError, block_id, encode_block
from tessera.domain import commits, files, object_keys, sharing
from tessera.domain.errors import TesseraError, Unprocessable
from tessera.domain.models import CommitBatchRequest, RestoreRequest
from tessera.maintenance import DedupResult, GcResult, ScrubResult
from tessera.maintenance.dedup import verify_staged
from tessera.metadata.maintenance import LockTimeout, MaintenanceTx
from tessera.metadata.store import Store, VersionBlockRow
from tessera.ports import StorageTier
from tests.concurrency import run_at_once

from .conftest import commit_request, share_with
from .test_domain_files import race_held
from .test_maintenance_world import (
    ALICE,
    BLOCK,
    BOB,
    MALLORY,
    Killed,
    World,
    chunks,
    die_copying,
    swap_staged_after_dedup_reads,
)


def _dedup(w: World) -> DedupResult:
    return w.run_as(DedupResult, "dedup")


def _store_unwell_for(
    w: World, monkeypatch: pytest.MonkeyPatch, key: str, *, after: int = 0
) -> None:
    """The store fails every read of `key` after its first `after`."""
    get = w.store.get
    reads = 0

    def failing(k: str) -> bytes:
        nonlocal reads
        if k == key:
            reads += 1
            if reads > after:
                raise OSError("the store is unwell")
        return get(k)

    monkeypatch.setattr(w.store, "get", failing)


def _collect_settled(w: World) -> None:
    """gc past the settled-copy grace: the objects of promoted/dropped copies go."""
    w.collect_settled()
    assert w.keys_under("staging/") == []


def test_same_content_from_two_users_is_stored_once(world: World) -> None:
    data = secrets.token_bytes(5 * BLOCK)
    world.put(ALICE, "/report.pdf", data)
    world.put(BOB, "/copy of report.pdf", data)
    assert len(world.keys_under("staging/")) == 10  # neither could prove it may read the other's

    result = _dedup(world)

    assert (result.verified, result.promoted, result.dropped, result.quarantined) == (10, 5, 5, 0)
    assert result.canonical_replaced == 0
    _collect_settled(world)
    assert len(world.keys_under("blocks/")) == 5
    assert world.bytes_under("blocks/") <= 1.05 * len(data) + 5 * 64  # one copy (+ headers)
    assert result.bytes_freed > 0.95 * len(data)
    assert world.get(ALICE, "/report.pdf") == data
    assert world.get(BOB, "/copy of report.pdf") == data
    states = world.sql("SELECT state, refcount FROM blocks")
    assert states and all(s == ("live", 2) for s in states)
    # the versions now name the canonical blocks, not the deleted staged copies
    assert world.sql("SELECT count(*) FROM version_blocks WHERE staged_key IS NOT NULL") == [(0,)]

    again = _dedup(world)  # idempotent: nothing left to do
    assert (again.verified, again.promoted, again.dropped) == (0, 0, 0)


def _flip_a_byte(stored: bytes) -> bytes:
    middle = len(stored) // 2
    return stored[:middle] + bytes([stored[middle] ^ 1]) + stored[middle + 1 :]


@pytest.mark.parametrize(
    "damage",
    [lambda _stored: secrets.token_bytes(100), _flip_a_byte],
    ids=["another-size", "same-size"],
)
def test_a_verified_copy_replaces_a_canonical_object_that_is_not_the_block(
    world: World, damage: Callable[[bytes], bytes]
) -> None:
    """The canonical object was cut short, overwritten or damaged at its own size, and no
    scrub has seen it yet. Another user's upload of the block verifies: it was dropped on
    the strength of a HEAD alone, gc deleted it, and the only good bytes were gone. Now
    the canonical object is read and verified first, the copy replaces it, and both users
    read the block."""
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/a.bin", data)
    _dedup(world)
    bid = block_id(data)
    key = object_keys.canonical_key(bid)
    world.store.put(key, damage(world.store.get(key)))
    world.put(BOB, "/b.bin", data)
    result = _dedup(world)
    assert (result.verified, result.promoted, result.dropped) == (1, 1, 0)
    assert result.canonical_replaced == 1
    _collect_settled(world)
    assert world.get(ALICE, "/a.bin") == data
    assert world.get(BOB, "/b.bin") == data


def test_a_live_blocks_object_in_the_cold_tier_is_replaced_but_not_called_damaged(
    world: World,
) -> None:
    """Moved cold outside Tessera, the object is intact, only not readable now: a fresh
    upload replaces it (read at once, no restore), and it is not counted as damage."""
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/a.bin", data)
    _dedup(world)
    world.store.set_tier(object_keys.canonical_key(block_id(data)), StorageTier.COLD)
    world.put(BOB, "/b.bin", data)
    result = _dedup(world)
    assert (result.promoted, result.dropped, result.canonical_replaced) == (1, 0, 0)
    assert world.get(ALICE, "/a.bin") == data


def test_a_canonical_object_unreadable_under_the_lock_leaves_its_copy_for_later(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two uploads of one block in a batch: the second's canonical object, made live by
    the first, is read under the lock. The store failing then failed the whole run."""
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/a.bin", data)
    world.put(BOB, "/b.bin", data)
    world.put(ALICE, "/other.bin", secrets.token_bytes(BLOCK))
    # (read once by the first promotion, to check what it copied)
    _store_unwell_for(world, monkeypatch, object_keys.canonical_key(block_id(data)), after=1)
    result = _dedup(world)
    assert (result.promoted, result.dropped) == (2, 0)
    assert len(result.errors) == 1 and "unwell" in result.errors[0]
    monkeypatch.undo()
    assert _dedup(world).dropped == 1  # its turn came at the next run


def test_a_user_who_uploaded_verified_content_may_skip_it_next_time(world: World) -> None:
    data = secrets.token_bytes(2 * BLOCK)
    world.put(ALICE, "/a.bin", data)
    _dedup(world)
    staged = world.keys_under("staging/")
    world.put(ALICE, "/b.bin", data)  # readable now: nothing is uploaded again
    assert world.keys_under("staging/") == staged
    assert world.get(ALICE, "/b.bin") == data


def test_poisoned_staged_block_is_quarantined_and_never_served(world: World) -> None:
    data = secrets.token_bytes(3 * BLOCK)
    world.put(ALICE, "/secret.bin", data)
    _dedup(world)  # alice's blocks are canonical now
    poisoned_id = block_id(chunks(data)[1])

    # mallory claims alice's content, uploading garbage under one of its ids
    world.put(MALLORY, "/claimed.bin", data, poison=frozenset({1}))
    # unverified, she is served her own copies (the client's re-hash rejects them), never alice's
    with pytest.raises(BlockIntegrityError):
        world.get(MALLORY, "/claimed.bin")

    result = _dedup(world)
    assert result.quarantined == 1 and result.versions_damaged == 1
    assert result.dropped == 2  # her two honest blocks were duplicates
    assert result.promoted == 0
    rows = world.sql(
        "SELECT state FROM upload_blocks WHERE block_id = %s AND state = 'quarantined'",
        poisoned_id,
    )
    assert rows == [("quarantined",)]
    assert len(world.keys_under("quarantine/")) == 1
    _collect_settled(world)

    # mallory gets an error, not alice's bytes; alice is unaffected
    with pytest.raises((TesseraError, BlockIntegrityError)):
        got = world.get(MALLORY, "/claimed.bin")
        assert got != data  # never reached with a correct download path
    assert world.get(ALICE, "/secret.bin") == data
    # claiming the id again does not make it readable: she must upload it again
    world.put(MALLORY, "/again.bin", data, poison=frozenset({1}))
    assert world.sql(
        "SELECT count(*) FROM version_blocks v JOIN files f USING (ns_id, file_id)"
        " WHERE f.path_key = '/again.bin' AND v.block_id = %s AND v.staged_key IS NULL",
        poisoned_id,
    ) == [(0,)]
    with pytest.raises((TesseraError, BlockIntegrityError)):
        world.get(MALLORY, "/again.bin")

    # her namespace is told which version is damaged
    damaged = [e for e in world.feed.events if e.kind == "block_damaged"]
    assert len(damaged) == 1
    assert damaged[0].payload["block_id"] == poisoned_id
    assert damaged[0].payload["path"] == "/claimed.bin"
    assert world.sql("SELECT count(*) FROM damaged_versions WHERE notified_at IS NULL") == [(0,)]


def test_a_made_up_key_version_is_judged_without_asking_the_key_service(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored block's header names its key version, and the uploader writes it: each
    made-up version cost a secret-store call (SSM), a batch of them at once was
    throttled, and the error failed the batch, every run."""
    data = secrets.token_bytes(BLOCK)
    world.put(MALLORY, "/forged.bin", data)
    [staged] = world.keys_under("staging/")
    bid = block_id(data)
    world.store.put(staged, bytes(encode_block(data, bid, bytes(32), 999_999)))
    loaded: list[int] = []
    load = world.ctx.keys._load_secret

    def spied(version: int) -> bytes:
        loaded.append(version)
        return load(version)

    monkeypatch.setattr(world.ctx.keys, "_load_secret", spied)
    result = _dedup(world)
    assert result.quarantined == 1 and 999_999 not in loaded
    assert world.sql("SELECT reason FROM damaged_versions") == [("unknown key version 999999",)]


def test_an_upload_under_a_key_rotated_since_the_listing_is_verified(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On AWS a process lists the key versions at most once a minute: an upload under a
    version another process rotated in meanwhile was judged "unknown key version" and
    quarantined for good. The version after the newest listed is loaded, as before."""
    KeyFileKeyService(tmp_path / "keys.json").rotate()  # another process rotates
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/new.bin", data)  # encoded under version 2
    monkeypatch.setattr(world.ctx.keys, "versions", lambda: [1])  # a listing of before
    result = _dedup(world)
    assert (result.promoted, result.quarantined) == (1, 0)
    assert world.sql("SELECT key_version FROM blocks") == [(2,)]
    assert world.get(ALICE, "/new.bin") == data


def test_an_upload_under_a_key_version_remembered_as_unknown_waits(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On AWS a key version the secret store had no parameter for is remembered as
    unknown for a minute (each forged header naming it cost a call). A rotation within
    that minute made it, and an upload under it was judged "unknown key version" and
    quarantined for good. Its uploader was given that version, so it existed: the copy
    waits for the next run instead."""
    KeyFileKeyService(tmp_path / "keys.json").rotate()
    data = secrets.token_bytes(2 * BLOCK)  # two copies: a batch of nothing else
    world.put(ALICE, "/new.bin", data)  # encoded under version 2
    block_key = world.ctx.keys.block_key

    def remembered_unknown(bid: str, version: int | None = None) -> tuple[int, bytes]:
        if version == 2:
            raise KeyError("unknown key version 2")
        return block_key(bid, version)

    monkeypatch.setattr(world.ctx.keys, "versions", lambda: [1])  # a listing of before
    monkeypatch.setattr(world.ctx.keys, "block_key", remembered_unknown)
    result = _dedup(world)
    assert (result.promoted, result.quarantined) == (0, 0)  # and the run went on
    assert len(result.errors) == 2 and "key version 2" in result.errors[0]
    monkeypatch.undo()
    assert _dedup(world).promoted == 2
    assert world.get(ALICE, "/new.bin") == data


def test_a_copy_that_cannot_be_read_now_waits_and_holds_back_no_other(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One staged copy whose read failed (the store or the key service failing for a
    while) failed the whole batch, and every run met it first again."""
    world.put(ALICE, "/a.bin", secrets.token_bytes(BLOCK))
    world.put(BOB, "/b.bin", secrets.token_bytes(BLOCK))
    unwell, _ = world.keys_under("staging/")
    _store_unwell_for(world, monkeypatch, unwell)
    result = _dedup(world)
    assert (result.promoted, result.quarantined) == (1, 0)
    assert len(result.errors) == 1 and "unwell" in result.errors[0]
    monkeypatch.undo()
    assert _dedup(world).promoted == 1  # its turn came at the next run


def test_a_copy_whose_block_is_held_too_long_waits_and_holds_back_no_other(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit or a download holding one block past the lock timeout failed the whole
    invocation: every other copy of the batch waited for the next one."""
    monkeypatch.setattr(world.ctx.repo, "lock_timeout_ms", 100)
    world.put(ALICE, "/a.bin", secrets.token_bytes(BLOCK))
    world.put(BOB, "/b.bin", secrets.token_bytes(BLOCK))
    held, _ = world.keys_under("staging/")
    with world.ctx.repo.transaction() as holder:
        holder.block_lock("b3:" + held.rsplit("-", 1)[1])  # (`<ordinal>-<hex>`)
        result = _dedup(world)
    assert (result.promoted, result.quarantined) == (1, 0)
    assert len(result.errors) == 1 and result.errors[0].startswith(held + ": busy")
    assert _dedup(world).promoted == 1  # its turn came at the next run


def test_a_step_left_for_the_next_run_counts_nothing(world: World) -> None:
    """Its transaction is rolled back: the counters it had moved (a copy counted verified
    before the lock it then waited for) go back too."""
    result = DedupResult(verified=3)

    def step() -> None:
        result.verified += 1
        raise LockTimeout("canceling statement due to lock timeout")

    assert world.ctx.attempt("staging/up/0-ab", step, result) is False
    assert result.verified == 3
    assert result.errors == ["staging/up/0-ab: busy (a lock held too long); left for the next run"]
    assert world.ctx.attempt("staging/up/1-cd", lambda: None, result) is True


def test_a_run_whose_every_read_fails_fails(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store down: skipping each copy, a run walked every staged copy of the table,
    each with its failing call, and a queue's batch was taken as done. It fails instead
    (the batch comes again, a state machine retries), leaving every copy for later."""
    world.put(ALICE, "/a.bin", secrets.token_bytes(BLOCK))
    world.put(BOB, "/b.bin", secrets.token_bytes(BLOCK))

    def down(key: str) -> bytes:
        raise OSError("the store is down")

    monkeypatch.setattr(world.store, "get", down)
    with pytest.raises(OSError, match="down"):
        _dedup(world)
    monkeypatch.undo()
    assert _dedup(world).promoted == 2


def test_a_poisoned_copy_in_a_shared_folder_does_not_reach_a_members_own_files(
    world: World,
) -> None:
    """Mallory, an editor of bob's shared folder, commits garbage there under the ids of
    content bob is about to upload. An unverified copy counts only for writes into its own
    namespace: bob's upload into his root sends his own bytes, and dedup-verify, which
    quarantines mallory's copy, leaves his version whole."""
    data = secrets.token_bytes(2 * BLOCK)
    for who in (BOB, MALLORY):
        sharing.account(world.svc, who)
    files.create_folder(world.svc, BOB, "/Team")
    assert share_with(world.svc, BOB, "/Team", MALLORY, "editor").path_display == "/Team"
    bait = world.put(MALLORY, "/Team/bait.bin", data, poison=frozenset({0, 1}))
    staged = len(world.keys_under("staging/"))
    # the commit checks what start_upload told: claiming the ids alone is not enough
    with pytest.raises(Unprocessable, match="never uploaded"):
        commits.commit(world.svc, BOB, commit_request("/mine.bin", chunks(data), None))

    world.put(BOB, "/mine.bin", data)

    assert len(world.keys_under("staging/")) == staged + 2  # his own bytes were sent
    result = _dedup(world)
    assert (result.quarantined, result.promoted) == (2, 2)
    assert world.sql("SELECT DISTINCT file_id FROM damaged_versions") == [(bait.file_id,)]
    assert world.get(BOB, "/mine.bin") == data


def test_poisoned_first_upload_is_not_promoted_and_honest_one_is(world: World) -> None:
    data = secrets.token_bytes(2 * BLOCK)
    world.put(MALLORY, "/x.bin", data, poison=frozenset({0}))
    result = _dedup(world)
    assert (result.quarantined, result.promoted) == (1, 1)
    bad = block_id(chunks(data)[0])
    assert world.sql("SELECT state FROM blocks WHERE block_id = %s", bad) == [("quarantined",)]
    assert world.store.head("blocks/" + bad[3:]) is None  # never promoted

    world.put(ALICE, "/x.bin", data)  # the honest upload of the same content
    result = _dedup(world)
    assert result.promoted == 1 and result.dropped == 1
    assert world.sql("SELECT state FROM blocks WHERE block_id = %s", bad) == [("live",)]
    assert world.get(ALICE, "/x.bin") == data


def test_a_quarantined_copy_is_kept_for_the_retention_then_its_object_goes(
    world: World,
) -> None:
    """gc deletes the object of a quarantined copy once it has been kept for
    quarantine_retention_days; the row stays, so the version that named it stays damaged."""
    data = secrets.token_bytes(2 * BLOCK)
    world.put(MALLORY, "/x.bin", data, poison=frozenset({0}))
    assert _dedup(world).quarantined == 1
    assert len(world.keys_under("quarantine/")) == 1
    retention = world.ctx.settings.quarantine_retention_days

    early = world.run_as(GcResult, "gc", days=retention - 1)
    assert early.quarantine_deleted == 0
    assert len(world.keys_under("quarantine/")) == 1
    late = world.run_as(GcResult, "gc", days=retention + 1)
    assert late.quarantine_deleted == 1
    assert world.keys_under("quarantine/") == []
    bad = block_id(chunks(data)[0])
    assert world.sql("SELECT state, object_gone FROM upload_blocks WHERE block_id = %s", bad) == [
        ("quarantined", True)
    ]
    with pytest.raises((TesseraError, BlockIntegrityError)):
        world.get(MALLORY, "/x.bin")
    assert world.run_as(GcResult, "gc", days=retention + 1).quarantine_deleted == 0


def test_bytes_put_after_verification_never_become_the_canonical_block(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An uploader who PUTs other bytes at their staged key between dedup's check and its
    copy (a presigned URL for other bytes, used at the right moment) must not make those
    bytes everyone's copy of the block: the canonical object is verified itself."""
    data = secrets.token_bytes(2 * BLOCK)
    world.put(MALLORY, "/x.bin", data)
    swap_staged_after_dedup_reads(world, monkeypatch)
    assert _dedup(world).promoted == 0
    assert world.keys_under("blocks/") == []
    monkeypatch.undo()
    assert _dedup(world).quarantined == 2  # the next run reads what is there now

    world.put(ALICE, "/x.bin", data)  # the honest upload
    assert _dedup(world).promoted == 2
    assert world.get(ALICE, "/x.bin") == data


def test_a_promoted_block_is_recorded_as_the_bytes_the_copy_took(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An uploader holding two URLs for one staged copy may PUT another valid encoding of
    the block (raw where the first was zstd) between dedup's read and its copy. The row
    recorded the first read's stored size: scrub then found the canonical object's size
    wrong and quarantined intact bytes every holder downloads."""
    from tessera.blocks import codec
    from tessera.maintenance import dedup
    from tessera.maintenance.verify import check_stored

    data = b"a block that compresses well " * (BLOCK // 29)
    world.put(MALLORY, "/x.txt", data)
    (bid,) = {block_id(c) for c in chunks(data)}

    def raw_after(*args: object, **kwargs: object) -> object:
        verdict = check_stored(*args, **kwargs)  # type: ignore[arg-type]
        key = str(args[2])
        if key.startswith("staging/"):
            version, block_key = world.ctx.keys.block_key(bid)
            with monkeypatch.context() as m:
                m.setattr(codec, "_worth_compressing", lambda _plaintext: False)
                world.store.put(key, bytes(codec.encode_block(data, bid, block_key, version)))
        return verdict

    monkeypatch.setattr(dedup, "check_stored", raw_after)
    assert _dedup(world).promoted == 1
    monkeypatch.undo()
    stored = world.store.get(object_keys.canonical_key(bid))
    assert world.sql("SELECT stored_size FROM blocks WHERE block_id = %s", bid) == [(len(stored),)]
    scrubbed = world.run_as(ScrubResult, "scrub")
    assert (scrubbed.damaged, scrubbed.unrepaired) == (0, 0)
    assert world.get(MALLORY, "/x.txt") == data


def test_two_dedup_runs_at_once_settle_each_copy_exactly_once(world: World) -> None:
    data = secrets.token_bytes(12 * BLOCK)
    for who in (ALICE, BOB, MALLORY):
        world.put(who, "/same.bin", data)
    results: list[DedupResult]
    results, errors = run_at_once(lambda: verify_staged(world.ctx, datetime.now(UTC)), 3)
    assert not errors
    assert sum(r.promoted for r in results) == 12
    assert sum(r.dropped for r in results) == 24
    _collect_settled(world)
    for who in (ALICE, BOB, MALLORY):
        assert world.get(who, "/same.bin") == data


def test_urls_issued_before_dedup_settles_a_copy_keep_working_until_gc_grace(
    world: World,
) -> None:
    """A download URL issued for a staged copy stays valid for presign_ttl_s: dedup must not
    delete the copy under it; gc deletes it only after settled_copy_grace_s."""
    from tessera.domain import files
    from tessera.domain.models import DownloadRequest, DownloadResponse

    data = secrets.token_bytes(3 * BLOCK)
    world.put(ALICE, "/a.bin", data)
    world.put(BOB, "/b.bin", data)  # same content: bob's copies will be dropped
    issued = {
        who: files.download(world.svc, who, DownloadRequest(path=path))
        for who, path in ((ALICE, "/a.bin"), (BOB, "/b.bin"))
    }
    for answer in issued.values():
        assert isinstance(answer, DownloadResponse)
        assert all("/blocks/staging/" in b.url for b in answer.blocks)

    result = _dedup(world)
    assert (result.promoted, result.dropped) == (3, 3)

    # the URLs issued before dedup still fetch and decode
    for answer in issued.values():
        assert isinstance(answer, DownloadResponse)
        assert world.fetch(answer) == data
    # new downloads point at the canonical blocks
    fresh = files.download(world.svc, BOB, DownloadRequest(path="/b.bin"))
    assert isinstance(fresh, DownloadResponse)
    assert all("/blocks/blocks/" in b.url for b in fresh.blocks)
    assert world.fetch(fresh) == data

    grace_h = world.ctx.settings.settled_copy_grace_s / 3600
    assert world.ctx.settings.settled_copy_grace_s > world.ctx.settings.presign_ttl_s
    early = world.run("gc", hours=grace_h * 0.9)
    assert early.settled_deleted == 0  # type: ignore[attr-defined]
    assert len(world.keys_under("staging/")) == 6
    late = world.run("gc", hours=grace_h + 0.05)
    assert late.settled_deleted == 6  # type: ignore[attr-defined]
    assert world.keys_under("staging/") == []
    assert world.get(ALICE, "/a.bin") == data and world.get(BOB, "/b.bin") == data
    assert world.run("gc", hours=grace_h + 0.05).settled_deleted == 0  # type: ignore[attr-defined]


def _rotated_shared_block(w: World) -> bytes:
    """Bob's block, promoted under key version 1; after a rotation, alice's staged copy of
    it under version 2 (she cannot read bob's), then a second rev of her file."""
    shared = secrets.token_bytes(BLOCK)
    w.put(BOB, "/b.bin", shared)
    _dedup(w)
    keys = w.svc.keys
    assert isinstance(keys, KeyFileKeyService)
    keys.rotate()
    w.put(ALICE, "/a.bin", shared)
    w.put(ALICE, "/a.bin", secrets.token_bytes(BLOCK))
    return shared


def test_a_restore_racing_dedup_never_names_a_settled_copy(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restore carries the old version's staged copies forward as a commit does (locked
    FOR SHARE): dedup settling one after restore read it leaves the new version on the
    canonical block, not on a dropped copy whose object gc deletes."""
    shared = _rotated_shared_block(world)
    read = Store.version_blocks
    raced: list[DedupResult] = []

    def version_blocks(self: Store, ns_id: int, file_id: str, rev: int) -> list[VersionBlockRow]:
        rows = read(self, ns_id, file_id, rev)
        if not raced:
            raced.append(_dedup(world))  # alice's copy is dropped meanwhile
        return rows

    monkeypatch.setattr(Store, "version_blocks", version_blocks)
    files.restore(world.svc, ALICE, RestoreRequest(path="/a.bin", rev=1))
    monkeypatch.undo()
    assert raced[0].dropped == 1
    assert world.sql("SELECT count(*) FROM version_blocks WHERE staged_key IS NOT NULL") == [(0,)]
    assert world.get(ALICE, "/a.bin") == shared
    _collect_settled(world)
    assert world.get(ALICE, "/a.bin") == shared


def test_a_version_naming_a_dropped_copy_gets_the_blocks_key_version(world: World) -> None:
    """A verified copy is served as the canonical block: with the block's key version, not
    the copy's (as a version left naming a dropped copy by an earlier restore race)."""
    shared = _rotated_shared_block(world)
    assert _dedup(world).dropped == 1
    with world.svc.db.pool.connection() as conn:
        conn.execute(
            "UPDATE version_blocks v SET staged_key = u.staged_key FROM upload_blocks u, files f"
            " WHERE u.state = 'dropped' AND v.block_id = u.block_id AND v.rev = 1"
            " AND f.ns_id = v.ns_id AND f.file_id = v.file_id AND f.path_key = '/a.bin'"
        )
    assert world.sql("SELECT count(*) FROM version_blocks WHERE staged_key IS NOT NULL") == [(1,)]
    assert world.get(ALICE, "/a.bin", rev=1) == shared


@pytest.mark.parametrize("poisoned", [False, True], ids=["verified", "quarantined"])
def test_a_commit_naming_its_sessions_copy_waits_for_dedup_settling_it(
    world: World, monkeypatch: pytest.MonkeyPatch, database_url: str, poisoned: bool
) -> None:
    """One session sends a block once for files in two namespaces (a staged copy counts
    only in its own namespace, so the second commit names it through the session). When
    dedup settles the copy between the two commits, the second one waits for it and then
    takes the canonical block, or, for a quarantined copy, answers 422 (send it again).
    Before, it read the copy unlocked and named a settled copy: one whose object then
    outlived gc, or a quarantined one with no damage recorded for the new version."""
    data = secrets.token_bytes(BLOCK)
    for who in (ALICE, BOB):
        sharing.account(world.svc, who)
    files.create_folder(world.svc, BOB, "/Team")
    assert share_with(world.svc, BOB, "/Team", ALICE, "editor").path_display == "/Team"
    sessions: list[str] = []
    poison = frozenset({0}) if poisoned else frozenset()
    world.put(ALICE, "/a.bin", data, poison=poison, before_commit=sessions.append)

    deduped, second = race_held(
        monkeypatch,
        database_url,
        "settle_copy",
        lambda: _dedup(world),
        lambda: commits.commit(
            world.svc, ALICE, commit_request("/Team/b.bin", chunks(data), sessions[0])
        ),
        on=MaintenanceTx,
    )

    assert isinstance(deduped, DedupResult) and deduped.quarantined == int(poisoned)
    assert world.sql("SELECT count(*) FROM version_blocks WHERE staged_key IS NOT NULL") == [
        (int(poisoned),)  # /a.bin, damaged, still names the quarantined copy
    ]
    if poisoned:
        assert isinstance(second, Unprocessable) and second.details["blocks"] == [block_id(data)]
        assert world.put(ALICE, "/Team/b.bin", data)  # a fresh upload sends the block
        assert _dedup(world).promoted == 1
    else:
        assert not isinstance(second, Exception), second
        _collect_settled(world)
    assert world.get(ALICE, "/Team/b.bin") == data


def test_a_batch_reusing_a_copy_dedup_is_settling_waits_for_it_without_a_deadlock(
    world: World, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """Bob's batch commits a block he reads only through Alice's unverified copy in their
    shared folder while dedup settles that copy. Dedup takes the copy, then its block; the
    batch took every block first, then each entry's copies: each held what the other
    wanted next (a deadlock: the batch answered 503, or the dedup run failed)."""
    data = secrets.token_bytes(BLOCK)
    sharing.account(world.svc, BOB)
    world.put(ALICE, "/Team/a.bin", data)  # its copy is not verified yet
    assert share_with(world.svc, ALICE, "/Team", BOB, "editor").path_display == "/Team"
    batch = CommitBatchRequest(entries=[commit_request("/Team/b.bin", chunks(data), None)])

    deduped, committed = race_held(
        monkeypatch,
        database_url,
        "lock_staged_copy",
        lambda: _dedup(world),
        lambda: commits.commit_batch(world.svc, BOB, batch),
        on=MaintenanceTx,
    )

    assert isinstance(deduped, DedupResult) and deduped.promoted == 1, deduped
    assert not isinstance(committed, Exception), committed
    assert world.get(BOB, "/Team/b.bin") == data


@pytest.mark.parametrize("killed", ["settling", "moving"])
def test_a_run_killed_while_quarantining_leaves_no_object_behind(
    world: World, monkeypatch: pytest.MonkeyPatch, killed: str
) -> None:
    """dedup moved a bad copy to quarantine/ inside the transaction that settles it: a run
    killed before the commit left that object with no row naming it, and when the next
    run then promoted the copy (its uploader PUT the true bytes through a URL still valid),
    nothing ever deleted it. The move now follows the commit, and gc deletes both keys of
    a quarantined row after the retention, wherever a kill left the bytes."""
    data = secrets.token_bytes(BLOCK)
    world.put(MALLORY, "/x.bin", data, poison=frozenset({0}))
    if killed == "settling":
        settle = MaintenanceTx.settle_copy

        def settle_then_die(tx: MaintenanceTx, copy: object, state: str) -> None:
            settle(tx, copy, state)  # type: ignore[arg-type]
            raise Killed

        monkeypatch.setattr(MaintenanceTx, "settle_copy", settle_then_die)
    else:
        die_copying(world, monkeypatch, target="quarantine/")
    with pytest.raises(Killed):
        _dedup(world)
    monkeypatch.undo()
    if killed == "settling":  # rolled back: the copy is still to settle
        [(staged,)] = world.sql("SELECT staged_key FROM upload_blocks")
        bid = block_id(data)
        version, key = world.svc.keys.block_key(bid)
        world.store.put(str(staged), bytes(encode_block(data, bid, key, version)))
        assert _dedup(world).promoted == 1
        assert world.get(MALLORY, "/x.bin") == data
    world.run("gc", days=world.ctx.settings.quarantine_retention_days + 1)
    assert world.keys_under("quarantine/") == []
    assert world.keys_under("staging/") == []
