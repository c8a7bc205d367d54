"""What a maintenance step did: one result dataclass per workflow, summed across batches."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Self

#: Errors a result reports, the first ones then a count of the rest: a step's answer is kept
#: in Step Functions' state (at most 256 KB) and the run log, and a run that met thousands
#: of damaged blocks would fail on its own report.
MAX_REPORTED_ERRORS = 50


@dataclass
class StepResult:
    """Counters of a run; `more` says a step stopped at its batch limit with work left."""

    more: bool = False
    errors: list[str] = field(default_factory=list)

    def add(self, other: Self) -> Self:
        """Sum `other`'s counters into this result (in place) and return it."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, bool):
                setattr(self, f.name, theirs)  # `more` is the latest batch's verdict
            elif isinstance(mine, int):
                setattr(self, f.name, mine + theirs)
            elif isinstance(mine, list):
                mine.extend(theirs)
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what the Lambda functions return), with at most
        `MAX_REPORTED_ERRORS` errors and a line counting those left out."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if len(self.errors) > MAX_REPORTED_ERRORS:
            left_out = len(self.errors) - MAX_REPORTED_ERRORS
            out["errors"] = [*self.errors[:MAX_REPORTED_ERRORS], f"... and {left_out} more"]
        return out

    def counters(self) -> dict[str, int]:
        """The integer counters only, in declaration order (for tables and logs)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), int)
            and not isinstance(getattr(self, f.name), bool)
        }


@dataclass
class DedupResult(StepResult):
    """dedup-verify: staged copies verified and what became of them."""

    verified: int = 0  # staged copies decoded successfully
    promoted: int = 0  # became the canonical `blocks/<hex>` copy
    dropped: int = 0  # duplicates of an existing canonical copy, deleted
    quarantined: int = 0  # failed verification: never promoted, never served
    versions_damaged: int = 0  # versions marked damaged by a quarantine
    bytes_freed: int = 0  # stored bytes of dropped copies
    canonical_replaced: int = 0  # live canonical objects that were not the block, replaced


@dataclass
class GcResult(StepResult):
    """gc: what was purged, expired and deleted."""

    trash_files_purged: int = 0
    versions_purged: int = 0
    sessions_expired: int = 0
    staged_deleted: int = 0  # staged copies of expired sessions, deleted
    settled_deleted: int = 0  # objects of promoted/dropped copies, deleted after the grace
    quarantine_deleted: int = 0  # objects of quarantined copies, deleted after the retention
    landings_deleted: int = 0  # landing objects of killed dedup/scrub runs, deleted
    blocks_deleted: int = 0
    blocks_skipped: int = 0  # candidates found referenced again at the re-check
    interrupted_deleted: int = 0  # objects an interrupted run left behind, deleted
    idempotency_keys_expired: int = 0  # keys (and their stored responses) past the retention
    run_records_expired: int = 0  # records of maintenance step runs past the retention
    usage_corrected: int = 0  # namespaces whose `bytes_used` had drifted, set right
    bytes_freed: int = 0


@dataclass
class ColdResult(StepResult):
    """cold-storage: blocks moved to the cold tier and restores seen through."""

    blocks_moved: int = 0
    bytes_moved: int = 0
    restores_started: int = 0  # restores (re-)issued for blocks waiting on one
    restores_completed: int = 0
    lost: int = 0  # restoring, but no object: quarantined, its versions' owners told
    repaired: int = 0  # no object: undeleted, or rewritten from a verified duplicate


@dataclass
class ScrubResult(StepResult):
    """scrub: the blocks inventoried, the sample re-verified, the damage found and repaired."""

    inventoried: int = 0  # blocks the inventory compared with the store's listing
    checked: int = 0  # blocks of the sample, or reported by clients, read and decoded
    ok: int = 0  # sampled blocks, or suspects re-checked, found intact
    damaged: int = 0  # missing, wrong size, failed decryption or re-hash
    repaired: int = 0  # undeleted, or rewritten from a verified duplicate or earlier version
    unrepaired: int = 0  # none: block quarantined, owners told
    found_cold: int = 0  # live row over a cold object: recorded cold, restored on read
    put_off: int = 0  # reported blocks whose check failed (not a verdict): tried again later
