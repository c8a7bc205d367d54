"""The sync client's end-to-end suite, run once more against `tessera local up --backend aws`:
the same tests (imported from tests/e2e), with `inproc_cloud` being the AWS mode — gateway
→ Lambda handlers → moto (Cognito, S3, DynamoDB) + PostgreSQL — and real client
subprocesses that log in through Cognito and move blocks straight to moto's S3."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tessera.local.aws_mode import AwsLocalCloud, add_user
from tessera.local.postgres import ensure_database
from tests.e2e.conftest import PASSWORD, Cloud, devices
from tests.e2e.test_client_sync import (
    test_conflict_from_two_devices_keeps_both,
    test_create_edit_rename_delete_undelete_across_devices,
    test_shared_folder_viewer_cannot_change_it,
)

pytestmark = [pytest.mark.e2e, pytest.mark.aws]

__all__ = [
    "devices",
    "test_conflict_from_two_devices_keeps_both",
    "test_create_edit_rename_delete_undelete_across_devices",
    "test_shared_folder_viewer_cannot_change_it",
]


@pytest.fixture(scope="module")
def inproc_cloud(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Cloud]:
    """The AWS mode of the local cloud, in this process, on a fresh database."""
    name = f"awse2e_{uuid.uuid4().hex[:8]}"
    root = tmp_path_factory.mktemp("awscloud")
    cloud = AwsLocalCloud(
        root / "state",
        port=0,
        database_url=ensure_database(postgres_url, name),
        deployment=f"t-{name[-8:]}",  # in-process moto servers share their state
    )
    url = cloud.start()
    try:
        yield Cloud(url, lambda email: add_user(cloud.root, email, PASSWORD), root)
    finally:
        cloud.stop()
