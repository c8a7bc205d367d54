"""Aurora PostgreSQL Serverless v2 behind an RDS Proxy with IAM authentication."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra.config import StageConfig, retention
from infra.nag import acknowledge

DB_NAME = "tessera"
# The master user: the migrate function only (it owns the schema).
DB_USER = "tessera"
# The runtime role (`tessera.metadata.roles`: rows, never the schema). The proxy maps IAM
# identities to its password (its own secret), so the functions connect as it with an IAM
# token and never see a password.
APP_DB_USER = "tessera_app"
# Not the default 5432 (AwsSolutions-RDS11); the proxy still listens on 5432.
CLUSTER_PORT = 5433
PROXY_PORT = 5432


class Database(Construct):
    """The metadata database: encrypted, backed up, private, reached through the proxy."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StageConfig,
        vpc: ec2.IVpc,
        key: kms.IKey,
        clients: ec2.ISecurityGroup,
    ) -> None:
        super().__init__(scope, id)
        readers = [
            rds.ClusterInstance.serverless_v2(f"Reader{i}", scale_with_writer=True)
            for i in range(config.db_readers)
        ]
        identifier = f"{config.prefix}-db"
        # The exported PostgreSQL log group, made here so it has a retention (otherwise CDK
        # adds a log-retention Lambda); the cluster exports into it by name.
        log_group = logs.LogGroup(
            self,
            "PostgresLogs",
            log_group_name=f"/aws/rds/cluster/{identifier}/postgresql",
            retention=retention(config),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.cluster = rds.DatabaseCluster(
            self,
            "Cluster",
            cluster_identifier=identifier,
            engine=rds.DatabaseClusterEngine.aurora_postgres(
                version=rds.AuroraPostgresEngineVersion.VER_17_5
            ),
            credentials=rds.Credentials.from_generated_secret(DB_USER, encryption_key=key),
            default_database_name=DB_NAME,
            port=CLUSTER_PORT,
            writer=rds.ClusterInstance.serverless_v2("Writer"),
            readers=readers,
            serverless_v2_min_capacity=config.db_min_acu,
            serverless_v2_max_capacity=config.db_max_acu,
            serverless_v2_auto_pause_duration=Duration.minutes(10)
            if config.db_min_acu == 0
            else None,
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            storage_encrypted=True,
            storage_encryption_key=key,
            iam_authentication=True,
            backup=rds.BackupProps(
                retention=Duration.days(config.backup_retention_days),
                preferred_window="03:00-04:00",
            ),
            deletion_protection=config.is_prod,
            removal_policy=RemovalPolicy.RETAIN if config.is_prod else RemovalPolicy.SNAPSHOT,
            cloudwatch_logs_exports=["postgresql"],
            copy_tags_to_snapshot=True,
        )
        self.cluster.node.add_dependency(log_group)
        assert self.cluster.secret is not None  # from_generated_secret always makes one
        self.secret = self.cluster.secret
        # The rotation function runs in the functions' security group: the interface
        # endpoints (Secrets Manager) only admit that group, and it already reaches the cluster.
        isolated = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        self.cluster.add_rotation_single_user(
            automatically_after=Duration.days(30), security_group=clients, vpc_subnets=isolated
        )
        # The runtime role's password: the migrate function creates the role with it, and
        # its rotation (single user: the role changes its own password) keeps the role's
        # name, which the functions' IAM grants and environment name. Not rotated when the
        # schedule is made: that is this stack's deploy, before the app stack's migrate
        # function has made the role to log in as.
        self.app_secret = rds.DatabaseSecret(
            self, "AppSecret", username=APP_DB_USER, encryption_key=key
        ).attach(self.cluster)
        secretsmanager.SecretRotation(
            self,
            "AppSecretRotation",
            application=secretsmanager.SecretRotationApplication.POSTGRES_ROTATION_SINGLE_USER,
            secret=self.app_secret,
            target=self.cluster,
            vpc=vpc,
            vpc_subnets=isolated,
            security_group=clients,
            automatically_after=Duration.days(30),
            rotate_immediately_on_update=False,
        )
        self.proxy = self.cluster.add_proxy(
            "Proxy",
            # a name per stage: by default CDK names it "Proxy", and proxy names are unique
            # per account and region (a second stage, or app, would fail to create its own)
            db_proxy_name=f"{config.prefix}-proxy",
            secrets=[self.secret, self.app_secret],
            vpc=vpc,
            iam_auth=True,
            require_tls=True,
            debug_logging=False,
            idle_client_timeout=Duration.minutes(30),
        )
        # Functions reach the proxy; the proxy and the migration function reach the cluster.
        self.proxy.connections.allow_from(clients, ec2.Port.tcp(PROXY_PORT), "functions to proxy")
        self.cluster.connections.allow_default_port_from(clients, "migrations to cluster")
        if not config.is_prod:
            acknowledge(
                self.cluster,
                "AwsSolutions-RDS10",
                "dev stage only: deletion protection off so a dev stack can be torn down; "
                "removal policy SNAPSHOT still keeps a final snapshot. Prod turns it on.",
            )
