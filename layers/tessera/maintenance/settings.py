"""Maintenance knobs: the server `Settings` plus the retention, grace and batch settings.

`MaintenanceSettings` extends `tessera.settings.Settings`, so it reads the same environment
(`TESSERA_<FIELD>`), once, via `MaintenanceSettings.from_env()`; `from_settings` widens a
`Settings` the process already holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from tessera.settings import Settings


@dataclass(frozen=True)
class MaintenanceSettings(Settings):
    """Retention, thresholds, batch sizes and local schedule of the maintenance workflows."""

    # gc (trash_retention_days comes from Settings: 30)
    version_retention_days: int = 30  # a superseded version is kept this long; latest always
    gc_grace_hours: int = 24  # a block at refcount 0 waits this long before deletion
    upload_grace_hours: int = 1  # an upload session is expired this long after expires_at
    # a promoted/dropped staged copy's object is kept this long: presigned GETs issued for it
    # before dedup settled it stay valid for presign_ttl_s (900 s), and must keep working
    settled_copy_grace_s: int = 1200
    # a staged copy that failed verification is kept (quarantine/...) this long, for
    # inspection, before gc deletes its object; its row stays, so its versions stay damaged
    quarantine_retention_days: int = 30
    # a request's idempotency key, with the response a retry gets, is kept this long: far
    # longer than a client retries (minutes), or resumes a commit (its upload session lives
    # upload_ttl_s)
    idempotency_retention_days: int = 7
    # the record of what each maintenance step run did (`maintenance_runs`) is kept this long
    run_history_days: int = 30
    # cold storage
    cold_after_days: int = 90  # blocks unread this long move to the cold tier
    # scrub
    scrub_sample: int = 200  # live blocks re-verified per scrub run
    # batches: each transaction stays short so no lock blocks a commit for long
    batch_size: int = 500
    lock_budget_ms: int = 50  # a gc delete batch stops taking blocks after this long
    max_batches_per_step: int = 50  # one Lambda invocation's worth; the state machine loops
    step_budget_s: float = 600.0  # ... or this long (Lambda stops at 15 min), whichever first
    # local in-process scheduler intervals (seconds; 0 disables a workflow)
    dedup_interval_s: float = 10.0
    gc_interval_s: float = 3600.0
    cold_interval_s: float = 3600.0
    scrub_interval_s: float = 86400.0
    reported_interval_s: float = 10.0  # scrub's `reported` step alone (AWS: the scrub queue)

    def __post_init__(self) -> None:
        if self.idempotency_retention_days * 86_400 <= self.upload_ttl_s:
            raise ValueError(
                f"idempotency_retention_days ({self.idempotency_retention_days}) must be"
                f" longer than upload_ttl_s ({self.upload_ttl_s} s): a client resuming a"
                " commit would find its key gone and commit again"
            )
        if self.settled_copy_grace_s <= self.presign_ttl_s:
            raise ValueError(
                f"settled_copy_grace_s ({self.settled_copy_grace_s}) must be longer than"
                f" presign_ttl_s ({self.presign_ttl_s}): URLs issued for a staged copy would 404"
            )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> MaintenanceSettings:
        """`settings` widened with the maintenance defaults (or `overrides`)."""
        if isinstance(settings, MaintenanceSettings) and not overrides:
            return settings
        values = asdict(settings)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def widen(
        cls, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> MaintenanceSettings:
        """`settings` plus the maintenance fields read from `environ` (default: os.environ)."""
        if isinstance(settings, MaintenanceSettings):
            return settings
        from_env = cls.from_env(environ)
        base = {f.name for f in fields(Settings)}
        extra = {f.name: getattr(from_env, f.name) for f in fields(cls) if f.name not in base}
        return cls.from_settings(settings, **extra)
