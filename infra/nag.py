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


def function_arn_ref(function: IConstruct) -> str:
    """How cdk-nag spells the ARN of a Lambda function defined in the same stack
    (`<LogicalId.Arn>`), for findings about `<arn>:*` (its versions and aliases)."""
    from aws_cdk import CfnElement, Stack

    cfn = function.node.default_child
    assert isinstance(cfn, CfnElement)
    stack = Stack.of(function)
    return f"<{stack.resolve(stack.get_logical_id(cfn))}.Arn>"


def acknowledge_invoke_versions(scope: IConstruct, function: IConstruct, who: str) -> None:
    """Acknowledge `lambda:InvokeFunction` on `<function>:*`, which CDK grants with every
    invoke permission so that qualified ARNs (versions, aliases) work too."""
    acknowledge(
        scope,
        f"AwsSolutions-IAM5[Resource::{function_arn_ref(function)}:*]",
        f"{who} may invoke only this one function, including its versions and aliases "
        "(the :* suffix); CDK adds it to every Lambda invoke grant",
    )
