"""Streaming FastCDC 2020 chunking of files of any size (DESIGN §3).

Files are read in fixed windows with `readinto` (never whole, never mmapped: a file truncated
under an mmap kills the process with SIGBUS, while a short read is an ordinary, reportable
event). FastCDC decides a cut from at most `MAX_BLOCK_SIZE` bytes after the chunk start, so a
chunk is taken from a window only when the window holds that many bytes after its start (or
the file ends there); the rest of the window moves to its front and the next read fills it
up. The cuts are therefore exactly those of chunking the whole file in one buffer.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from blake3 import blake3
from pyfastcdc import FastCDC

from tessera.blocks.errors import FileChangedError
from tessera.blocks.ids import ID_PREFIX, id_from_digest
from tessera.blocks.memory import uninitialized_bytearray
from tessera.blocks.workers import default_workers, shared_pool

T = TypeVar("T")

MIN_BLOCK_SIZE = 256 * 1024
AVG_BLOCK_SIZE = 1024 * 1024
MAX_BLOCK_SIZE = 4 * 1024 * 1024
# Read window: large enough that moving the unconsumed tail (< MAX_BLOCK_SIZE) to the front
# costs little (under a quarter of the bytes, in memory), small enough that chunking stays
# far below 100 MB even inside the whole client (`tessera blocks` peaks near 80 MB).
WINDOW_SIZE = 16 * 1024 * 1024
# Up to this size a file is hashed on the calling thread: handing its one to four blocks to
# the pool costs more than it overlaps (a 100 KiB file took 0.21 ms through the pool and
# 0.10 ms inline, a 4 MiB one 3.9 and 3.5 ms; from 8 MiB the pool wins).
HASH_INLINE_MAX = MAX_BLOCK_SIZE

# Shared by every thread: a FastCDC object only holds the immutable configuration; each
# cut_buf() call gets its own cursor.
_CHUNKER = FastCDC(AVG_BLOCK_SIZE, min_size=MIN_BLOCK_SIZE, max_size=MAX_BLOCK_SIZE)


@dataclass(frozen=True, slots=True)
class BlockRef:
    """One block of a file: its id and where it lies in the file."""

    id: str
    offset: int
    size: int

    def as_dict(self) -> dict[str, Any]:
        """`{"id", "offset", "size"}`, the JSON shape of `tessera blocks --json`."""
        return {"id": self.id, "offset": self.offset, "size": self.size}


@dataclass(frozen=True, slots=True)
class FileManifest:
    """A file's content hash, size and blocks (offsets contiguous from 0, sizes summing to size)."""

    content_hash: str
    size: int
    blocks: tuple[BlockRef, ...]

    def as_dict(self) -> dict[str, Any]:
        """`{"content_hash", "size", "blocks": [...]}`, the JSON of `tessera blocks --json`."""
        return {
            "content_hash": self.content_hash,
            "size": self.size,
            "blocks": [b.as_dict() for b in self.blocks],
        }


def scan_file(path: str | os.PathLike[str], *, workers: int | None = None) -> FileManifest:
    """Chunk the file at `path` and hash it, without reading it whole.

    By default blocks are hashed on the shared worker pool (a thread per core) while the
    calling thread reads and cuts; `workers=1` does everything on the calling thread.

    Raises FileChangedError when the file changed while it was read, and the OSError of
    `open`/`read` (FileNotFoundError, PermissionError, IsADirectoryError, ...; each names the
    path) when it cannot be read, or when it is not a regular file.
    """
    blocks: list[BlockRef] = []
    whole = blake3()
    for offset, view, digest in cut_file(
        path, _digest, workers=workers, inline_max=HASH_INLINE_MAX
    ):
        blocks.append(BlockRef(id_from_digest(digest), offset, len(view)))
        whole.update(digest)
    size = blocks[-1].offset + blocks[-1].size if blocks else 0
    return FileManifest(ID_PREFIX + whole.hexdigest(), size, tuple(blocks))


def iter_chunks(
    path: str | os.PathLike[str], *, workers: int | None = None
) -> Generator[tuple[BlockRef, bytes], None, None]:
    """Yield each block of the file at `path` with its plaintext, lazily, in file order.

    Memory stays bounded whatever the file size: one read window plus the blocks handed out.
    `workers` is as for `scan_file`.
    The change check of `scan_file` runs after the last block, so a caller must not commit
    what it uploaded before this iterator has finished without raising FileChangedError.
    """
    for offset, view, digest in cut_file(
        path, _digest, workers=workers, inline_max=HASH_INLINE_MAX
    ):
        yield BlockRef(id_from_digest(digest), offset, len(view)), bytes(view)


def cut_file(
    path: str | os.PathLike[str],
    job: Callable[[memoryview], T],
    *,
    workers: int | None,
    windows: int = 1,
    inline_max: int = 0,
) -> Iterator[tuple[int, memoryview, T]]:
    """(file offset, view of the block's bytes, `job(view)`) for each block, in file order.

    `job` runs on the shared pool as soon as its block is cut (inline when `workers == 1`
    or the file is at most `inline_max` bytes), so it works while FastCDC looks for the
    next cut. A view, and the memory `job` saw, is valid only until the next item. Raises
    FileChangedError at the end if the file changed.

    With `windows` > 1 and a pool, the file is read into that many rotating windows, so the
    jobs of one window run while the next is read and cut (the reader never waits for the
    pool but to reuse a window); with one window, each window's jobs are finished before
    the next read. Each window costs `WINDOW_SIZE` bytes of memory.
    """
    # (window index, file offset, view, job or its result), in file order
    pending: deque[tuple[int, int, memoryview, Future[T] | T]] = deque()
    with open_regular(path) as f:
        before = os.fstat(f.fileno())
        pooled = (workers or default_workers()) > 1 and before.st_size > inline_max
        pool = shared_pool() if pooled else None
        rotation = windows if pool else 1
        _advise_sequential(f.fileno())
        # A small file gets a window just larger than itself. One spare byte lets a read see
        # that the file grew. Windows are left uninitialized: only bytes read are looked at.
        capacity = min(WINDOW_SIZE, before.st_size + 1)
        buffers = [memoryview(uninitialized_bytearray(capacity))]
        current = 0
        base = 0  # file offset of the current window's first byte
        filled = 0
        eof = False
        try:
            while True:
                window = buffers[current]
                while filled < capacity and not eof:
                    n = f.readinto(window[filled:])
                    if not n:
                        eof = True
                    else:
                        filled += n
                if base + filled > before.st_size:
                    raise _changed(path, f"it grew beyond its {before.st_size} bytes")
                if eof and base + filled < before.st_size:
                    raise _changed(
                        path, f"it shrank from {before.st_size} to {base + filled} bytes"
                    )
                consumed = 0
                chunks = _CHUNKER.cut_buf(window[:filled])
                # A cut may depend on bytes not read yet unless MAX_BLOCK_SIZE bytes follow
                # the chunk's start: then refill first (and leave that chunk uncut).
                while eof or filled - consumed >= MAX_BLOCK_SIZE:
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    start = chunk.offset
                    view = window[start : start + chunk.length]
                    work = pool.submit(job, view) if pool else job(view)
                    pending.append((current, base + start, view, work))
                    consumed = start + chunk.length
                if eof and consumed == filled:
                    break
                # The unconsumed tail moves to the front of the next window, once the jobs
                # still reading that window are done.
                following = (current + 1) % rotation
                while pending and pending[0][0] == following:
                    yield _finished(pending.popleft())
                if following == len(buffers):
                    buffers.append(memoryview(uninitialized_bytearray(capacity)))
                rest = filled - consumed
                buffers[following][:rest] = window[consumed:filled]
                current = following
                base += consumed
                filled = rest
            while pending:
                yield _finished(pending.popleft())
        finally:
            for item in pending:  # the consumer stopped early, or a job or read failed
                if isinstance(item[3], Future):
                    item[3].cancel()
        _check_unchanged(path, f.fileno(), before)


def _finished(item: tuple[int, int, memoryview, Future[T] | T]) -> tuple[int, memoryview, T]:
    _window, offset, view, work = item
    return offset, view, work.result() if isinstance(work, Future) else work


def _digest(data: memoryview) -> bytes:
    return blake3(data).digest()


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> io.FileIO:
    """Open `path` for reading; only regular files (a FIFO would block, a device never ends).

    O_NONBLOCK keeps `open` from hanging on a FIFO swapped in after a check; it has no effect
    on reads of regular files. Without `follow_symlinks`, a symlink is refused (ELOOP).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)", path)
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def _advise_sequential(fd: int) -> None:
    """Ask the kernel for aggressive read-ahead (a hint; absent on some platforms)."""
    fadvise = getattr(os, "posix_fadvise", None)
    if fadvise is not None:
        fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


def _check_unchanged(path: str | os.PathLike[str], fd: int, before: os.stat_result) -> None:
    """Raise FileChangedError if the file was written to, or replaced at `path`, while read."""
    after = os.fstat(fd)
    if after.st_size != before.st_size:
        raise _changed(path, f"it was written to: {before.st_size} bytes became {after.st_size}")
    if after.st_mtime_ns != before.st_mtime_ns:
        raise _changed(path, "it was written to")
    try:
        now = os.stat(path)
    except FileNotFoundError:
        raise _changed(path, "it was deleted or renamed") from None
    if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
        raise _changed(path, "another file replaced it")


def _changed(path: str | os.PathLike[str], why: str) -> FileChangedError:
    return FileChangedError(
        f"{os.fspath(path)} changed while it was being read ({why}); "
        "no block list was produced — read it again once it stops changing",
        path=os.fspath(path),
    )
