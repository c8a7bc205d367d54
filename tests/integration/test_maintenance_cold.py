"""Cold storage: a file unread past the threshold goes cold, a download answers 202
`restoring` and starts a restore, and once the restore completes the bytes are unchanged.
Against the local block store (its cold tier needs an explicit, timed restore) and against
S3 on moto (storage classes and RestoreObject)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tessera.domain.models import RestoringResponse
from tessera.maintenance import ColdResult
from tessera.ports import StorageTier

from .test_maintenance_world import (
    ALICE,
    BLOCK,
    BOB,
    World,
    make_world,
)


def _cold(w: World, days: float) -> ColdResult:
    return w.run_as(ColdResult, "cold", days=days)


def _states(w: World) -> set[str]:
    return {str(r[0]) for r in w.sql("SELECT DISTINCT state FROM blocks")}


def test_unread_file_goes_cold_and_comes_back_unchanged(world: World) -> None:
    data = secrets.token_bytes(3 * BLOCK)
    world.put(ALICE, "/archive.tar", data)
    world.run("dedup")
    assert world.get(ALICE, "/archive.tar") == data  # a read: last_access is now

    assert _cold(world, days=89).blocks_moved == 0
    result = _cold(world, days=91)
    assert result.blocks_moved == 3 and result.bytes_moved > 0
    assert _states(world) == {"cold"}
    for key in world.keys_under("blocks/"):
        head = world.store.head(key)
        assert head is not None and head.tier is StorageTier.COLD

    answer = world.get(ALICE, "/archive.tar")
    assert isinstance(answer, RestoringResponse) and len(answer.blocks) == 3
    assert _states(world) == {"restoring"}
    assert isinstance(world.get(ALICE, "/archive.tar"), RestoringResponse)  # still under way
    assert _cold(world, days=91).restores_completed == 0

    world.store_clock.advance(hours=2)  # the store's restore takes an hour
    result = _cold(world, days=91)
    assert result.restores_completed == 3
    assert _states(world) == {"live"}
    assert world.get(ALICE, "/archive.tar") == data
    # the restore counted as a read: it does not go straight back to the cold tier
    assert _cold(world, days=91).blocks_moved == 0


def test_a_block_read_through_another_file_stays_hot(world: World) -> None:
    shared = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/old.bin", shared + secrets.token_bytes(BLOCK))
    world.put(BOB, "/new.bin", shared)
    world.run("dedup")
    conninfo = world.svc.db.conninfo
    assert isinstance(conninfo, str)  # make_world's database URL, not a token-minting callable
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("UPDATE blocks SET last_access = now() - interval '100 days'")
    world.get(BOB, "/new.bin")  # reads the shared block today
    assert _cold(world, days=0).blocks_moved == 1  # only alice's unread tail
    assert world.get(BOB, "/new.bin") == shared


def test_a_lost_restore_is_started_again(world: World) -> None:
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/f.bin", data)
    world.run("dedup")
    _cold(world, days=91)
    assert isinstance(world.get(ALICE, "/f.bin"), RestoringResponse)
    key = world.keys_under("blocks/")[0]
    world.store_clock.advance(days=30)  # the restored copy expired before anyone came back
    head = world.store.head(key)
    assert head is not None and not head.restoring and not head.restored
    result = _cold(world, days=91)
    assert result.restores_started == 1 and result.restores_completed == 0
    world.store_clock.advance(hours=2)
    assert _cold(world, days=91).restores_completed == 1
    assert world.get(ALICE, "/f.bin") == data


@pytest.fixture
def s3_world(database_url: str, tmp_path: Path) -> Iterator[World]:
    """A world whose block store is S3 and whose keys are KMS + SSM, on moto."""
    from tessera.adapters.aws.wiring import AwsRuntime

    from .aws.moto_env import shared_aws_settings

    runtime = AwsRuntime(aws=shared_aws_settings())
    yield from make_world(
        database_url, tmp_path, store=runtime.block_store(), keys=runtime.key_service()
    )


@pytest.mark.aws
def test_cold_storage_on_s3_glacier_and_restore(s3_world: World) -> None:
    w = s3_world
    data = secrets.token_bytes(2 * BLOCK)
    path = f"/{uuid.uuid4().hex}.bin"  # the moto bucket is shared by the session
    w.put(ALICE, path, data)
    dedup = w.run("dedup")
    assert dedup.to_dict()["promoted"] == 2

    assert _cold(w, days=91).blocks_moved == 2
    keys = [f"blocks/{str(r[0])[3:]}" for r in w.sql("SELECT block_id FROM blocks")]
    for key in keys:
        head = w.store.head(key)
        assert head is not None and head.tier is StorageTier.COLD  # GLACIER storage class

    answer = w.get(ALICE, path)
    assert isinstance(answer, RestoringResponse)  # RestoreObject issued
    result = _cold(w, days=91)
    assert result.restores_completed == 2  # moto finishes restores at once
    for key in keys:
        head = w.store.head(key)
        assert head is not None and head.tier is StorageTier.HOT  # copied back to STANDARD
    assert w.get(ALICE, path) == data
