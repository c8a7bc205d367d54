"""`check_block_keys`: each key version's secret against the fingerprint the metadata
recorded the first time a process met it (real PostgreSQL, real key files)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from unittest import mock

import psycopg
import pytest

from tessera.adapters.local.key_file import KeyFileKeyService
from tessera.blocks import BlockFormatError, derive_block_key, key_fingerprint
from tessera.domain.errors import Unavailable
from tessera.metadata import Database
from tessera.metadata.key_check import (
    KEYS_REFUSED_RETRY_S,
    BlockKeysMismatch,
    check_block_keys,
    guard_block_keys,
)
from tessera.metadata.locks import LockClass
from tests.concurrency import run_at_once


def test_the_first_start_records_and_later_starts_compare(db: Database, tmp_path: Path) -> None:
    keys = KeyFileKeyService(tmp_path / "keys.json")
    check_block_keys(db, keys)
    check_block_keys(db, keys)  # the same secrets: nothing to say
    assert keys.rotate() == 2
    check_block_keys(db, keys)  # a rotation's new version is recorded at its first start
    recorded = fingerprints(db)
    assert recorded == {v: key_fingerprint(keys.secret(v)) for v in (1, 2)}
    stored_under(db, 1, 2)

    swapped = KeyFileKeyService(tmp_path / "other.json")  # version 1 only, another secret
    with pytest.raises(BlockKeysMismatch) as refused:
        check_block_keys(db, swapped)
    said = str(refused.value)
    assert "key version 1's secret is not the one recorded" in said
    assert "key version 2 (recorded on" in said and "is missing" in said
    assert fingerprints(db) == recorded  # nothing overwritten


def test_a_refused_start_records_nothing_and_the_right_keys_start_again(
    db: Database, tmp_path: Path
) -> None:
    """A swapped key file with more versions than the database knew: its extra versions
    were recorded before the comparison refused it, and the right file, put back, was
    then refused for ever for lacking them."""
    right = KeyFileKeyService(tmp_path / "keys.json")
    check_block_keys(db, right)
    stored_under(db, 1)
    wrong = KeyFileKeyService(tmp_path / "other.json")
    wrong.rotate()  # versions 1 and 2, another secret under 1
    with pytest.raises(BlockKeysMismatch):
        check_block_keys(db, wrong)
    assert set(fingerprints(db)) == {1}
    check_block_keys(db, right)


def test_two_starts_with_different_keys_at_once_are_not_both_let_in(
    db: Database, tmp_path: Path
) -> None:
    """An upgraded database holds blocks but no fingerprint yet; two processes start at
    once with different key files: each read no record, each wrote its own, the last one
    winning, and both served. One at a time, the second meets the first's record."""
    stored_under(db, 1)
    files = iter([tmp_path / "one.json", tmp_path / "two.json"])
    keys = [KeyFileKeyService(next(files)) for _ in range(2)]
    starts = iter(keys)
    _, errors = run_at_once(lambda: check_block_keys(db, next(starts)), threads=2)
    assert [type(e) for e in errors] == [BlockKeysMismatch]
    assert set(fingerprints(db)) == {1}


def test_a_version_no_block_uses_may_change_or_go(db: Database, tmp_path: Path) -> None:
    """A key file made anew over a database whose blocks gc collected (or that never held
    any) was refused for ever, though no block was at risk: its record is replaced."""
    first = KeyFileKeyService(tmp_path / "keys.json")
    first.rotate()
    check_block_keys(db, first)  # versions 1 and 2 recorded, no block stored
    anew = KeyFileKeyService(tmp_path / "anew.json")  # version 1 only, another secret
    check_block_keys(db, anew)
    assert fingerprints(db) == {1: key_fingerprint(anew.secret(1))}


def test_a_version_missing_from_the_key_file_is_refused(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keys = KeyFileKeyService(path)
    keys.rotate()
    check_block_keys(db, keys)
    stored_under(db, 1)
    state = json.loads(path.read_text())
    del state["versions"]["1"]  # an older copy of the file lost its first version
    path.write_text(json.dumps(state))
    with pytest.raises(BlockKeysMismatch, match=r"key version 1 \(recorded on .*\) is missing"):
        check_block_keys(db, KeyFileKeyService(path))


def test_a_guarded_key_service_hands_out_no_key_under_a_swapped_secret(
    db: Database, tmp_path: Path
) -> None:
    """Checked as each secret is first loaded: refused (503, the record kept), loaded
    and checked again at the next use, so the right file put back is taken up at once."""
    right = tmp_path / "keys.json"
    check_block_keys(db, KeyFileKeyService(right))
    stored_under(db, 1)
    recorded = fingerprints(db)
    swapped = tmp_path / "swapped.json"
    keys = KeyFileKeyService(swapped)  # another secret under version 1
    guard_block_keys(db, keys)
    block = "b3:" + "cd" * 32
    with pytest.raises(Unavailable, match="block keys do not match") as refused:
        keys.block_key(block)
    assert refused.value.retry_after == KEYS_REFUSED_RETRY_S
    assert fingerprints(db) == recorded
    swapped.write_bytes(right.read_bytes())  # the operator puts the right keys back
    keys = KeyFileKeyService(swapped)
    guard_block_keys(db, keys)
    assert keys.block_key(block) == (1, derive_block_key(KeyFileKeyService(right).secret(1), block))


def test_a_version_a_guarded_key_service_first_meets_is_recorded(
    db: Database, tmp_path: Path
) -> None:
    """A rotation while the process runs: its new version is recorded at first use, so a
    process holding another secret under it is refused once a block uses it."""
    keys = KeyFileKeyService(tmp_path / "keys.json")
    check_block_keys(db, keys)
    guard_block_keys(db, keys)
    assert keys.rotate() == 2
    version, _ = keys.block_key("b3:" + "cd" * 32)
    assert version == 2 and fingerprints(db) == {v: key_fingerprint(keys.secret(v)) for v in (1, 2)}
    stored_under(db, 2)
    other = KeyFileKeyService(tmp_path / "other.json")
    other.rotate()
    guard_block_keys(db, other)
    with pytest.raises(Unavailable):
        other.block_key("b3:" + "cd" * 32, 2)


def test_a_refused_secret_is_not_loaded_again_for_a_minute(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request while keys were refused loaded the secret again (an SSM call and a
    KMS decrypt on AWS) and checked it: every function together outran SSM's quota."""
    check_block_keys(db, KeyFileKeyService(tmp_path / "keys.json"))
    stored_under(db, 1)
    keys = KeyFileKeyService(tmp_path / "swapped.json")
    guard_block_keys(db, keys)
    loads: list[int] = []
    load = keys._load_secret

    def counted(version: int) -> bytes:
        loads.append(version)
        return load(version)

    monkeypatch.setattr(keys, "_load_secret", counted)
    for _ in range(3):
        with pytest.raises(Unavailable, match="block keys do not match"):
            keys.block_key("b3:" + "cd" * 32)
    assert loads == [1]
    later = time.time() + keys.REFUSED_S
    with mock.patch("tessera.ports.time.time", return_value=later), pytest.raises(Unavailable):
        keys.block_key("b3:" + "cd" * 32)
    assert loads == [1, 1]  # checked again: a fix is taken up within the minute


def test_a_start_whose_keys_are_recorded_waits_for_no_other_check(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    """Every check took one global lock: the cold starts of a scale-out checked in turn.
    Only a check that records takes it now."""
    keys = KeyFileKeyService(tmp_path / "keys.json")
    check_block_keys(db, keys)
    with psycopg.connect(database_url) as other:  # a check that records, in progress
        other.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LockClass.KEY_CHECK,))
        done, errors = run_at_once(lambda: check_block_keys(db, keys), threads=1, timeout=5)
        assert errors == [] and done == [None], "the check waited for the other's lock"
        with (  # one that must record still waits its turn
            pytest.raises(Unavailable),
            Database(database_url, min_size=1, max_size=1, timeout=1) as short,
            short.transaction() as store,
        ):
            store.conn.execute("SET LOCAL lock_timeout = '300ms'")
            store.key_fingerprints()


def test_a_maintenance_function_refusing_the_keys_leaves_no_pool_open(
    database_url: str, tmp_path: Path
) -> None:
    """The handler builds its context again at the next invocation (a queue redelivers):
    each refused start left a connection pool open, for as long as the sandbox lived."""
    from tessera.adapters.local.block_store import FilesystemBlockStore
    from tessera.maintenance.context import MaintenanceContext
    from tessera.maintenance.lambdas import make_handler

    with Database(database_url, min_size=0, max_size=1) as first:
        check_block_keys(first, KeyFileKeyService(tmp_path / "keys.json"))
        stored_under(first, 1)
    built: list[MaintenanceContext] = []

    def build() -> MaintenanceContext:
        ctx = MaintenanceContext.build(
            db=Database(database_url, min_size=1, max_size=1),
            store=FilesystemBlockStore(tmp_path / "blocks", "http://127.0.0.1", b"k" * 32),
            keys=KeyFileKeyService(tmp_path / "other.json"),  # another secret: refused
            feed=None,
        )
        built.append(ctx)
        return ctx

    handler = make_handler("scrub", build=build)
    for _ in range(2):
        with pytest.raises(BlockKeysMismatch):
            handler({"step": "scrub", "input": {}}, None)
    assert len(built) == 2 and all(ctx.repo.db.pool.closed for ctx in built)


def test_a_fingerprint_is_never_a_block_key(tmp_path: Path) -> None:
    """Stored beside the blocks, a fingerprint must not be any block's key: the text it
    keys on is no block id (which `derive_block_key` insists on)."""
    secret = KeyFileKeyService(tmp_path / "keys.json").secret(1)
    assert key_fingerprint(secret) != key_fingerprint(bytes(32))
    assert key_fingerprint(secret) == key_fingerprint(bytes(secret))
    with pytest.raises(BlockFormatError):
        derive_block_key(secret, "tessera key fingerprint v1")


def fingerprints(db: Database) -> dict[int, bytes]:
    """The recorded fingerprint of each key version."""
    with db.transaction() as store:
        return {v: fp for v, (fp, _) in store.key_fingerprints().items()}


def stored_under(db: Database, *versions: int) -> None:
    """A block row stored under each of `versions`."""
    with db.transaction() as store:
        for v in versions:
            store.conn.execute(
                "INSERT INTO blocks (block_id, size, stored_size, key_version, state)"
                " VALUES (%s, 1, 1, %s, 'live')",
                (f"b3:{v:064x}", v),
            )
