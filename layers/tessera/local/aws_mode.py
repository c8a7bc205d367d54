"""The AWS mode of the local cloud: the real AWS adapters and Lambda handlers on moto.

`MotoCloud` starts a moto server in-process (or uses a given endpoint) and `provision()`
creates what the CDK app creates on AWS: the bucket, the `changes` table with its stream,
a KMS key and the first block-key version in SSM, the event bus, and a Cognito user pool
with an app client allowing password and refresh-token sign-in. The result is the
`AwsSettings` every function reads from its environment.
"""

from __future__ import annotations

import os
from dataclasses import replace
from types import TracebackType

from tessera.adapters.aws import (
    AwsClients,
    AwsSettings,
    changes_model,
    create_changes_table,
    create_key_version,
    list_key_versions,
)

# moto accepts any credentials, boto3 and PynamoDB insist on having some.
_FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "tessera-local",
    "AWS_SECRET_ACCESS_KEY": "tessera-local",
    "AWS_SESSION_TOKEN": "tessera-local",
}


def use_fake_credentials() -> None:
    """Give boto3/PynamoDB credentials for moto unless some are configured already."""
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        os.environ.update(_FAKE_CREDENTIALS)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


class MotoCloud:
    """A moto server on 127.0.0.1 (an ephemeral port unless `port` is given)."""

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        use_fake_credentials()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.endpoint_url = ""

    def start(self) -> str:
        """Start the server; its endpoint URL."""
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self.endpoint_url

    def stop(self) -> None:
        """Stop the server (its state is lost: moto keeps it in memory)."""
        self._server.stop()

    def __enter__(self) -> MotoCloud:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def provision(
    endpoint_url: str | None, *, database_url: str = "", region: str = "us-east-1"
) -> AwsSettings:
    """Create (or find) every resource of one deployment at `endpoint_url`; its settings.

    Idempotent, so `tessera local up --backend aws --aws-endpoint URL` can be restarted
    against a long-running moto server.
    """
    use_fake_credentials()
    base = AwsSettings(
        region=region,
        endpoint_url=endpoint_url,
        bucket="tessera-blocks",
        changes_table="tessera-changes",
        key_param_prefix="/tessera/block-keys",
        event_bus="tessera",
        database_url=database_url,
    )
    aws = AwsClients(base)
    if base.bucket not in {b["Name"] for b in aws.s3.list_buckets().get("Buckets", [])}:
        aws.s3.create_bucket(Bucket=base.bucket)
    create_changes_table(changes_model(base.changes_table, region=region, host=endpoint_url))
    if base.event_bus not in {b["Name"] for b in aws.events.list_event_buses()["EventBuses"]}:
        aws.events.create_event_bus(Name=base.event_bus)

    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in aws.kms.list_aliases()["Aliases"]}
    key_id = aliases.get("alias/tessera-blocks")
    if not key_id:
        key_id = aws.kms.create_key(Description="Tessera block-key master key")["KeyMetadata"][
            "KeyId"
        ]
        aws.kms.create_alias(AliasName="alias/tessera-blocks", TargetKeyId=key_id)
    if not list_key_versions(aws.ssm, base.key_param_prefix):
        create_key_version(aws.kms, aws.ssm, key_id, base.key_param_prefix)

    pools = aws.cognito.list_user_pools(MaxResults=60)["UserPools"]
    pool_id = next((p["Id"] for p in pools if p["Name"] == "tessera"), None)
    if pool_id is None:
        pool_id = aws.cognito.create_user_pool(
            PoolName="tessera",
            UsernameAttributes=["email"],
            AutoVerifiedAttributes=["email"],
        )["UserPool"]["Id"]
    clients = aws.cognito.list_user_pool_clients(UserPoolId=pool_id, MaxResults=60)
    client_id = next(
        (c["ClientId"] for c in clients["UserPoolClients"] if c["ClientName"] == "tessera"),
        None,
    )
    if client_id is None:
        client_id = aws.cognito.create_user_pool_client(
            UserPoolId=pool_id,
            ClientName="tessera",
            ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        )["UserPoolClient"]["ClientId"]
    return replace(base, kms_key_id=key_id, user_pool_id=pool_id, user_pool_client_id=client_id)
