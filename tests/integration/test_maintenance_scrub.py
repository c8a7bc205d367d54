"""scrub: re-verify live blocks; repair from a verified duplicate, else quarantine and tell."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tessera.blocks import block_id
from tessera.domain.errors import TesseraError
from tessera.maintenance import ScrubResult

from .test_maintenance_world import (
    ALICE,
    BLOCK,
    BOB,
    World,
    chunks,
)


def _scrub(w: World) -> ScrubResult:
    return w.run_as(ScrubResult, "scrub")


def _corrupt(w: World, bid: str) -> None:
    path = Path(w.store.root) / "hot" / "blocks" / bid[3:]  # type: ignore[attr-defined]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit, as a failing disk would
    path.write_bytes(bytes(raw))


def _damaged_file(w: World, index: int) -> tuple[bytes, str]:
    """Alice's verified two-block /a.bin with block `index` corrupted: (its bytes, that id)."""
    data = secrets.token_bytes(2 * BLOCK)
    w.put(ALICE, "/a.bin", data)
    w.run("dedup")
    bad = block_id(chunks(data)[index])
    _corrupt(w, bad)
    return data, bad


def test_healthy_blocks_pass(world: World) -> None:
    world.put(ALICE, "/a.bin", secrets.token_bytes(4 * BLOCK))
    world.run("dedup")
    result = _scrub(world)
    assert (result.checked, result.ok, result.damaged) == (4, 4, 0)


def test_damaged_block_is_repaired_from_a_staged_duplicate(world: World) -> None:
    data, _ = _damaged_file(world, 0)
    world.put(BOB, "/b.bin", data)  # bob's copies wait for dedup: a verified duplicate

    result = _scrub(world)
    assert (result.checked, result.damaged, result.repaired, result.unrepaired) == (2, 1, 1, 0)
    assert world.get(ALICE, "/a.bin") == data
    assert _scrub(world).damaged == 0
    world.run("dedup")
    assert world.get(BOB, "/b.bin") == data


def test_damaged_block_without_duplicate_is_quarantined_until_reuploaded(world: World) -> None:
    data, bad = _damaged_file(world, 1)

    result = _scrub(world)
    assert (result.damaged, result.repaired, result.unrepaired) == (1, 0, 1)
    assert result.errors and bad in result.errors[0]
    assert world.sql("SELECT state FROM blocks WHERE block_id = %s", bad) == [("quarantined",)]
    with pytest.raises(TesseraError) as caught:
        world.get(ALICE, "/a.bin")
    assert caught.value.status == 503  # never the damaged bytes
    events = [e for e in world.feed.events if e.kind == "block_damaged"]
    assert [e.payload["block_id"] for e in events] == [bad]
    assert events[0].seq < 0  # a key of its own, never a journal seq (see damage_event)

    # the owner's client uploads the file again; dedup promotes the good copy
    world.put(ALICE, "/a.bin", data)
    world.run("dedup")
    assert world.sql("SELECT state FROM blocks WHERE block_id = %s", bad) == [("live",)]
    assert world.get(ALICE, "/a.bin", rev=1) == data
    assert _scrub(world).damaged == 0


def test_missing_object_is_reported(world: World) -> None:
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/a.bin", data)
    world.run("dedup")
    world.store.delete("blocks/" + block_id(data)[3:])
    result = _scrub(world)
    assert result.unrepaired == 1 and "missing" in result.errors[0]
