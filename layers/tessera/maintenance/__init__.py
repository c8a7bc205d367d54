"""Maintenance workflows (DESIGN §7): dedup-verify, gc, cold storage, scrub.

Each workflow is a list of steps (`workflows.WORKFLOWS`); each step is a function over a
`MaintenanceContext` (metadata, block store, keys, change feed, settings, clock) that does
one bounded batch of work and returns a result dataclass. The local scheduler, `tessera
admin run` and the Lambda functions all go through `runner`.
"""

from tessera.domain.object_keys import canonical_key

from .context import MaintenanceContext
from .results import ColdResult, DedupResult, GcResult, ScrubResult, StepResult
from .runner import handle_event, parse_as_of, run_step, run_workflow
from .settings import MaintenanceSettings
from .workflows import WORKFLOWS, state_machine_definition

__all__ = [
    "WORKFLOWS",
    "ColdResult",
    "DedupResult",
    "GcResult",
    "MaintenanceContext",
    "MaintenanceSettings",
    "ScrubResult",
    "StepResult",
    "canonical_key",
    "handle_event",
    "parse_as_of",
    "run_step",
    "run_workflow",
    "state_machine_definition",
]
