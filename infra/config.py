"""Stage settings read once from CDK context (`-c stage=prod`, `-c bundle=false`, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from constructs import Node

REPO_ROOT = Path(__file__).resolve().parent.parent

# Every setting a stage can change, with the dev and prod defaults. Any of them can be
# overridden one by one with `-c name=value` (see docs/deploy.md).
_STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "dev": {
        "db_min_acu": 0.0,  # Aurora auto-pause: an idle dev database costs storage only
        "db_max_acu": 2.0,
        "db_readers": 0,
        "endpoint_azs": 1,  # interface endpoints in one AZ: ~$7.3/month each instead of x2
        "log_retention": "TWO_WEEKS",
        "api_rate_limit": 50,
        "api_burst_limit": 100,
        "auth_rate_limit": 5,  # POST /v1/auth/token and /revoke: unauthenticated, throttled hard
        "auth_burst_limit": 10,
        "api_reserved_concurrency": 0,  # 0 = unreserved (an account's default 1000 pool)
        "longpoll_reserved_concurrency": 0,
        "api_provisioned_concurrency": 0,
        "backup_retention_days": 7,
    },
    "prod": {
        "db_min_acu": 0.5,
        "db_max_acu": 16.0,
        "db_readers": 1,
        "endpoint_azs": 2,
        "log_retention": "THREE_MONTHS",
        "api_rate_limit": 500,
        "api_burst_limit": 1000,
        "auth_rate_limit": 25,
        "auth_burst_limit": 50,
        "api_reserved_concurrency": 200,
        "longpoll_reserved_concurrency": 300,
        "api_provisioned_concurrency": 2,
        "backup_retention_days": 30,
    },
}


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class StageConfig:
    """The settings of one deployment stage."""

    stage: str
    bundle: bool
    functions_root: Path
    layers_root: Path
    bytecode_python: str  # a Python 3.12 to compile the layer's bytecode ("" = python3.12)
    db_min_acu: float
    db_max_acu: float
    db_readers: int
    endpoint_azs: int
    log_retention: str
    api_rate_limit: int
    api_burst_limit: int
    auth_rate_limit: int
    auth_burst_limit: int
    api_reserved_concurrency: int
    longpoll_reserved_concurrency: int
    api_provisioned_concurrency: int
    backup_retention_days: int

    @property
    def is_prod(self) -> bool:
        """Prod keeps data on stack deletion and turns on deletion protection."""
        return self.stage == "prod"

    @property
    def prefix(self) -> str:
        """Name prefix of stage-scoped resources (SSM paths, bus names)."""
        return f"tessera-{self.stage}"

    @classmethod
    def from_context(cls, node: Node) -> StageConfig:
        """Read the stage and its overrides from the app's CDK context."""
        stage = str(node.try_get_context("stage") or "dev")
        if stage not in _STAGE_DEFAULTS:
            raise ValueError(f"unknown stage {stage!r}: use one of {sorted(_STAGE_DEFAULTS)}")
        values: dict[str, Any] = {}
        for name, default in _STAGE_DEFAULTS[stage].items():
            raw = node.try_get_context(name)
            values[name] = default if raw is None else type(default)(raw)
        bundle = node.try_get_context("bundle")
        functions_root = node.try_get_context("functions_root")
        layers_root = node.try_get_context("layers_root")
        bytecode_python = node.try_get_context("bytecode_python")
        return cls(
            stage=stage,
            bundle=True if bundle is None else _as_bool(bundle),
            functions_root=Path(functions_root or REPO_ROOT / "functions").resolve(),
            layers_root=Path(layers_root or REPO_ROOT / "layers").resolve(),
            bytecode_python=str(bytecode_python or ""),
            **values,
        )


def retention(config: StageConfig) -> Any:
    """The stage's CloudWatch Logs retention as an `aws_logs.RetentionDays`."""
    from aws_cdk import aws_logs

    return aws_logs.RetentionDays[config.log_retention]
