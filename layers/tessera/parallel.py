"""One helper for block-store I/O spread over threads (HEADs, copies, restores)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """`fn` over `items` on up to `workers` threads, results in order. Each call waits on
    the network (S3: 15-30 ms a request), so a thousand of them one after another outlast
    an API request's time; inline when there is one item or one worker."""
    todo = list(items)
    if len(todo) <= 1 or workers <= 1:
        return [fn(i) for i in todo]
    with ThreadPoolExecutor(min(workers, len(todo))) as pool:
        return list(pool.map(fn, todo))
