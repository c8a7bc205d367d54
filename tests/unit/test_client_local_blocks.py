"""The local blocks a download may take instead of fetching them (`transfer._SyncedBlocks`)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tessera.api.models import DownloadBlock
from tessera.blocks import BlockRef, FileManifest, scan_file
from tessera_client import transfer
from tessera_client.fs import RealFilesystem, SafeFilesystem


def _block(ref: BlockRef) -> DownloadBlock:
    return DownloadBlock.model_validate(
        {"id": ref.id, "offset": ref.offset, "size": ref.size, "method": "GET",
         "url": "https://blocks.example/x", "headers": {}, "key_version": 1,
         "key": "A" * 43 + "="}
    )  # fmt: skip


def test_closing_while_a_thread_chunks_the_file_leaves_no_handle_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed download closes its local blocks while a transfer thread may still be
    chunking the file: the handle that thread then opened was never closed (and on
    Windows, held the file against the next attempt's rename)."""
    (tmp_path / "f.bin").write_bytes(b"synced content " * 1000)
    manifest = scan_file(tmp_path / "f.bin")
    chunking, go_on = threading.Event(), threading.Event()

    def slow_scan(path: Path) -> FileManifest:
        chunking.set()
        assert go_on.wait(10)
        return manifest

    monkeypatch.setattr(transfer, "scan_file", slow_scan)
    here = transfer._SyncedBlocks(
        SafeFilesystem(RealFilesystem(tmp_path)), "f.bin", [b.id for b in manifest.blocks]
    )
    reader = threading.Thread(target=here.read, args=(_block(manifest.blocks[0]),))
    reader.start()
    assert chunking.wait(10)
    closer = threading.Thread(target=here.close)
    closer.start()
    go_on.set()
    closer.join(10)
    reader.join(10)
    assert here._handle is not None and here._handle.closed
    assert here.read(_block(manifest.blocks[0])) is None  # closed: nothing more is read
