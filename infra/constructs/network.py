"""The VPC: isolated private subnets only, VPC endpoints instead of a NAT gateway."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.config import StageConfig

# Services the functions inside the VPC call. Gateway endpoints (S3, DynamoDB) are free.
# Not here, on purpose: X-Ray and CloudWatch Logs (Lambda ships both from outside the
# function's network), STS (RDS IAM tokens are signed locally), Step Functions (nothing in
# the VPC calls it: the Scheduler starts the state machines, which invoke Lambda), and
# EventBridge (only `change_router` puts events, and it runs outside the VPC).
INTERFACE_ENDPOINTS: dict[str, ec2.InterfaceVpcEndpointAwsService] = {
    "Kms": ec2.InterfaceVpcEndpointAwsService.KMS,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
}


class Network(Construct):
    """Two-AZ VPC with isolated subnets, flow logs, and the endpoints the functions need."""

    def __init__(self, scope: Construct, id: str, *, config: StageConfig) -> None:
        super().__init__(scope, id)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=22
                )
            ],
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
                "DynamoDb": ec2.GatewayVpcEndpointOptions(
                    service=ec2.GatewayVpcEndpointAwsService.DYNAMODB
                ),
            },
        )
        flow_logs = logs.LogGroup(
            self,
            "FlowLogs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        # The security group every function in the VPC runs in. It lives here, next to the
        # database's, so the ingress rule between them stays inside one stack.
        self.functions_sg = ec2.SecurityGroup(
            self,
            "FunctionsSg",
            vpc=self.vpc,
            description="Tessera Lambda functions",
            allow_all_outbound=True,
        )
        selected = self.vpc.select_subnets(
            subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, one_per_az=True
        ).subnets[: config.endpoint_azs]
        for name, service in INTERFACE_ENDPOINTS.items():
            endpoint = self.vpc.add_interface_endpoint(
                name,
                service=service,
                private_dns_enabled=True,
                subnets=ec2.SubnetSelection(subnets=selected),
                open=False,  # HTTPS from the functions only, not from the whole VPC
            )
            endpoint.connections.allow_default_port_from(self.functions_sg)
