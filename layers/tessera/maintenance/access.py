"""Access analytics: which blocks were read, recorded in batches, not a write per download.

The download path calls `AccessRecorder.record(block_ids)`; ids collect in memory and are
written (one UPDATE of `blocks.last_access`, rows skipped when already recent) at most every
`access_flush_s`, or when `max_pending` ids wait. Losing the last few seconds of reads when a
process dies only makes those blocks look a little older to the cold-storage step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from tessera.metadata import Database
from tessera.metadata.maintenance import MaintenanceRepository
from tessera.ports import Clock, SystemClock


class AccessRecorder:
    """A per-process buffer of block reads, flushed to the metadata database in batches."""

    def __init__(
        self,
        db: Database,
        *,
        flush_s: float = 60.0,
        max_pending: int = 5000,
        clock: Clock | None = None,
    ) -> None:
        self.repo = MaintenanceRepository(db, lock_timeout_ms=200)
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.clock: Clock = clock or SystemClock()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()

    def record(self, block_ids: Iterable[str]) -> None:
        """Note a read of `block_ids`; flushes when the buffer is old or full."""
        with self._lock:
            self._pending.update(block_ids)
            due = (
                len(self._pending) >= self.max_pending
                or time.monotonic() - self._last_flush >= self.flush_s
            )
        if due:
            self.flush()

    def flush(self) -> int:
        """Write the buffered reads now; returns how many rows changed."""
        with self._lock:
            ids, self._pending = sorted(self._pending), set()
            self._last_flush = time.monotonic()
        if not ids:
            return 0
        with self.repo.transaction() as tx:
            # one row per block per hour is enough resolution for a 90-day threshold
            return tx.record_access(ids, self.clock.now(), resolution_s=3600)
