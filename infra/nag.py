"""cdk-nag 3 acknowledgements: one helper so every acknowledgement carries its reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge the cdk-nag finding `rule` (e.g. `AwsSolutions-IAM5[Resource::*]`) on
    `scope` and everything below it, for `reason` (which must say why it is acceptable)."""
    if len(reason) < 20:
        raise ValueError(f"acknowledgement of {rule} needs a specific reason, got {reason!r}")
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))
