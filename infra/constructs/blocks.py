"""The blocks bucket (the key layout is `tessera.domain.object_keys`) and its access logs."""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.config import StageConfig
from infra.nag import acknowledge
from tessera.domain.object_keys import NONCURRENT_RETENTION_DAYS


def blocks_bucket_name(config: StageConfig) -> str:
    """The bucket's name: fixed per stage, account and region, so the app stack can scope IAM
    statements to it (and cdk-nag findings name it) without a cross-stack export."""
    return f"{config.prefix}-blocks-{Aws.ACCOUNT_ID}-{Aws.REGION}"


def blocks_objects_arn(config: StageConfig, prefix: str) -> str:
    """ARN of the objects under `prefix` (e.g. `staging/`) in the blocks bucket."""
    return f"arn:{Aws.PARTITION}:s3:::{blocks_bucket_name(config)}/{prefix}*"


class BlocksBucket(Construct):
    """Private, TLS-only, SSE-KMS bucket with lifecycle rules and CORS for presigned URLs."""

    def __init__(self, scope: Construct, id: str, *, config: StageConfig, key: kms.IKey) -> None:
        super().__init__(scope, id)
        # User data: kept when the stack goes, in every stage (empty it by hand to drop it).
        removal = RemovalPolicy.RETAIN
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            # Server access logging can only write to SSE-S3 buckets, not SSE-KMS.
            encryption=s3.BucketEncryption.S3_MANAGED,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(id="expire-logs", expiration=Duration.days(365))],
            removal_policy=removal,
        )
        acknowledge(
            self.access_logs,
            "AwsSolutions-S1",
            "this is the server access log target bucket; logging it into itself would loop",
        )
        self.bucket = s3.Bucket(
            self,
            "Blocks",
            bucket_name=blocks_bucket_name(config),
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=key,
            bucket_key_enabled=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            # A safety net under gc: an object it deletes (or that anything overwrites) stays
            # a noncurrent version for a while, recoverable by hand (docs/deploy.md).
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="blocks-bucket/",
            lifecycle_rules=[
                # No age-based rule on `staging/` or `blocks/`: S3 counts an object's age, not
                # when it was last read or whether a version still needs it. A staged copy is a
                # committed version's only bytes until dedup promotes it, and a canonical block
                # archived behind the database's back reads as damaged (a live block is never
                # restored). gc deletes abandoned copies and the cold-storage workflow tiers
                # unread blocks, both from the database's state (docs/maintenance.md).
                s3.LifecycleRule(
                    id="abort-incomplete-multipart",
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                ),
                # How long a deleted or replaced object is kept: a canonical block long
                # enough for a gc bug to surface (a download's 503, scrub's sample); every
                # other key a day, for every upload's staged copy is deleted once promoted,
                # and kept for weeks it would double what new data costs.
                *(
                    s3.LifecycleRule(
                        id=f"noncurrent-{prefix.rstrip('/')}",
                        prefix=prefix,
                        noncurrent_version_expiration=Duration.days(days),
                    )
                    for prefix, days in NONCURRENT_RETENTION_DAYS.items()
                ),
                s3.LifecycleRule(id="expired-delete-markers", expired_object_delete_marker=True),
            ],
            # Clients PUT and GET blocks straight to S3 with presigned URLs; a browser client
            # needs CORS, and the checksum header must be allowed and the ETag readable.
            cors=[
                s3.CorsRule(
                    allowed_methods=[s3.HttpMethods.PUT, s3.HttpMethods.GET, s3.HttpMethods.HEAD],
                    allowed_origins=["*"],
                    allowed_headers=["*"],
                    exposed_headers=["ETag", "x-amz-checksum-sha256", "x-amz-request-id"],
                    max_age=3600,
                )
            ],
            removal_policy=removal,
        )
        # Restore completions reach the cold-storage function by way of EventBridge
        # (`RestoreEvents`). Set on the CloudFormation resource: the `event_bridge_enabled`
        # prop deploys a custom-resource Lambda to call PutBucketNotificationConfiguration
        # instead, a function of its own to run, patch and allow past cdk-nag.
        cfn_bucket = self.bucket.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        cfn_bucket.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
            event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(
                event_bridge_enabled=True
            )
        )
