"""`TesseraFunction`: one Lambda function from `functions/<name>/`, with its own least-privilege
role, log group, Powertools settings and X-Ray tracing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.config import StageConfig, retention
from infra.constructs.layer import ARCHITECTURE, RUNTIME
from infra.nag import acknowledge

METRICS_NAMESPACE = "Tessera"


class MissingFunctionError(FileNotFoundError):
    """A function's folder or its `handler.py` is not there (not written yet)."""


@dataclass(frozen=True)
class FunctionSpec:
    """What differs between the functions."""

    name: str  # the folder under functions/
    description: str
    timeout: Duration = field(default_factory=lambda: Duration.seconds(30))
    memory_mb: int = 512
    in_vpc: bool = True
    reserved_concurrency: int = 0  # 0 = unreserved
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """Where VPC functions run: the VPC's isolated subnets and the functions' security group."""

    vpc: ec2.IVpc
    security_group: ec2.ISecurityGroup


class TesseraFunction(Construct):
    """`function` (its `role` is private to it; grant to `function` to widen it)."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StageConfig,
        spec: FunctionSpec,
        layer: lambda_.ILayerVersion,
        placement: Placement,
    ) -> None:
        super().__init__(scope, id)
        folder = config.functions_root / spec.name
        if not (folder / "handler.py").is_file():
            raise MissingFunctionError(
                f"Lambda function {spec.name!r}: {folder / 'handler.py'} does not exist "
                f"(functions/{spec.name}/handler.py with handler(event, context) is expected)"
            )
        self.log_group = logs.LogGroup(
            self, "Logs", retention=retention(config), removal_policy=RemovalPolicy.DESTROY
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Tessera {config.stage} {spec.name} function",
        )
        # Logs: only this function's own log group (instead of AWSLambdaBasicExecutionRole).
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[self.log_group.log_group_arn],
            )
        )
        vpc_props: dict[str, object] = {}
        if spec.in_vpc:
            vpc_props = {
                "vpc": placement.vpc,
                "vpc_subnets": ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
                "security_groups": [placement.security_group],
            }
            # Instead of AWSLambdaVPCAccessExecutionRole. These EC2 actions have no
            # resource-level permissions, hence "*" (allow-listed in the IAM test).
            self.role.add_to_policy(
                iam.PolicyStatement(
                    actions=[
                        "ec2:CreateNetworkInterface",
                        "ec2:DescribeNetworkInterfaces",
                        "ec2:DescribeSubnets",
                        "ec2:DeleteNetworkInterface",
                        "ec2:AssignPrivateIpAddresses",
                        "ec2:UnassignPrivateIpAddresses",
                    ],
                    resources=["*"],
                )
            )
        self.function = lambda_.Function(
            self,
            "Function",
            description=f"Tessera {config.stage}: {spec.description}",
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler="handler.handler",
            code=lambda_.Code.from_asset(
                str(folder), exclude=["__pycache__", "*.pyc", "tests", ".mypy_cache"]
            ),
            layers=[layer],
            role=self.role,
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE,
            timeout=spec.timeout,
            memory_size=spec.memory_mb,
            reserved_concurrent_executions=spec.reserved_concurrency or None,
            environment={
                "TESSERA_STAGE": config.stage,
                "POWERTOOLS_SERVICE_NAME": f"tessera-{spec.name.replace('_', '-')}",
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": "INFO",
                "LOG_LEVEL": "INFO",
                # Responses carry block keys and presigned URLs: never copy them into traces.
                "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
                **spec.environment,
            },
            **vpc_props,  # type: ignore[arg-type]
        )
        acknowledge(
            self.function,
            "AwsSolutions-L1",
            f"runtime pinned to {RUNTIME.name}: the layer's wheels are built for exactly this "
            "interpreter (layer.PYTHON_VERSION); both move together in one change",
        )
        if spec.in_vpc:
            acknowledge(
                self.role,
                "AwsSolutions-IAM5[Resource::*]",
                "ENI management for VPC Lambda (ec2:CreateNetworkInterface & co.) and X-Ray "
                "PutTraceSegments support no resource-level permissions",
            )
        else:
            acknowledge(
                self.role,
                "AwsSolutions-IAM5[Resource::*]",
                "X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions",
            )
