"""Worker threads for the block pipeline: a worker per core.

Threads, not processes: blake3, zstandard, cryptography's AES-GCM and pyfastcdc all release
the GIL on block-sized buffers (measured: two threads each looping on a 4 MiB buffer use
1.6-1.8 CPU seconds per wall second on 2 cores; a library holding the GIL would give about
1.0), so threads scale without pickling megabyte blocks between processes.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def default_workers() -> int:
    """A worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def shared_pool() -> ThreadPoolExecutor:
    """A process-wide pool of `default_workers()` threads for short jobs such as hashing a
    block; created on first use, so a scan of one small file starts no thread at all."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(default_workers(), thread_name_prefix="tessera-blocks")
        return _pool


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int | None = None
) -> Generator[R, None, None]:
    """`map(fn, items)` on a thread pool, lazily, keeping at most 2 * workers items in flight.

    With one worker it runs inline (no thread), which is also the baseline the benchmarks use.
    """
    n = workers or default_workers()
    if n == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="tessera-blocks") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * n:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:  # the consumer stopped early or a job failed
                f.cancel()
