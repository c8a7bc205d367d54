"""One moto server per test session, shared by the AWS tests and the contract suites."""

from __future__ import annotations

import atexit
import functools

from tessera.adapters.aws import AwsSettings
from tessera.local.aws_mode import MotoCloud, provision


@functools.cache
def shared_aws_settings() -> AwsSettings:
    """Start moto in this process (once) and provision a deployment on it (no database)."""
    cloud = MotoCloud()
    cloud.start()
    atexit.register(cloud.stop)
    return provision(cloud.endpoint_url)
