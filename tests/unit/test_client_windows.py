"""How an upload's files are grouped into batches (`tessera_client.transfer._batches`) and its
blocks into windows (`tessera_client.transfer._windows`)."""

from __future__ import annotations

import json
import random

import pytest

from tessera.blocks import BlockRef, FileManifest
from tessera.local.gateway import MAX_API_BODY
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


def _items(paths: list[str], blocks: int = 1) -> list[UploadItem]:
    return [
        UploadItem(
            path,
            FileManifest(
                f"b3:{n:064x}",
                blocks,
                tuple(BlockRef(f"b3:{n:064x}", b, 1) for b in range(blocks)),
            ),
            Stat(Kind.FILE, blocks, 0, n),
            None,
            0,
        )
        for n, path in enumerate(paths)
    ]


def test_a_batch_of_long_paths_stays_within_what_the_server_takes() -> None:
    """A thousand files with 4 KiB paths came to 5.3 MB a commit, over the server's 5 MiB
    body limit (Lambda's 6 MiB event): the same batch was refused every round."""
    deep = "/".join(["é" * 120] * 16)  # 3,855 bytes of UTF-8
    items = _items([f"{deep}/{n}.txt" for n in range(1000)])
    assert len(_commit_body(items)) > MAX_API_BODY  # in one batch, as before
    batches = list(transfer._batches(items, 1000, 10_000))
    assert [i for b in batches for i in b] == items  # all of them, in order
    assert all(len(_commit_body(batch)) <= MAX_API_BODY for batch in batches)


def _commit_body(items: list[UploadItem]) -> bytes:
    """A `/v1/commit_batch` body for `items` as the client sends it, with non-ASCII escaped
    (httpx before 0.28 did)."""
    entries = [
        {
            "path": "/" + i.path,
            "parent_rev": 12,
            "parent_file_id": "f" * 32,
            "upload_id": "u" * 32,
            "blocks": [{"id": b.id, "size": b.size} for b in i.manifest.blocks],
            "size": i.manifest.size,
            "content_hash": i.manifest.content_hash,
            "mtime": "2026-11-28T01:02:03.123456Z",
            "idempotency_key": "k" * 32,
        }
        for i in items
    ]
    return json.dumps({"entries": entries}).encode()


def test_short_paths_still_batch_by_count() -> None:
    items = _items([f"f{n}" for n in range(2500)])
    assert [len(b) for b in transfer._batches(items, 1000, 10_000)] == [1000, 1000, 500]
    heavy = _items([f"f{n}" for n in range(30)], blocks=400)
    assert [len(b) for b in transfer._batches(heavy, 1000, 10_000)] == [25, 5]
