"""How an upload's blocks are grouped into windows (`tessera_client.transfer._windows`)."""

from __future__ import annotations

import random

import pytest

from tessera.blocks import BlockRef, FileManifest
from tessera_client import transfer
from tessera_client.fs import Kind, Stat
from tessera_client.transfer import UploadItem, Work

MiB = 1024 * 1024


def _work(sizes: list[int]) -> tuple[list[Work], list[UploadItem]]:
    """One file per block, as in a sync of small files."""
    items = [
        UploadItem(
            f"f{n}",
            FileManifest(f"b3:{n:064x}", size, (BlockRef(f"b3:{n:064x}", 0, size),)),
            Stat(Kind.FILE, size, 0, n),
            None,
            0,
        )
        for n, size in enumerate(sizes)
    ]
    return [(i, i.manifest.blocks[0].id, "up_1", 1, "key") for i in items], items


def _bytes(window: list[Work]) -> int:
    return sum(w[0].manifest.size for w in window)


@pytest.mark.parametrize("seed", range(5))
def test_windows_hold_every_block_once_in_order_and_shrink_at_the_end(seed: int) -> None:
    rng = random.Random(seed)
    work, items = _work([rng.randint(1024, 300 * 1024) for _ in range(rng.randint(300, 1500))])
    windows = list(transfer._windows(work, items))
    assert [w for window in windows for w in window] == work
    assert all(len(window) <= transfer.WINDOW_BLOCKS for window in windows)
    assert all(_bytes(window) <= transfer.WINDOW_BYTES for window in windows)
    # the last window's commit overlaps no PUT: the tail shrinks to about TAIL_WINDOW_BYTES
    tail = [_bytes(window) for window in windows[-4:]]
    assert tail[-1] <= transfer.TAIL_WINDOW_BYTES
    assert tail[0] > tail[-1]
    assert all(b >= transfer.TAIL_WINDOW_BYTES - 300 * 1024 for b in tail[:-1])


def test_a_block_larger_than_the_tail_window_still_gets_a_window_of_its_own() -> None:
    work, items = _work([4 * MiB, 4 * MiB, 4 * MiB])
    assert [len(window) for window in transfer._windows(work, items)] == [1, 1, 1]
