"""The AWS mode of the local cloud: `tessera local up --backend aws [--aws-endpoint URL]`.

The same gateway as the local mode, but every API request is dispatched to the Lambda
handlers in `functions/` as an API Gateway REST proxy event (claims after verifying the
Cognito JWT against the pool's JWKS), and every AWS adapter talks to moto: a server started
in this process (`MotoCloud`) or the one at `--aws-endpoint`. PostgreSQL is as in the local
mode. What AWS runs on its own is emulated with the real handlers and real event shapes:
`Emulator` runs the outbox relay on a schedule (EventBridge Scheduler) and feeds the changes
table's stream records to the change router (the EventBridge Pipe).

`provision()` creates what the CDK app creates on AWS: the bucket, the `changes` table with
its stream, a KMS key and the first block-key version in SSM, the event bus, and a Cognito
user pool with an app client allowing password and refresh-token sign-in.

moto keeps its state in memory: with an in-process moto server every start begins empty
(blocks, users), so the AWS-mode database is reset too. Point `--aws-endpoint` at a
long-running `moto_server` to keep state across restarts.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import tessera
from tessera.adapters.aws import (
    AwsClients,
    AwsSettings,
    CognitoIdentity,
    CognitoUsers,
    changes_model,
    create_changes_table,
    create_key_version,
    list_key_versions,
)
from tessera.api.routes import is_longpoll
from tessera.local.demo import ensure_demo_user
from tessera.local.lifecycle import ServedCloud, Stoppable
from tessera.local.throttle import RequestThrottle
from tessera.settings import Settings

log = logging.getLogger(__name__)


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


class MotoCloud(Stoppable):
    """A moto server on 127.0.0.1 (an ephemeral port unless `port` is given)."""

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        use_fake_credentials()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
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


def provision(
    endpoint_url: str | None,
    *,
    database_url: str = "",
    region: str = "us-east-1",
    name: str = "tessera",
) -> AwsSettings:
    """Create (or find) every resource of deployment `name` at `endpoint_url`; its settings.

    Idempotent, so `tessera local up --backend aws --aws-endpoint URL` can be restarted
    against a long-running moto server. moto servers in one process share their state:
    deployments that must not see each other's changes need distinct names.
    """
    if not name or name.lower().startswith(("aws", "ssm")):
        raise ValueError(f"deployment name {name!r}: empty, or an SSM-reserved aws/ssm prefix")
    use_fake_credentials()
    base = AwsSettings(
        region=region,
        endpoint_url=endpoint_url,
        bucket=f"{name}-blocks",
        changes_table=f"{name}-changes",
        key_param_prefix=f"/{name}/block-keys",
        event_bus=name,
        database_url=database_url,
    )
    aws = AwsClients(base)
    if base.bucket not in {b["Name"] for b in aws.s3.list_buckets().get("Buckets", [])}:
        aws.s3.create_bucket(Bucket=base.bucket)
        # versioned, as deployed (infra/constructs/blocks.py): every AWS test then runs the
        # S3 adapter over delete markers and noncurrent versions
        aws.s3.put_bucket_versioning(
            Bucket=base.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
    create_changes_table(changes_model(base.changes_table, region=region, host=endpoint_url))
    if base.event_bus not in {b["Name"] for b in aws.events.list_event_buses()["EventBuses"]}:
        aws.events.create_event_bus(Name=base.event_bus)

    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in aws.kms.list_aliases()["Aliases"]}
    alias = f"alias/{name}-blocks"
    key_id = aliases.get(alias)
    if not key_id:
        key_id = aws.kms.create_key(Description="Tessera block-key master key")["KeyMetadata"][
            "KeyId"
        ]
        aws.kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    if not list_key_versions(aws.ssm, base.key_param_prefix):
        create_key_version(aws.kms, aws.ssm, key_id, base.key_param_prefix)

    pools = aws.cognito.list_user_pools(MaxResults=60)["UserPools"]
    pool_id = next((p["Id"] for p in pools if p["Name"] == name), None)
    if pool_id is None:
        pool_id = aws.cognito.create_user_pool(
            PoolName=name,
            UsernameAttributes=["email"],
            AutoVerifiedAttributes=["email"],
            # Passphrases, as the local mode accepts them (length is what matters).
            Policies={
                "PasswordPolicy": {
                    "MinimumLength": 8,
                    "RequireUppercase": False,
                    "RequireLowercase": False,
                    "RequireNumbers": False,
                    "RequireSymbols": False,
                }
            },
        )["UserPool"]["Id"]
    clients = aws.cognito.list_user_pool_clients(UserPoolId=pool_id, MaxResults=60)
    client_id = next(
        (c["ClientId"] for c in clients["UserPoolClients"] if c["ClientName"] == name),
        None,
    )
    if client_id is None:
        client_id = aws.cognito.create_user_pool_client(
            UserPoolId=pool_id,
            ClientName=name,
            ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        )["UserPoolClient"]["ClientId"]
    return replace(base, kms_key_id=key_id, user_pool_id=pool_id, user_pool_client_id=client_id)


# ---------------------------------------------------------------------------------------
# The Lambda functions, loaded as Lambda loads them


def load_function(name: str) -> ModuleType:
    """Import `functions/<name>/handler.py` afresh: a cold start, reading its settings from
    the environment as it is now (set it first)."""
    root = Path(tessera.__file__).resolve().parents[2]  # layers/tessera/__init__.py
    if (root / "functions").is_dir() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = f"functions.{name}.handler"
    sys.modules.pop(module, None)
    return importlib.import_module(module)


FUNCTIONS = ("api", "longpoll", "outbox_relay", "change_router")


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """The process environment with `env` set, for the block; restored afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_functions(env: dict[str, str]) -> dict[str, ModuleType]:
    """Cold-start every function with `env` as its Lambda environment; the process
    environment is restored afterwards (the handlers keep what they read at import)."""
    with environment(env):
        return {name: load_function(name) for name in FUNCTIONS}


Handler = Callable[[Any, Any], Any]


class LambdaDispatcher:
    """The gateway's resolver in AWS mode: API Gateway's routing to the two functions."""

    def __init__(self, api: Handler, longpoll: Handler) -> None:
        self._api = api
        self._longpoll = longpoll

    def resolve(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """Invoke the function API Gateway would route `event` to."""
        handler = self._longpoll if is_longpoll(str(event.get("path", ""))) else self._api
        result: dict[str, Any] = handler(event, context)
        return result


# ---------------------------------------------------------------------------------------
# Schedules, stream and pipe


def _context() -> Any:
    from tessera.local.gateway import LambdaContext

    return LambdaContext(aws_request_id=str(uuid.uuid4()))


def _jsonable_record(record: dict[str, Any]) -> dict[str, Any]:
    """A stream record as Lambda receives it (JSON: timestamps as epoch seconds)."""
    ddb = dict(record["dynamodb"])
    created = ddb.get("ApproximateCreationDateTime")
    if created is not None and hasattr(created, "timestamp"):
        ddb["ApproximateCreationDateTime"] = created.timestamp()
    return {**record, "dynamodb": ddb}


#: Seconds between the emulator's listings of the change stream's shards.
SHARD_LISTING_S = 10.0

#: Deliveries of a shard's failed stream records before they are given up, as the deployed
#: pipe's `maximum_retry_attempts` (infra/constructs/events.py) then sends them to its DLQ.
PIPE_MAX_ATTEMPTS = 10


#: Seconds between outbox sweeps: the deployed schedule's rate (infra/constructs/workflows.py,
#: every minute). The sweep delivers every event the fast path left to it, a second of CPU
#: per 1,000 commits; on AWS that runs in another Lambda, but here it shares this machine
#: with the client, so a sweep every few seconds charged a sync for work AWS does elsewhere.
RELAY_EVERY_S = 60.0


class Emulator:
    """Runs what AWS runs by itself: the relay's schedule and the stream → router pipe."""

    def __init__(
        self,
        settings: AwsSettings,
        outbox_relay: Handler,
        change_router: Handler,
        *,
        relay_every: float = RELAY_EVERY_S,
        poll_every: float = 0.5,
    ) -> None:
        clients = AwsClients(settings)
        self._ddb = clients.client("dynamodb")
        self._streams = clients.client("dynamodbstreams")
        self._table = settings.changes_table
        self._relay = outbox_relay
        self._router = change_router
        self._relay_every = relay_every
        self._poll_every = poll_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aws-emulator", daemon=True)
        self._iterators: dict[str, str] = {}
        self._finished: set[str] = set()  # closed shards read to their end
        # shard -> (records the router has not taken yet, deliveries made): as on AWS, a
        # shard moves on only once they are in or given up
        self._retrying: dict[str, tuple[list[dict[str, Any]], int]] = {}
        self._shards_listed = float("-inf")  # monotonic time of the last shard listing

    def start(self) -> None:
        """Start the background thread (stream read from its current end)."""
        self._open_shards("LATEST")
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _open_shards(self, position: str) -> None:
        self._shards_listed = time.monotonic()
        arn = self._ddb.describe_table(TableName=self._table)["Table"]["LatestStreamArn"]
        shards = self._streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
        for shard in shards:
            if shard["ShardId"] not in self._iterators.keys() | self._finished:
                self._iterators[shard["ShardId"]] = self._streams.get_shard_iterator(
                    StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType=position
                )["ShardIterator"]

    def relay_once(self) -> dict[str, Any]:
        """One scheduled sweep (EventBridge Scheduler's invocation)."""
        event = {"source": "aws.scheduler", "detail-type": "Scheduled Event", "detail": {}}
        result: dict[str, Any] = self._relay(event, _context())
        return result

    def pump_once(self) -> int:
        """Feed new stream records to the router (the Pipe); how many records it got."""
        # Shards created since start are read whole. They come rarely, and listing them
        # is two more requests to moto, whose every request costs a few ms of its CPU:
        # at each 0.5 s pump, that was most of what AWS mode asked of moto while idle.
        if not self._iterators or time.monotonic() - self._shards_listed >= SHARD_LISTING_S:
            self._open_shards("TRIM_HORIZON")
        delivered = 0
        for shard in [*self._iterators, *(s for s in self._retrying if s not in self._iterators)]:
            records, attempts = self._retrying.pop(shard, ([], 0))
            if not records:
                records, attempts = self._read(shard), 0
            if not records:
                continue
            left = self._deliver(records)
            delivered += len(records) - len(left)
            if not left:
                continue
            if attempts + 1 < PIPE_MAX_ATTEMPTS:
                self._retrying[shard] = (left, attempts + 1)
            else:
                log.error("change router gave up on %d stream records of %s", len(left), shard)
        return delivered

    def _read(self, shard: str) -> list[dict[str, Any]]:
        """The next page of an open shard's records (none from a finished one)."""
        iterator = self._iterators.get(shard)
        if iterator is None:
            return []
        page = self._streams.get_records(ShardIterator=iterator, Limit=100)
        if page.get("NextShardIterator"):
            self._iterators[shard] = page["NextShardIterator"]
        else:  # a closed shard, read to its end
            del self._iterators[shard]
            self._finished.add(shard)
        return [_jsonable_record(r) for r in page.get("Records", [])]

    def _deliver(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Hand `records` to the router; those it did not take, to be delivered again: all
        of them when it raised, else from the first it reported failed on, as a pipe with
        ReportBatchItemFailures retries (the records before it are in). As on AWS, the pipe
        hands over a bare list and names records by eventID."""
        try:
            resp = self._router(records, _context())
        except Exception:
            log.warning("change router failed on %d stream records", len(records), exc_info=True)
            return records
        failed = {f.get("itemIdentifier") for f in resp.get("batchItemFailures") or []}
        for n, record in enumerate(records):
            if record.get("eventID") in failed:
                log.warning("change router failed from stream record %d of %d", n, len(records))
                return records[n:]
        return []

    def _run(self) -> None:
        next_relay = time.monotonic() + self._relay_every
        while not self._stop.wait(self._poll_every):
            try:
                self.pump_once()
                if time.monotonic() >= next_relay:
                    next_relay = time.monotonic() + self._relay_every
                    self.relay_once()
            except Exception:  # keep emulating: AWS would retry too
                log.warning("AWS-mode emulation step failed", exc_info=True)


# ---------------------------------------------------------------------------------------
# The cloud


def _deployment_file(state_root: Path) -> Path:
    return state_root / "aws" / "deployment.json"


class AwsLocalCloud(ServedCloud):
    """The local cloud on the AWS code path: gateway → Lambda handlers → moto + PostgreSQL."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        aws_endpoint: str | None = None,
        database_url: str | None = None,
        settings: Settings | None = None,
        demo: bool = False,
        relay_every: float = RELAY_EVERY_S,
        deployment: str = "tessera",
    ) -> None:
        from tessera.local.cloud import StatePaths

        self.root = Path(state_dir).expanduser().resolve()
        self.state = StatePaths(self.root / "aws")
        self.host, self.port = host, port
        self.aws_endpoint = aws_endpoint
        self.settings = settings or Settings()
        self.database_url = database_url or self.settings.database_url or None
        self.demo = demo
        self.relay_every = relay_every
        self.deployment = deployment  # names its AWS resources (see `provision`)
        self.base_url = ""
        self.aws: AwsSettings | None = None
        self.demo_login: tuple[str, str] | None = None
        self.functions: dict[str, ModuleType] = {}
        self._moto: MotoCloud | None = None
        self._embedded: Any = None
        self._server: Any = None
        self._app: Any = None
        self.emulator: Emulator | None = None

    def prepare(self) -> str:
        """Start moto (unless given), PostgreSQL, provision, cold-start the functions and
        wire the gateway; returns the base URL. Nothing is served yet."""
        from tessera.local.cloud import open_database
        from tessera.local.gateway import Gateway, create_app
        from tessera.local.postgres import ensure_database
        from tessera.local.server import Server
        from tessera.metadata import migrate

        self.state.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            endpoint = self.aws_endpoint
            if endpoint is None:
                self._moto = MotoCloud()
                endpoint = self._moto.start()
            _deployment_file(self.root).write_text(
                json.dumps({"endpoint": endpoint, "name": self.deployment}) + "\n"
            )
            conninfo, self._embedded = open_database(self.state, self.database_url)
            if self._embedded is not None:
                # an in-process moto starts empty: metadata pointing at its blocks must too
                conninfo = ensure_database(conninfo, "tessera_aws", reset=self._moto is not None)
            migrate(conninfo)
            self.aws = provision(endpoint, database_url=conninfo, name=self.deployment)
            # Powertools reads this when it flushes: no EMF metric lines on a laptop.
            os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
            warnings.filterwarnings("ignore", message="No application metrics to publish")
            env = {**self.aws.to_env(), **_settings_env(self.settings)}
            self.functions = load_functions(env)
            identity = CognitoIdentity(
                region=self.aws.region,
                pool_id=self.aws.user_pool_id,
                client_id=self.aws.user_pool_client_id,
                endpoint_url=endpoint,
            )
            users = CognitoUsers(
                AwsClients(self.aws).cognito, self.aws.user_pool_id, self.aws.user_pool_client_id
            )
            gateway = Gateway(
                identity=identity,
                token_endpoint=users,
                resolver=LambdaDispatcher(
                    self.functions["api"].handler, self.functions["longpoll"].handler
                ),
                throttle=RequestThrottle.from_settings(self.settings),
                sign_in_throttle=RequestThrottle.for_sign_ins(),
            )
            self._server = Server(self.host, self.port)
            self.base_url = self._server.base_url
            self._app = create_app(gateway)
            self.emulator = Emulator(
                self.aws,
                self.functions["outbox_relay"].handler,
                self.functions["change_router"].handler,
                relay_every=self.relay_every,
            )
            if self.demo:
                self.demo_login = ensure_demo_user(self.state.demo_credentials, users.create_user)
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _start_workers(self) -> None:
        assert self.emulator is not None
        self.emulator.start()

    def stop(self) -> None:
        """Stop serving, the emulator, the functions' pools, PostgreSQL and moto."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None
        for name in ("api", "longpoll"):
            module = self.functions.get(name)
            if module is not None:
                module.services.db.close()
        if "outbox_relay" in self.functions:
            self.functions["outbox_relay"].db.close()
        self.functions = {}
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None


def _settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes the functions' `Settings.from_env()` equal `settings`."""
    env: dict[str, str] = {}
    for f in fields(settings):
        if f.name == "database_url":
            continue
        value = getattr(settings, f.name)
        env[f"TESSERA_{f.name.upper()}"] = str(int(value) if isinstance(value, bool) else value)
    return env


def add_user(
    state_dir: str | os.PathLike[str], email: str, password: str, endpoint: str | None = None
) -> str:
    """`tessera local adduser --backend aws`: create the user in the (moto) Cognito pool of
    the running AWS-mode cloud (found through its state dir); the user's sub."""
    from tessera.domain.errors import Unavailable

    path = _deployment_file(Path(state_dir).expanduser().resolve())
    if path.exists():
        deployment = json.loads(path.read_text())
    elif endpoint is not None:
        deployment = {"endpoint": endpoint, "name": "tessera"}
    else:
        raise Unavailable("no AWS-mode cloud found: run `tessera local up --backend aws`")
    settings = provision(endpoint or deployment["endpoint"], name=deployment["name"])
    users = CognitoUsers(
        AwsClients(settings).cognito, settings.user_pool_id, settings.user_pool_client_id
    )
    return users.create_user(email, password)
