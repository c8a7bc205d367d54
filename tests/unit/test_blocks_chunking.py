"""Chunking, block ids and content hashes of `tessera.blocks` (DESIGN §3)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from tessera.blocks import (
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    BlockRef,
    FileChangedError,
    FileManifest,
    block_id,
    chunking,
    content_hash,
    decode_block,
    derive_block_key,
    encode_file,
    encode_many,
    iter_chunks,
    scan_file,
)
from tessera.blocks.workers import shared_pool
from tests.corruption import with_last_byte_flipped
from tests.permissions import permission_bound_prefix

MiB = 1024 * 1024
MakeFile = Callable[[bytes], Path]


def rand_bytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def mixed_bytes(n: int, seed: int = 2) -> bytes:
    """Random data with long zero runs and repeated text: exercises max-size and min-size cuts."""
    rng = random.Random(seed)
    parts: list[bytes] = []
    size = 0
    while size < n:
        kind = rng.randrange(3)
        length = rng.randrange(1, 6 * MiB)
        if kind == 0:
            part = rng.randbytes(length)
        elif kind == 1:
            part = bytes(length)
        else:
            part = (b"the quick brown fox %d jumps\n" % rng.randrange(10**6)) * (length // 28 + 1)
        parts.append(part)
        size += len(part)
    return b"".join(parts)[:n]


@pytest.fixture
def make_file(tmp_path: Path) -> MakeFile:
    counter = iter(range(10**6))

    def make(data: bytes) -> Path:
        p = tmp_path / f"f{next(counter)}.bin"
        p.write_bytes(data)
        return p

    return make


def check_manifest(m: FileManifest, data: bytes) -> None:
    """Every structural property a manifest of `data` must have."""
    assert m.size == len(data)
    offset = 0
    for i, b in enumerate(m.blocks):
        assert b.offset == offset, "offsets are contiguous from 0"
        assert 0 < b.size <= MAX_BLOCK_SIZE
        if i < len(m.blocks) - 1:
            assert b.size >= MIN_BLOCK_SIZE, "only the last block may be short"
        assert b.id == block_id(data[b.offset : b.offset + b.size])
        offset += b.size
    assert offset == len(data), "sizes sum to the file size"
    assert m.content_hash == content_hash(b.id for b in m.blocks)


def test_boundaries_on_mixed_data(make_file: MakeFile) -> None:
    data = mixed_bytes(40 * MiB)
    m = scan_file(make_file(data))
    check_manifest(m, data)
    assert len(m.blocks) > 10
    assert any(b.size == MAX_BLOCK_SIZE for b in m.blocks), "zero runs cut at the maximum"


@pytest.mark.parametrize(
    ("window", "workers"),
    [(MAX_BLOCK_SIZE, 1), (MAX_BLOCK_SIZE + 1, 3), (5 * MiB + 12345, 2), (32 * MiB, 1)],
)
def test_windowed_reading_cuts_exactly_like_one_buffer(
    make_file: MakeFile, monkeypatch: pytest.MonkeyPatch, window: int, workers: int
) -> None:
    data = mixed_bytes(30 * MiB, seed=window)
    monkeypatch.setattr(chunking, "WINDOW_SIZE", window)
    m = scan_file(make_file(data), workers=workers)
    whole = FastCDC(1 * MiB, min_size=MIN_BLOCK_SIZE, max_size=MAX_BLOCK_SIZE).cut_buf(data)
    assert [(b.offset, b.size) for b in m.blocks] == [(c.offset, c.length) for c in whole]
    check_manifest(m, data)


def test_average_block_size_is_near_one_mib(make_file: MakeFile) -> None:
    m = scan_file(make_file(rand_bytes(32 * MiB)))
    average = m.size / len(m.blocks)
    assert 0.8 * MiB < average < 2 * MiB


def test_same_content_same_ids_and_hash_whatever_the_name(tmp_path: Path) -> None:
    data = rand_bytes(9 * MiB, seed=7)
    (tmp_path / "a.txt").write_bytes(data)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other name.bin").write_bytes(data)
    assert scan_file(tmp_path / "a.txt") == scan_file(tmp_path / "sub" / "other name.bin")
    assert scan_file(str(tmp_path / "a.txt")) == scan_file(tmp_path / "a.txt")


def test_different_content_different_hash(make_file: MakeFile) -> None:
    data = rand_bytes(3 * MiB)
    other = with_last_byte_flipped(data)
    assert scan_file(make_file(data)).content_hash != scan_file(make_file(other)).content_hash


def test_empty_file_has_no_blocks_and_the_hash_of_nothing(make_file: MakeFile) -> None:
    m = scan_file(make_file(b""))
    assert m == FileManifest("b3:" + blake3(b"").hexdigest(), 0, ())
    assert m.content_hash == content_hash([])
    assert list(iter_chunks(make_file(b""))) == []


@pytest.mark.parametrize("size", [1, 4096, MIN_BLOCK_SIZE - 1, MIN_BLOCK_SIZE])
def test_small_files_are_exactly_one_block(make_file: MakeFile, size: int) -> None:
    data = rand_bytes(size, seed=size)
    m = scan_file(make_file(data))
    check_manifest(m, data)
    assert len(m.blocks) == 1
    assert m.blocks[0].id == block_id(data)
    assert m.content_hash == "b3:" + blake3(blake3(data).digest()).hexdigest()


def test_a_max_size_run_of_zeros_is_one_block(make_file: MakeFile) -> None:
    m = scan_file(make_file(bytes(MAX_BLOCK_SIZE)))
    assert [(b.offset, b.size) for b in m.blocks] == [(0, MAX_BLOCK_SIZE)]
    m2 = scan_file(make_file(bytes(MAX_BLOCK_SIZE + 1)))
    assert [b.size for b in m2.blocks] == [MAX_BLOCK_SIZE, 1]


@pytest.mark.parametrize("workers", [1, 2])
def test_iter_chunks_yields_the_manifest_blocks_and_their_bytes(
    make_file: MakeFile, workers: int
) -> None:
    data = mixed_bytes(20 * MiB, seed=5)
    path = make_file(data)
    pairs = list(iter_chunks(path, workers=workers))
    assert [ref for ref, _ in pairs] == list(scan_file(path, workers=3 - workers).blocks)
    for ref, chunk in pairs:
        assert isinstance(chunk, bytes)
        assert chunk == data[ref.offset : ref.offset + ref.size]


@pytest.mark.parametrize(
    ("size", "pooled"),
    [(100 * 1024, False), (chunking.HASH_INLINE_MAX, False), (chunking.HASH_INLINE_MAX + 1, True)],
)
def test_files_of_a_few_blocks_are_hashed_on_the_calling_thread(
    make_file: MakeFile, monkeypatch: pytest.MonkeyPatch, size: int, pooled: bool
) -> None:
    """The pool's hand-offs cost more than they overlap for one to four blocks."""
    data = mixed_bytes(size, seed=size)
    path = make_file(data)
    asked: list[int] = []
    real = shared_pool

    def recording_pool() -> object:
        asked.append(1)
        return real()

    monkeypatch.setattr(chunking, "shared_pool", recording_pool)
    m = scan_file(path, workers=2)
    assert bool(asked) is pooled
    check_manifest(m, data)
    assert m == scan_file(path, workers=1)


def test_abandoning_iter_chunks_leaves_later_scans_intact(make_file: MakeFile) -> None:
    data = mixed_bytes(40 * MiB, seed=6)
    path = make_file(data)
    chunks = iter_chunks(path)
    next(chunks)
    chunks.close()
    check_manifest(scan_file(path), data)


def test_as_dict_is_the_cli_json_shape(make_file: MakeFile) -> None:
    m = scan_file(make_file(rand_bytes(2 * MiB)))
    d = m.as_dict()
    assert list(d) == ["content_hash", "size", "blocks"]
    assert d["blocks"][0] == {"id": m.blocks[0].id, "offset": 0, "size": m.blocks[0].size}


# --- edit locality ---------------------------------------------------------------------

LOCALITY_DATA = rand_bytes(16 * MiB, seed=11)


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    pos=st.integers(0, len(LOCALITY_DATA)),
    insert=st.binary(min_size=0, max_size=64),
    delete=st.integers(0, 64),
)
def test_an_edit_changes_only_the_blocks_around_it(
    make_file: MakeFile, pos: int, insert: bytes, delete: int
) -> None:
    edited = LOCALITY_DATA[:pos] + insert + LOCALITY_DATA[pos + delete :]
    before = {b.id for b in scan_file(make_file(LOCALITY_DATA)).blocks}
    after = scan_file(make_file(edited)).blocks
    new = [b for b in after if b.id not in before]
    assert len(new) <= 2
    assert sum(b.size for b in new) <= 2 * MAX_BLOCK_SIZE
    if new:  # and they are where the edit is
        assert new[0].offset <= pos <= new[-1].offset + new[-1].size


# --- files that change while read -------------------------------------------------------


@pytest.fixture
def old_file(make_file: MakeFile, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 24 MiB file last modified long ago, so any write moves its mtime; read in 8 MiB
    windows, so edits land between reads."""
    monkeypatch.setattr(chunking, "WINDOW_SIZE", 8 * MiB)
    p = make_file(rand_bytes(24 * MiB, seed=3))
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    return p


def consume_with(path: Path, edit: Callable[[], None]) -> None:
    """Read the first block, edit the file, then read the rest."""
    chunks = iter_chunks(path)
    next(chunks)
    edit()
    for _ in chunks:
        pass


def _append(p: Path) -> None:
    with p.open("ab") as f:
        f.write(b"more")


def _truncate(p: Path) -> None:
    os.truncate(p, 5 * MiB)


def _overwrite_same_size(p: Path) -> None:
    with p.open("r+b") as f:
        f.seek(20 * MiB)
        f.write(b"X" * 100)


def _replace(p: Path) -> None:
    tmp = p.with_suffix(".new")
    tmp.write_bytes(p.read_bytes())
    os.replace(tmp, p)


def _delete(p: Path) -> None:
    p.unlink()


@pytest.mark.parametrize(
    ("edit", "why"),
    [  # appending/truncating is seen by the next read, the rest by the check at the end
        (_append, "grew"),
        (_truncate, "shrank"),
        (_overwrite_same_size, "written to"),
        (_replace, "replaced"),
        (_delete, "deleted"),
    ],
)
def test_a_file_changing_while_read_is_reported(
    old_file: Path, edit: Callable[[Path], None], why: str
) -> None:
    with pytest.raises(FileChangedError, match=why) as info:
        consume_with(old_file, lambda: edit(old_file))
    assert str(old_file) in info.value.message
    assert info.value.code == "file_changed"


def test_scan_file_never_returns_a_mixed_block_list(
    old_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = blake3
    calls = 0

    def hash_then_edit(*data: memoryview) -> object:
        nonlocal calls
        if data:  # a block is hashed (not the whole-file hasher being created)
            calls += 1
            if calls == 2:  # after the first block: rewrite the middle of the file
                _overwrite_same_size(old_file)
        return real(*data)

    monkeypatch.setattr(chunking, "blake3", hash_then_edit)
    with pytest.raises(FileChangedError, match="while it was being read"):
        scan_file(old_file)
    assert calls > 2


def test_an_unchanged_old_file_scans_fine(old_file: Path) -> None:
    check_manifest(scan_file(old_file), old_file.read_bytes())


# --- unreadable files -------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        scan_file(tmp_path / "nope")
    assert info.value.filename == str(tmp_path / "nope")


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        scan_file(tmp_path)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        scan_file(fifo)


def test_unreadable_file_raises_permission_error_naming_it(make_file: MakeFile) -> None:
    """In a subprocess file permissions apply to, even when the tests run as root."""
    p = make_file(b"secret")
    p.chmod(0)
    probe = (
        "import sys\nfrom tessera.blocks import scan_file\n"
        "try:\n    scan_file(sys.argv[1])\nexcept PermissionError as e:\n    print(e.filename)"
    )
    cmd = [*permission_bound_prefix(), sys.executable, "-c", probe, str(p)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert (r.returncode, r.stdout.strip()) == (0, str(p)), r.stderr


def test_a_small_file_growing_after_its_only_read_is_reported(make_file: MakeFile) -> None:
    p = make_file(b"short file")
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    with pytest.raises(FileChangedError, match="10 bytes became 14"):
        consume_with(p, lambda: _append(p))


@pytest.mark.parametrize("workers", [1, 2])
def test_the_encode_pipeline_fails_when_the_file_changes(old_file: Path, workers: int) -> None:
    key = bytes(32)
    jobs = ((data, ref.id, key, 1) for ref, data in iter_chunks(old_file, workers=workers))
    stored = encode_many(jobs, workers)
    next(stored)
    _overwrite_same_size(old_file)
    with pytest.raises(FileChangedError):
        for _ in stored:
            pass


# --- the whole-file encode pipeline ------------------------------------------------------

SECRET = bytes(range(32))


def key_for(block: str) -> tuple[int, bytes]:
    return 7, derive_block_key(SECRET, block)


@pytest.mark.parametrize(
    ("window", "workers"), [(MAX_BLOCK_SIZE + 1, 2), (5 * MiB + 12345, 2), (9 * MiB, 1)]
)
def test_encode_file_encodes_every_block_of_the_manifest(
    make_file: MakeFile, monkeypatch: pytest.MonkeyPatch, window: int, workers: int
) -> None:
    # Small windows: many reads, so the rotating windows are reused while jobs run.
    monkeypatch.setattr(chunking, "WINDOW_SIZE", window)
    data = mixed_bytes(30 * MiB, seed=window)
    path = make_file(data)
    pairs = list(encode_file(path, key_for, workers=workers))
    assert [ref for ref, _ in pairs] == list(scan_file(path).blocks)
    for ref, stored in pairs:
        assert stored[6:10] == (7).to_bytes(4, "big")  # the key version key_for gave
        plain = decode_block(stored, ref.id, key_for(ref.id)[1])
        assert plain == data[ref.offset : ref.offset + ref.size]


def test_encode_file_of_an_empty_file_yields_nothing(make_file: MakeFile) -> None:
    assert list(encode_file(make_file(b""), key_for)) == []


def test_encode_file_asks_key_for_for_each_block_id(make_file: MakeFile) -> None:
    path = make_file(mixed_bytes(12 * MiB, seed=8))
    asked: list[str] = []

    def recording(block: str) -> tuple[int, bytes]:
        asked.append(block)
        return key_for(block)

    refs: list[BlockRef] = [ref for ref, _ in encode_file(path, recording, workers=1)]
    assert asked == [ref.id for ref in refs]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_key_lookup_stops_encode_file(make_file: MakeFile, workers: int) -> None:
    path = make_file(mixed_bytes(20 * MiB, seed=9))

    def no_key(block: str) -> tuple[int, bytes]:
        raise LookupError(f"no key for {block}")

    with pytest.raises(LookupError, match="no key for b3:"):
        list(encode_file(path, no_key, workers=workers))
    check_manifest(scan_file(path), path.read_bytes())  # the shared pool is still usable


def test_abandoning_encode_file_leaves_later_scans_intact(make_file: MakeFile) -> None:
    data = mixed_bytes(40 * MiB, seed=10)
    path = make_file(data)
    stored = encode_file(path, key_for)
    next(stored)
    stored.close()
    check_manifest(scan_file(path), data)


@pytest.mark.parametrize("workers", [1, 2])
def test_encode_file_fails_when_the_file_changes(old_file: Path, workers: int) -> None:
    stored = encode_file(old_file, key_for, workers=workers)
    next(stored)
    _overwrite_same_size(old_file)
    with pytest.raises(FileChangedError, match="while it was being read"):
        for _ in stored:
            pass
