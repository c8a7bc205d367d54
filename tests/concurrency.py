"""Running one callable on several threads at once, for race tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_at_once(
    fn: Callable[[], T], threads: int, timeout: float = 60
) -> tuple[list[T], list[BaseException]]:
    """Start `threads` threads that call `fn` together (behind a barrier, so they really
    race); return what the calls returned and what they raised."""
    barrier = threading.Barrier(threads)
    results: list[T] = []
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            results.append(fn())
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout)
    return results, errors
