"""Wiring of the Lambda functions: settings → AWS adapters → `Services`, once per cold start.

Each function's handler module calls one of these at import, outside the handler, so a
warm invocation reuses the pool, the boto3 clients and the decrypted key secrets. boto3
clients are created on first use, so a function pays only for the services it calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from tessera.adapters.aws.changes import DynamoChangeFeed, changes_model
from tessera.adapters.aws.clients import AwsClients, lazy
from tessera.adapters.aws.database import db_conninfo
from tessera.adapters.aws.errors import is_transient
from tessera.adapters.aws.events import EventBridgePublisher
from tessera.adapters.aws.identity import CognitoUsers
from tessera.adapters.aws.keys import KmsKeyService
from tessera.adapters.aws.s3 import S3BlockStore
from tessera.adapters.aws.settings import AwsSettings
from tessera.domain.services import Services
from tessera.metadata import Database
from tessera.ports import ChangeFeed
from tessera.settings import Settings

# What the functions' X-Ray tracers patch (`Tracer(patch_modules=TRACED_MODULES)`): botocore,
# so every AWS call (S3, KMS, SSM, DynamoDB via PynamoDB, EventBridge) is a subsegment. The
# Powertools default patches every library the X-Ray SDK knows, importing requests, httpx,
# sqlite3, ... on each cold start (~0.1 s of CPU) for calls these functions never make.
TRACED_MODULES = ("botocore",)


@dataclass
class AwsRuntime:
    """Settings and clients of one process; builds adapters on demand."""

    aws: AwsSettings
    settings: Settings = field(default_factory=Settings)
    clients: AwsClients | None = None

    def __post_init__(self) -> None:
        if self.clients is None:
            self.clients = AwsClients(self.aws)

    @classmethod
    def from_env(cls) -> AwsRuntime:
        """Both settings objects from the process environment (read once)."""
        return cls(aws=AwsSettings.from_env(), settings=Settings.from_env())

    @property
    def _clients(self) -> AwsClients:
        assert self.clients is not None  # set by __post_init__
        return self.clients

    def change_feed(self) -> DynamoChangeFeed:
        """The DynamoDB change feed on the `changes` table."""
        model = changes_model(
            self.aws.changes_table,
            region=self.aws.region,
            host=self.aws.endpoint_url,
            session=self._clients,
        )
        return DynamoChangeFeed(model, ttl=timedelta(days=self.aws.changes_ttl_days))

    def block_store(self) -> S3BlockStore:
        """The S3 block store."""
        self.aws.require("bucket")
        return S3BlockStore(
            lazy(lambda: self._clients.s3), self.aws.bucket, credentials=self._clients.credentials
        )

    def key_service(self) -> KmsKeyService:
        """The KMS/SSM key service."""
        clients = self._clients
        return KmsKeyService(
            lazy(lambda: clients.kms), lazy(lambda: clients.ssm), self.aws.key_param_prefix
        )

    def event_publisher(self) -> EventBridgePublisher:
        """The EventBridge publisher for the `tessera` bus."""
        return EventBridgePublisher(self._clients.events, self.aws.event_bus, self.aws.event_source)

    def users(self) -> CognitoUsers:
        """The Cognito pool and app client that sign users in (`POST /v1/auth/token`)."""
        self.aws.require("user_pool_id")
        self.aws.require("user_pool_client_id")
        clients = self._clients
        return CognitoUsers(
            lazy(lambda: clients.cognito), self.aws.user_pool_id, self.aws.user_pool_client_id
        )

    def database(self, *, lazy: bool = False) -> Database:
        """The metadata pool (RDS IAM auth tokens when configured); `lazy` opens no
        connection until one is needed (the long-poll function rarely needs one)."""
        conninfo = db_conninfo(self.aws, self._clients.rds if self.aws.db_iam_auth else None)
        return Database(
            conninfo,
            min_size=0 if lazy else self.settings.pool_min_size,
            max_size=self.settings.pool_max_size,
            notify=False,  # the change feed is DynamoDB: no one listens (`Store`)
        )

    def services(self, *, lazy_db: bool = False, feed: ChangeFeed | None = None) -> Services:
        """Every port on its AWS adapter (the change feed: `feed`, when given), in the
        domain's `Services` container."""
        return Services(
            db=self.database(lazy=lazy_db),
            block_store=self.block_store(),
            keys=self.key_service(),
            feed=feed or self.change_feed(),
            settings=self.settings,
            is_transient=is_transient,
        )
