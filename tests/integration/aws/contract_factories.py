"""The AWS adapters' factories for the port contract suites (`tests/integration/contracts`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tessera.adapters.aws import (
    AwsClients,
    ColdObjectError,
    DynamoChangeFeed,
    KmsKeyService,
    S3BlockStore,
    changes_model,
    create_changes_table,
    create_key_version,
)
from tessera.ports import KeyService

from ..contracts.harnesses import BlockStoreHarness, ChangeFeedHarness, KeyServiceHarness
from .moto_env import shared_aws_settings

_MOTO = "moto does not verify presigned SigV4 {}; S3 enforces it (verified on real AWS only)"


@contextmanager
def s3_block_store(request: pytest.FixtureRequest, tmp: Path) -> Iterator[BlockStoreHarness]:
    """S3BlockStore on moto; signature, expiry and checksum checks are real-AWS only."""
    request.applymarker(pytest.mark.aws)
    settings = shared_aws_settings()
    clients = AwsClients(settings)
    yield BlockStoreHarness(
        store=S3BlockStore(clients.s3, settings.bucket, credentials=clients.credentials),
        not_restored_error=ColdObjectError,
        unsupported={
            "presign_wrong_checksum": _MOTO.format("x-amz-checksum-sha256 checksums"),
            "presign_wrong_size": _MOTO.format("signed content-length"),
            "presign_signature": _MOTO.format("signatures"),
            "presign_expiry": _MOTO.format("expiry"),
        },
    )


@contextmanager
def dynamodb_change_feed(request: pytest.FixtureRequest, tmp: Path) -> Iterator[ChangeFeedHarness]:
    """DynamoChangeFeed on a fresh moto table."""
    request.applymarker(pytest.mark.aws)
    settings = shared_aws_settings()
    model = changes_model(
        f"changes-{uuid.uuid4().hex[:8]}", region=settings.region, host=settings.endpoint_url
    )
    create_changes_table(model)
    try:
        yield ChangeFeedHarness(feed=DynamoChangeFeed(model))
    finally:
        model.delete_table()


@contextmanager
def kms_key_service(request: pytest.FixtureRequest, tmp: Path) -> Iterator[KeyServiceHarness]:
    """KmsKeyService on moto KMS + SSM, under a fresh parameter prefix with one version."""
    request.applymarker(pytest.mark.aws)
    settings = shared_aws_settings()
    aws = AwsClients(settings)
    prefix = f"/tessera/contract-{uuid.uuid4().hex[:8]}"

    def rotate() -> int:
        return create_key_version(aws.kms, aws.ssm, settings.kms_key_id, prefix)

    def open_service() -> KeyService:
        return KmsKeyService(aws.kms, aws.ssm, prefix)

    rotate()
    yield KeyServiceHarness(open=open_service, rotate=rotate)
