"""AWS clients for one `AwsSettings`, created once and reused across invocations.

botocore clients, made by a botocore session: boto3's own layer (resources, the S3
transfer manager) is never used here, and importing it cost every cold start about
0.03-0.04 s. The clients are the same objects boto3 would return.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import botocore.session
from botocore.config import Config
from botocore.exceptions import DataNotFoundError
from botocore.loaders import Loader, create_loader
from botocore.utils import parse_timestamp

from tessera.adapters.aws.settings import AwsSettings

if TYPE_CHECKING:
    from botocore.credentials import ReadOnlyCredentials
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient


class _Lazy:
    """Stands for a boto3 client and creates it on first attribute access (thread-safe)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._client: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make()
        return getattr(self._client, name)


T = TypeVar("T")


def fast_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser, with ISO 8601 (what S3's XML carries) parsed natively.

    botocore parses every timestamp with dateutil, about 90 µs each: most of the CPU of
    reading a 1,000-key ListObjectsV2 page, which a commit does to find its staged blocks.
    `datetime.fromisoformat` takes well under a microsecond. Anything else (RFC 822 dates,
    epoch seconds) goes to botocore's parser as before.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    return parse_timestamp(value)


def lazy(make: Callable[[], T]) -> T:
    """A stand-in for `make()` that calls it on first use.

    Creating a boto3 client loads its service model (tens of ms of CPU each); a Lambda
    cold start should pay only for the clients its first requests use.
    """
    return cast(T, _Lazy(make))


class _KnownServices:
    """What `Loader.list_available_services(type_name)` answers, looked up name by name.

    botocore asks it only to check the name a client is created for, but answers by walking
    the folder of every service it ships (about 400; 20 ms here, once for each of the three
    model types a client loads). A name is checked in its own folder instead; the whole
    list is walked only when someone iterates it (botocore's error message for an unknown
    service does).
    """

    def __init__(self, loader: Loader, type_name: str) -> None:
        self._loader = loader
        self._type_name = type_name

    def __contains__(self, service: object) -> bool:
        if not isinstance(service, str):
            return False
        try:
            return bool(self._loader.list_api_versions(service, self._type_name))
        except DataNotFoundError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(Loader.list_available_services(self._loader, self._type_name))


def _session() -> botocore.session.Session:
    """A botocore session whose data loader checks service names cheaply (`_KnownServices`)
    and whose parsers read timestamps fast (`fast_timestamp`)."""
    session = botocore.session.get_session()
    loader = create_loader(session.get_config_variable("data_path"))
    loader.list_available_services = functools.partial(_KnownServices, loader)  # type: ignore[method-assign,assignment]
    session.register_component("data_loader", loader)
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=fast_timestamp
    )
    return session


class AwsClients:
    """Lazily created, cached clients, all pointed at `settings.endpoint_url` if set.

    Clients are thread-safe; creating one costs tens of milliseconds, so a Lambda creates
    each at most once per cold start and only when a code path needs it.
    """

    def __init__(self, settings: AwsSettings) -> None:
        self.settings = settings
        self._session = _session()
        self._session_lock = threading.Lock()  # a session is not safe to share when creating

    def credentials(self) -> ReadOnlyCredentials | None:
        """The clients' current credentials (refreshed when they expire), None if none."""
        creds = self._session.get_credentials()
        return creds.get_frozen_credentials() if creds is not None else None

    @functools.cache  # noqa: B019 - one AwsClients per process; the cache is the point
    def client(self, service: str) -> Any:
        """The client of `service` (e.g. "s3")."""
        config = Config(
            retries={"mode": "standard", "max_attempts": 4},
            # SigV4 everywhere: presigned S3 URLs must bind headers (checksum, length).
            signature_version="s3v4" if service == "s3" else None,
            # A custom endpoint (moto) has no virtual-host DNS for buckets. On AWS the style
            # is named: left to botocore ("auto"), presigned URLs went to the global host
            # `<bucket>.s3.amazonaws.com`, which a region opened since 2019 does not serve,
            # and which answers a bucket's first day with a 307 its signature cannot follow
            s3={"addressing_style": "path" if self.settings.endpoint_url else "virtual"},
            # threads share a client: `io_workers` (16) block-store calls at once, and the
            # presigning ones beside them, each kept its connection (botocore's 10 had
            # dropped and reopened them)
            max_pool_connections=32,
        )
        return self.create_client(
            service,
            region_name=self.settings.region,
            endpoint_url=self.settings.endpoint_url,
            config=config,
        )

    def create_client(self, service: str, region_name: str | None = None, **kwargs: Any) -> Any:
        """`botocore.session.Session.create_client` on the shared session, one at a time:
        for a library that makes its own clients from a session it is handed (PynamoDB)."""
        with self._session_lock:
            return self._session.create_client(service, region_name, **kwargs)

    @property
    def s3(self) -> S3Client:
        """The S3 client."""
        return self.client("s3")  # type: ignore[no-any-return]

    @property
    def kms(self) -> KMSClient:
        """The KMS client."""
        return self.client("kms")  # type: ignore[no-any-return]

    @property
    def ssm(self) -> SSMClient:
        """The SSM client (Parameter Store)."""
        return self.client("ssm")  # type: ignore[no-any-return]

    @property
    def events(self) -> EventBridgeClient:
        """The EventBridge client."""
        return self.client("events")  # type: ignore[no-any-return]

    @property
    def rds(self) -> Any:
        """The RDS client (IAM auth tokens are signed locally: no network call)."""
        return self.client("rds")

    @property
    def secretsmanager(self) -> Any:
        """The Secrets Manager client (the migrate function reads the cluster secret)."""
        return self.client("secretsmanager")

    @property
    def cognito(self) -> CognitoIdentityProviderClient:
        """The Cognito user pools client."""
        return self.client("cognito-idp")  # type: ignore[no-any-return]
