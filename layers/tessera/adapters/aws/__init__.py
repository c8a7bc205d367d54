"""The AWS adapters of Tessera's ports (DESIGN §2): S3, KMS + SSM, DynamoDB, EventBridge,
Cognito, Aurora. Configured by one `AwsSettings` read from the environment."""

from tessera.adapters.aws.changes import (
    ChangeRecordBase,
    DeadlineFeed,
    DynamoChangeFeed,
    changes_model,
    create_changes_table,
    gateway_deadline,
    stream_image_to_event,
)
from tessera.adapters.aws.clients import AwsClients
from tessera.adapters.aws.database import (
    app_credentials,
    conninfo_from_secret,
    db_conninfo,
    iam_conninfo,
    secret_conninfo,
)
from tessera.adapters.aws.events import EventBridgePublisher
from tessera.adapters.aws.identity import (
    CognitoIdentity,
    CognitoUsers,
    principal_from_claims,
)
from tessera.adapters.aws.keys import (
    KmsKeyService,
    create_key_version,
    ensure_key_version,
    list_key_versions,
)
from tessera.adapters.aws.s3 import ColdObjectError, S3BlockStore
from tessera.adapters.aws.settings import AwsSettings, SettingsError
from tessera.ports import ChangeConflictError, ChangeRefusedError  # DynamoChangeFeed raises

__all__ = [
    "AwsClients",
    "AwsSettings",
    "ChangeConflictError",
    "ChangeRecordBase",
    "ChangeRefusedError",
    "CognitoIdentity",
    "CognitoUsers",
    "ColdObjectError",
    "DeadlineFeed",
    "DynamoChangeFeed",
    "EventBridgePublisher",
    "KmsKeyService",
    "S3BlockStore",
    "SettingsError",
    "app_credentials",
    "changes_model",
    "conninfo_from_secret",
    "create_changes_table",
    "create_key_version",
    "db_conninfo",
    "ensure_key_version",
    "gateway_deadline",
    "iam_conninfo",
    "list_key_versions",
    "principal_from_claims",
    "secret_conninfo",
    "stream_image_to_event",
]
