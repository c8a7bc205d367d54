"""What a sync round reports, and where the engine reports it (kept free of heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass, field


class SyncError(Exception):
    """A problem that stops syncing (with what to do about it)."""


@dataclass
class RoundResult:
    """What one round did and what went wrong."""

    ops: int = 0
    problems: list[str] = field(default_factory=list)
    unstable: int = 0
    paused_deletes: int = 0
    retry_after: float = 0.0
    disk_full: bool = False
    skipped: int = 0  # what the scan left out and reported (symlinks, unreadable, names)

    @property
    def quiescent(self) -> bool:
        """Nothing was left to do this round."""
        return self.ops == 0 and self.unstable == 0 and self.retry_after == 0.0


class Reporter:
    """Where the engine says what it does (the CLI renders it; tests keep it quiet)."""

    def event(self, message: str) -> None:
        """Something happened (a file went up, came down, was deleted...)."""

    def problem(self, message: str) -> None:
        """Something went wrong or needs attention."""

    def transfer(self, path: str, done: int, total: int) -> None:
        """Progress of a large transfer."""
