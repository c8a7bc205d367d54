"""What every maintenance step runs over: the metadata, the ports and the settings."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import TypeVar

from tessera.metadata import Database
from tessera.metadata.maintenance import LockTimeout, MaintenanceRepository
from tessera.parallel import parallel_map
from tessera.ports import BlockStore, ChangeFeed, Clock, KeyService, SystemClock
from tessera.settings import Settings

from .results import StepResult
from .settings import MaintenanceSettings
from .verify import KeyUnavailableError

log = logging.getLogger("tessera.maintenance")

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S", bound=StepResult)


@dataclass
class MaintenanceContext:
    """The ports a step uses; built once per process (Lambda cold start, scheduler, CLI)."""

    repo: MaintenanceRepository
    store: BlockStore
    keys: KeyService
    feed: ChangeFeed | None
    settings: MaintenanceSettings = field(default_factory=MaintenanceSettings)
    clock: Clock = field(default_factory=SystemClock)
    # Set by whoever runs the steps and is shutting down (the local scheduler): a step ends
    # after the batch in progress, as when its time budget is spent, and reports `more`.
    stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def build(
        cls,
        *,
        db: Database,
        store: BlockStore,
        keys: KeyService,
        feed: ChangeFeed | None,
        settings: Settings | None = None,
        clock: Clock | None = None,
    ) -> MaintenanceContext:
        """A context over the given ports; `settings` widened with the maintenance defaults."""
        return cls(
            repo=MaintenanceRepository(db),
            store=store,
            keys=keys,
            feed=feed,
            settings=MaintenanceSettings.from_settings(settings or MaintenanceSettings()),
            clock=clock or SystemClock(),
        )

    def batches(self) -> Iterator[int]:
        """Batch numbers for one step invocation: at most `max_batches_per_step`, and none
        once `step_budget_s` has passed or `stopping` is set (the caller then reports
        `more`)."""
        deadline = self.deadline()
        for n in range(self.settings.max_batches_per_step):
            if self.stopping.is_set() or (n and time.monotonic() >= deadline):
                return
            yield n

    def deadline(self) -> float:
        """When a step begun now is to stop (monotonic): `step_budget_s` from now."""
        return time.monotonic() + self.settings.step_budget_s

    def run_batches(self, batch: Callable[[], int], result: S) -> S:
        """Run `batch` until it does nothing (returns 0) or the step's budget (`batches`)
        is spent; then `result` says `more`."""
        for _ in self.batches():
            if batch() == 0:
                return result
        result.more = True
        return result

    def attempt(self, what: str, step: Callable[[], object], result: StepResult) -> bool:
        """Run one block's `step`, or leave it for the next run, in `result.errors`, when what
        it needs cannot be had now: a lock a commit or a download holds past the repository's
        lock timeout, or the key of the version the metadata records for it (the key service
        failing: no verdict on the block). Either had failed the whole invocation, and with
        it every other block of the batch. Whether it ran: a caller that records progress
        past the block must not when it did not. (The step's transaction is rolled back,
        and so are the counters it had moved.)"""
        counted = {f.name: getattr(result, f.name) for f in fields(result)}
        try:
            step()
            return True
        except LockTimeout:
            log.info("maintenance: %s is busy; left for the next run", what)
            left = f"{what}: busy (a lock held too long); left for the next run"
        except KeyUnavailableError as e:
            log.warning("maintenance: %s: %s", what, e)
            left = f"{what}: {e}"
        for name, value in counted.items():
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(result, name, value)
        result.errors.append(left)
        return False

    def parallel(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`fn` over `items` on `io_workers` threads (block-store I/O), results in order."""
        return parallel_map(fn, items, self.settings.io_workers)
