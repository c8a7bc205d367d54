"""scrub: re-verify live blocks; repair from a verified duplicate, else quarantine and tell."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tessera.blocks import block_id
from tessera.domain import object_keys
from tessera.domain.errors import TesseraError, Unprocessable
from tessera.domain.models import RestoringResponse
from tessera.maintenance import ColdResult, ScrubResult
from tessera.maintenance.runner import run_step
from tessera.metadata.maintenance import MaintenanceTx
from tessera.ports import StorageTier
from tests.corruption import with_last_byte_flipped

from .test_domain_files import race_held
from .test_maintenance_world import (
    ALICE,
    BLOCK,
    BOB,
    World,
    chunks,
    lose,
    make_world,
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
    w.collect_settled()  # (the promoted copy's object would repair it)
    bad = block_id(chunks(data)[index])
    _corrupt(w, bad)
    return data, bad


def test_a_commit_reusing_a_block_scrub_is_quarantining_uploads_it_again(
    world: World, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """Scrub lists the versions naming a block it quarantines; a commit reusing the block
    that waited for its row meanwhile was not among them, and would have named a
    quarantined block with no damage recorded. It is refused instead (422: upload again),
    and the client's next round sends the block."""
    data, bad = _damaged_file(world, 0)
    scrubbed, reused = race_held(
        monkeypatch,
        database_url,
        "set_state",
        lambda: _scrub(world),
        lambda: world.put(ALICE, "/again.bin", data),
        on=MaintenanceTx,
    )
    assert isinstance(scrubbed, ScrubResult) and scrubbed.unrepaired == 1
    assert isinstance(reused, Unprocessable) and reused.details["blocks"] == [bad]
    paths = world.sql(
        "SELECT DISTINCT f.path_key FROM damaged_versions d JOIN files f USING (ns_id, file_id)"
    )
    assert paths == [("/a.bin",)]
    assert world.put(ALICE, "/again.bin", data)  # a fresh upload sends the block
    assert world.get(ALICE, "/again.bin") == data


def test_healthy_blocks_pass(world: World) -> None:
    world.put(ALICE, "/a.bin", secrets.token_bytes(4 * BLOCK))
    world.run("dedup")
    result = _scrub(world)
    assert (result.checked, result.ok, result.damaged) == (4, 4, 0)


def test_a_duplicate_changed_between_its_check_and_the_copy_repairs_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A duplicate in an open session can be PUT again with other bytes after scrub checked
    it: the copy brought those into the canonical key, marked live, with no damage noted."""
    data, bad = _damaged_file(world, 0)
    world.put(BOB, "/b.bin", data)  # bob's staged copies: duplicates to repair from
    copy = world.store.copy

    def put_again_then_copy(source: str, target: str, **kw: Any) -> None:
        path = Path(world.store.root) / "hot" / source  # type: ignore[attr-defined]
        path.write_bytes(with_last_byte_flipped(path.read_bytes()))  # the uploader's other bytes
        copy(source, target, **kw)

    monkeypatch.setattr(world.store, "copy", put_again_then_copy)
    result = _scrub(world)
    assert (result.damaged, result.repaired, result.unrepaired) == (1, 0, 1)
    with world.svc.db.transaction() as store:
        row = store.conn.execute("SELECT state FROM blocks WHERE block_id = %s", (bad,))
        assert row.fetchone() == ("quarantined",)


def test_a_repair_is_recorded_as_the_bytes_the_copy_took(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A duplicate PUT again after scrub checked it, as another valid encoding (raw where
    it was zstd): the row recorded the checked copy's stored size, and the next scrub
    found the repaired block's size wrong."""
    from tessera.blocks import codec

    data = b"a block that compresses well " * (BLOCK // 29)
    world.put(ALICE, "/a.txt", data)
    world.run("dedup")
    bid = block_id(data)
    _corrupt(world, bid)
    world.put(BOB, "/b.txt", data)  # bob's staged copy: a duplicate to repair from
    copy = world.store.copy

    def put_raw_then_copy(source: str, target: str, **kw: Any) -> None:
        if source.startswith("staging/"):
            version, key = world.ctx.keys.block_key(bid)
            with monkeypatch.context() as m:
                m.setattr(codec, "_worth_compressing", lambda _plaintext: False)
                world.store.put(source, bytes(codec.encode_block(data, bid, key, version)))
        copy(source, target, **kw)

    monkeypatch.setattr(world.store, "copy", put_raw_then_copy)
    assert _scrub(world).repaired == 1
    monkeypatch.undo()
    stored = world.store.get(object_keys.canonical_key(bid))
    assert world.sql("SELECT stored_size FROM blocks WHERE block_id = %s", bid) == [(len(stored),)]
    assert _scrub(world).damaged == 0
    assert world.get(ALICE, "/a.txt") == data


def test_a_size_a_lying_first_committer_declared_is_corrected_by_verification(
    world: World,
) -> None:
    """The first commit naming a block made its row with that commit's declared size; a
    verified copy kept it, and scrub then took the intact block for damaged (no duplicate
    could match the wrong size either): one client could deny a block to everyone."""
    data = secrets.token_bytes(2 * BLOCK)
    world.put(ALICE, "/a.bin", data)
    with world.svc.db.transaction() as store:  # as a lying first committer left it
        store.conn.execute("UPDATE blocks SET size = size + 1")
    world.run("dedup")
    result = _scrub(world)
    assert (result.damaged, result.unrepaired) == (0, 0)
    with world.svc.db.transaction() as store:
        sizes = {size for (size,) in store.conn.execute("SELECT size FROM blocks")}
    assert sizes == {BLOCK}
    assert world.get(ALICE, "/a.bin") == data


@pytest.mark.parametrize("column", ["key_version", "stored_size"])
def test_intact_bytes_a_stale_row_misdescribes_mend_the_row_not_quarantine(
    world: World, column: str
) -> None:
    """A promotion or repair whose row update was lost leaves a valid encoding of the block
    under a row naming another key version or stored size: downloads were handed the wrong
    key, and scrub, finding no duplicate, quarantined the good bytes for every holder."""
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/a.bin", data)
    world.run("dedup")
    before = world.sql(f"SELECT {column} FROM blocks")
    world.sql(f"UPDATE blocks SET {column} = {column} + 1 RETURNING 1")  # a stale row
    result = _scrub(world)
    assert (result.damaged, result.repaired, result.unrepaired) == (1, 1, 0)
    assert world.sql(f"SELECT {column} FROM blocks") == before
    assert world.sql("SELECT state FROM blocks") == [("live",)]
    assert world.get(ALICE, "/a.bin") == data


def test_damaged_block_is_repaired_from_a_staged_duplicate(world: World) -> None:
    data, _ = _damaged_file(world, 0)
    world.put(BOB, "/b.bin", data)  # bob's copies wait for dedup: a verified duplicate

    result = _scrub(world)
    assert (result.checked, result.damaged, result.repaired, result.unrepaired) == (2, 1, 1, 0)
    assert world.get(ALICE, "/a.bin") == data
    assert _scrub(world).damaged == 0
    world.run("dedup")
    assert world.get(BOB, "/b.bin") == data


def test_damaged_block_is_repaired_from_a_duplicate_dedup_dropped_and_gc_kept(
    world: World,
) -> None:
    """A duplicate dedup dropped is kept for gc's grace (URLs issued for it live on): it is
    a verified copy of the block all that while. The canonical object damaged then, scrub
    quarantined the block for every version naming it, with good bytes beside it."""
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/a.bin", data)
    world.run("dedup")
    world.put(BOB, "/b.bin", data)
    world.run("dedup")  # bob's copy: dropped, its object kept for the grace
    bid = block_id(data)
    _corrupt(world, bid)
    result = _scrub(world)
    assert (result.damaged, result.repaired, result.unrepaired) == (1, 1, 0)
    assert world.get(ALICE, "/a.bin") == data
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


def test_a_block_that_went_cold_while_scrub_checked_it_is_left_for_later(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cold step takes a block live → cold without the block's lock: a quarantine
    that no longer matched still recorded damage and told its holders so."""
    _, bad = _damaged_file(world, 0)
    set_state = MaintenanceTx.set_state

    def cold_first(tx: MaintenanceTx, block_id: str, state: str, **kw: Any) -> bool:
        if state == "quarantined":
            tx.mark_cold(block_id, datetime.now(UTC) + timedelta(days=1))
        return set_state(tx, block_id, state, **kw)

    monkeypatch.setattr(MaintenanceTx, "set_state", cold_first)
    result = _scrub(world)
    assert (result.damaged, result.unrepaired) == (1, 0)
    assert world.sql("SELECT state FROM blocks WHERE block_id = %s", bad) == [("cold",)]
    assert world.sql("SELECT count(*) FROM damaged_versions") == [(0,)]


def _deleted_block(w: World) -> tuple[bytes, str]:
    """Alice's verified one-block /a.bin with its object deleted, as a gc bug would: (its
    bytes, its block id)."""
    data, (bid,) = _stored_blocks(w, 1)
    w.store.delete(object_keys.canonical_key(bid))
    return data, bid


def test_a_deleted_block_comes_back(world: World) -> None:
    """The store keeps what a block held when it was deleted (the versioned bucket): scrub
    undoes the delete and checks what came back, where it used to quarantine the block and
    mark the file damaged."""
    data, bid = _deleted_block(world)
    result = _scrub(world)
    assert (result.damaged, result.repaired, result.unrepaired) == (1, 1, 0)
    assert world.sql("SELECT state FROM blocks WHERE block_id = %s", bid) == [("live",)]
    assert world.sql("SELECT count(*) FROM damaged_versions") == [(0,)]
    assert world.get(ALICE, "/a.bin") == data
    assert _scrub(world).damaged == 0


def test_a_block_whose_recorded_key_cannot_be_loaded_now_is_no_verdict(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key service failing for the key version the metadata records (a parameter
    deleted under a warm function, a stale "not found" kept for a minute): scrub judged
    each block under it "unknown key version" and quarantined it, every file holding one
    damaged. That version existed, so it is no verdict: the blocks wait for the next run."""
    data, _ = _stored_blocks(world, 2)
    block_key = world.ctx.keys.block_key

    def failing(bid: str, version: int | None = None) -> tuple[int, bytes]:
        if version == 1:
            raise KeyError("unknown key version 1")
        return block_key(bid, version)

    monkeypatch.setattr(world.ctx.keys, "block_key", failing)
    result = _scrub(world)
    assert (result.ok, result.damaged, result.unrepaired) == (0, 0, 0)
    assert len(result.errors) == 2 and "cannot be loaded now" in result.errors[0]
    assert world.sql("SELECT DISTINCT state FROM blocks") == [("live",)]
    monkeypatch.undo()
    assert _scrub(world).ok == 2
    assert world.get(ALICE, "/a.bin") == data


def test_a_block_held_too_long_waits_and_holds_back_no_other(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit or a download holding one block past the lock timeout failed the whole
    run: the other damaged block waited for the next week's."""
    monkeypatch.setattr(world.ctx.repo, "lock_timeout_ms", 100)
    data, ids = _stored_blocks(world, 2)
    for bid in ids:
        world.store.delete(object_keys.canonical_key(bid))
    with world.ctx.repo.transaction() as holder:
        holder.block_lock(ids[1])  # (the later one: the pass had gone past it)
        result = _inventory(world)
    assert (result.damaged, result.repaired) == (1, 1)
    assert len(result.errors) == 1 and result.errors[0].startswith(ids[1] + ": busy")
    # the next run resumes at it, not the next week's pass (the pass had been saved past it)
    position = world.sql("SELECT position FROM maintenance_cursors WHERE step = %s", _INV)
    assert position == [(ids[0],)]
    assert _inventory(world).repaired == 1  # its turn came at the next run
    assert world.get(ALICE, "/a.bin") == data


def test_a_block_overwritten_with_bad_bytes_is_repaired_from_its_earlier_version(
    world: World,
) -> None:
    """The newest earlier version that verifies wins: one holding bad bytes is passed
    over, and the canonical object is never replaced by it."""
    data = secrets.token_bytes(2 * BLOCK)
    world.put(ALICE, "/a.bin", data)
    world.run("dedup")
    key = object_keys.canonical_key(block_id(chunks(data)[0]))
    good = world.store.get(key)
    world.store.put(key, with_last_byte_flipped(good))
    world.store.put(key, good[: len(good) // 2])  # overwritten twice: a bad version first
    result = _scrub(world)
    assert (result.damaged, result.repaired) == (1, 1)
    assert world.store.get(key) == good
    assert world.get(ALICE, "/a.bin") == data


def test_a_block_whose_earlier_versions_expired_is_quarantined(world: World) -> None:
    _, (bid,) = _stored_blocks(world, 1)
    lose(world, object_keys.canonical_key(bid))
    result = _scrub(world)
    assert (result.damaged, result.repaired, result.unrepaired) == (1, 0, 1)
    assert "missing (no duplicate or earlier version to repair from)" in result.errors[0]
    assert world.sql("SELECT state FROM blocks WHERE block_id = %s", bid) == [("quarantined",)]


def _cold_block(w: World) -> tuple[bytes, str]:
    """Alice's one-block /a.bin, unread for 90 days and moved to the cold tier: (its
    bytes, its block's key)."""
    data = secrets.token_bytes(BLOCK)
    w.put(ALICE, "/a.bin", data)
    w.run("dedup")
    w.collect_settled()
    w.run("cold", days=91)
    key = object_keys.canonical_key(block_id(data))
    head = w.store.head(key)
    assert head is not None and head.tier is StorageTier.COLD
    return data, key


def test_a_deleted_cold_block_comes_back_in_the_cold_tier(world: World) -> None:
    """No copy can be made of a cold earlier version before a restore (hours), and a
    quarantine is for good: the delete itself is undone (S3: its delete markers removed),
    and the block is back where it was, restored by the next download as before."""
    data, key = _cold_block(world)
    world.store.delete(key)
    result = _scrub(world)
    assert (result.damaged, result.repaired, result.unrepaired) == (1, 1, 0)
    head = world.store.head(key)
    assert head is not None and head.tier is StorageTier.COLD
    assert world.sql("SELECT state FROM blocks") == [("cold",)]
    assert isinstance(world.get(ALICE, "/a.bin"), RestoringResponse)
    world.store_clock.advance(hours=2)
    world.run("cold", days=91)
    assert world.get(ALICE, "/a.bin") == data


def test_a_cold_block_overwritten_names_its_cold_version_for_recovery_by_hand(
    world: World,
) -> None:
    """Overwritten, not deleted, a cold block's good bytes are an earlier version in the
    cold tier: the block is quarantined, and the report names that version."""
    _, key = _cold_block(world)
    world.store.put(key, b"not a block")
    result = _scrub(world)
    assert (result.damaged, result.repaired, result.unrepaired) == (1, 0, 1)
    (version,) = world.store.earlier_versions(key)
    assert f"earlier version {version.version_id} is in the cold tier" in result.errors[0]


def test_a_live_block_whose_object_is_cold_is_marked_cold_not_quarantined(world: World) -> None:
    """An object in the cold tier under a live row (moved outside Tessera, or left by an
    interrupted move) holds intact bytes: scrub records it cold, so a download restores it,
    instead of quarantining it and marking its versions damaged."""
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/a.bin", data)
    world.run("dedup")
    bid = block_id(data)
    world.store.set_tier(f"blocks/{bid[3:]}", StorageTier.COLD)
    result = _scrub(world)
    assert (result.checked, result.found_cold, result.damaged) == (1, 1, 0)
    assert world.sql("SELECT state, storage_class FROM blocks") == [("cold", "cold")]
    assert world.sql("SELECT count(*) FROM damaged_versions") == [(0,)]
    assert isinstance(world.get(ALICE, "/a.bin"), RestoringResponse)
    world.store_clock.advance(hours=2)
    assert world.run_as(ColdResult, "cold", days=0).restores_completed == 1
    assert world.get(ALICE, "/a.bin") == data


_INV = "scrub.inventory"  # the inventory's pass position, by its step's name


def _inventory(w: World) -> ScrubResult:
    result = run_step(w.ctx, "scrub", "inventory")
    assert isinstance(result, ScrubResult)
    return result


def _stored_blocks(w: World, count: int) -> tuple[bytes, list[str]]:
    """Alice's verified /a.bin of `count` blocks: (its bytes, its block ids in id order)."""
    data = secrets.token_bytes(count * BLOCK)
    w.put(ALICE, "/a.bin", data)
    w.run("dedup")
    w.collect_settled()
    return data, sorted(block_id(c) for c in chunks(data))


def test_the_inventory_finds_every_block_deleted_or_resized_and_repairs_it(
    database_url: str, tmp_path: Path
) -> None:
    """The sample reads 200 blocks a week: in a big store, a block a bug deleted was found
    long after its earlier version expired, if ever. The inventory lists every object."""
    gen = make_world(database_url, tmp_path, batch_size=2)  # three chunks for five blocks
    w = next(gen)
    try:
        data, ids = _stored_blocks(w, 5)
        deleted, resized = object_keys.canonical_key(ids[1]), object_keys.canonical_key(ids[4])
        w.store.delete(deleted)
        w.store.put(resized, w.store.get(resized)[:-1])
        result = _inventory(w)
        assert (result.inventoried, result.damaged, result.repaired) == (5, 2, 2)
        assert (result.checked, result.more) == (0, False)  # it reads no intact block
        assert w.get(ALICE, "/a.bin") == data
        again = _inventory(w)  # the pass ended: the next starts over
        assert (again.inventoried, again.damaged) == (5, 0)
    finally:
        gen.close()


def test_an_inventory_pass_resumes_where_its_budget_ran_out(
    database_url: str, tmp_path: Path
) -> None:
    gen = make_world(database_url, tmp_path, batch_size=2, max_batches_per_step=1)
    w = next(gen)
    try:
        _, ids = _stored_blocks(w, 5)
        w.store.delete(object_keys.canonical_key(ids[4]))
        calls = [_inventory(w)]
        while calls[-1].more:
            calls.append(_inventory(w))
        assert [c.inventoried for c in calls] == [2, 2, 1]
        assert [c.repaired for c in calls] == [0, 0, 1]
    finally:
        gen.close()


def test_an_inventory_chunk_of_many_repairs_stops_between_them_when_out_of_time(
    database_url: str, tmp_path: Path
) -> None:
    """The budget was looked at only between chunks: one chunk of hundreds of repairs ran
    the function past Lambda's 15 minutes, which fails the weekly run. A call now stops
    after the repair that spent it, and the next resumes at the first suspect left."""
    gen = make_world(database_url, tmp_path, batch_size=5, step_budget_s=0.0)
    w = next(gen)
    try:
        data, ids = _stored_blocks(w, 5)
        for n in (1, 2, 4):
            w.store.delete(object_keys.canonical_key(ids[n]))
        calls = [_inventory(w)]
        while calls[-1].more:
            calls.append(_inventory(w))
        assert [c.repaired for c in calls] == [1, 1, 1]
        assert [c.more for c in calls] == [True, True, False]
        assert w.get(ALICE, "/a.bin") == data
    finally:
        gen.close()


def test_objects_without_a_row_between_blocks_hold_no_pass_back(
    database_url: str, tmp_path: Path
) -> None:
    """gc deletes a row before its object: the listing holds objects no row names, here
    more than a chunk lists at once, between two blocks. The pass goes on past them, takes
    neither them nor the block behind them for damage (a suspect found intact would count
    as `ok`), and still finds the block after that deleted."""
    gen = make_world(database_url, tmp_path, batch_size=1)  # each chunk lists two keys
    w = next(gen)
    try:
        _, ids = _stored_blocks(w, 3)
        first, second = (int(i[3:], 16) for i in ids[:2])
        assert second - first > 5
        for n in range(1, 6):  # five objects whose keys sort between the first two blocks
            w.store.put(f"blocks/{first + n:064x}", b"an object gc will delete")
        w.store.delete(object_keys.canonical_key(ids[2]))
        result = _inventory(w)
        assert (result.inventoried, result.damaged, result.repaired) == (3, 1, 1)
        assert result.ok == 0
    finally:
        gen.close()
