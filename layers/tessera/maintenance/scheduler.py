"""The local in-process scheduler: runs each workflow every `<name>_interval_s` seconds,
and a step with a `setting` of its own on its own every that many seconds (on AWS a queue
triggers it: the laptop has no bus).

`tessera local up` calls `start(services)` with its wired `Services` and calls the returned
function on shutdown. One daemon thread runs the workflows one at a time (they are safe to
overlap, but one laptop does not need that); a failing run is logged and retried at its
next interval. Intervals come from `MaintenanceSettings` (`TESSERA_DEDUP_INTERVAL_S=10`
etc.; 0 disables a workflow).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .context import MaintenanceContext, log
from .results import StepResult
from .runner import run_step, run_workflow
from .settings import MaintenanceSettings
from .workflows import WORKFLOWS, is_retryable

FIRST_RUN_DELAY_S = 5.0


class MaintenanceScheduler:
    """Runs jobs on fixed intervals in a background thread: a job is a workflow's name, or
    `<workflow>.<step>` for one step alone."""

    def __init__(self, ctx: MaintenanceContext, intervals: Mapping[str, float]) -> None:
        self.ctx = ctx
        self.intervals = {name: s for name, s in intervals.items() if s > 0}
        self.runs: dict[str, int] = dict.fromkeys(self.intervals, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_context(cls, ctx: MaintenanceContext) -> MaintenanceScheduler:
        """A scheduler with the intervals of `ctx.settings`."""
        intervals: dict[str, float] = {}
        for name, wf in WORKFLOWS.items():
            intervals[name] = float(getattr(ctx.settings, wf.setting))
            for step in wf.steps:
                if step.setting is not None:
                    intervals[f"{name}.{step.name}"] = float(getattr(ctx.settings, step.setting))
        return cls(ctx, intervals)

    def start(self, first_run_delay: float = FIRST_RUN_DELAY_S) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is not None:
            return
        self.ctx.stopping.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(first_run_delay,), name="tessera-maintenance", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the batch in progress (if any): the run it belongs to ends there, so
        the caller can close the pool under no running step."""
        self.ctx.stopping.set()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self, first_run_delay: float) -> None:
        due = {
            name: time.monotonic() + min(first_run_delay, interval)
            for name, interval in self.intervals.items()
        }
        while due and not self._stop.is_set():
            name = min(due, key=due.__getitem__)
            if self._stop.wait(max(0.0, due[name] - time.monotonic())):
                return
            try:
                result = self._run(name)
                log.info("scheduled %s: %s", name, result.counters())
            except Exception as e:  # keep the scheduler alive; the next run retries
                if is_retryable(e):  # (a lock or a deadlock lost to a commit: no bug)
                    log.warning("scheduled %s: %s; retried at its next run", name, e)
                else:
                    log.exception("scheduled maintenance run %s failed", name)
            self.runs[name] += 1
            due[name] = time.monotonic() + self.intervals[name]

    def _run(self, job: str) -> StepResult:
        """Run a workflow, or one step of it until it has nothing left (or stopping)."""
        name, _, step = job.partition(".")
        if not step:
            return run_workflow(self.ctx, name)
        while True:
            result = run_step(self.ctx, name, step)
            if not result.more or self.ctx.stopping.is_set():
                return result


def start(services: Any) -> Callable[[], None]:
    """Start the scheduler over the local cloud's `Services`; returns its stop function."""
    ctx = MaintenanceContext.build(
        db=services.db,
        store=services.block_store,
        keys=services.keys,
        feed=services.feed,
        settings=MaintenanceSettings.widen(services.settings),
        clock=services.clock,
    )
    scheduler = MaintenanceScheduler.from_context(ctx)
    scheduler.start()
    return scheduler.stop
