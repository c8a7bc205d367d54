"""The two stacks: `Data` (stateful: network, keys, database, bucket, changes table, user pool)
and `App` (stateless: functions, API, event plumbing, workflows, observability).

Splitting there lets the app stack be destroyed and redeployed freely while the data stays;
every security group rule and key policy lives in the data stack, so references only point
from app to data (no cross-stack cycles).
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Aws, CfnOutput, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as lambda_event_sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import StageConfig
from infra.constructs.api import Api
from infra.constructs.blocks import BlocksBucket, blocks_bucket_name, blocks_objects_arn
from infra.constructs.changes import ChangesTable
from infra.constructs.database import APP_DB_USER, CLUSTER_PORT, DB_NAME, PROXY_PORT, Database
from infra.constructs.events import EVENT_SOURCE, ChangeStream, RestoreEvents
from infra.constructs.function import FunctionSpec, Placement, TesseraFunction
from infra.constructs.identity import Identity
from infra.constructs.keys import Keys, grant_via_dynamodb
from infra.constructs.layer import TesseraLayer
from infra.constructs.messaging import Messaging
from infra.constructs.migrations import Migrations
from infra.constructs.network import Network
from infra.constructs.observability import Observability
from infra.constructs.workflows import Workflows
from infra.nag import acknowledge
from tessera.domain.object_keys import (
    CANONICAL_PREFIX,
    LANDING_PREFIX,
    QUARANTINE_PREFIX,
    STAGING_PREFIX,
)
from tessera.maintenance.workflows import WORKFLOWS

# Long-poll waits at most this long (API Gateway's integration timeout is 29 s).
LONGPOLL_MAX_S = 25
#: what `tessera.adapters.aws.changes.DynamoChangeFeed` calls when it publishes
CHANGES_WRITER_ACTIONS = (
    "dynamodb:PutItem",
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:BatchWriteItem",
)
MAINTENANCE_TIMEOUT = Duration.minutes(15)


class DataStack(Stack):
    """Everything that holds data or guards it."""

    def __init__(self, scope: Construct, id: str, *, config: StageConfig, **kwargs: object) -> None:
        super().__init__(scope, id, **kwargs)  # type: ignore[arg-type]
        self.config = config
        self.network = Network(self, "Network", config=config)
        self.keys = Keys(self, "Keys", config=config)
        self.database = Database(
            self,
            "Database",
            config=config,
            vpc=self.network.vpc,
            key=self.keys.database,
            clients=self.network.functions_sg,
        )
        self.blocks = BlocksBucket(self, "Blocks", config=config, key=self.keys.blocks)
        self.changes = ChangesTable(self, "Changes", config=config, key=self.keys.database)
        # Users are their Cognito `sub`s: a new pool would give every user a new id, cut off
        # from their files (their email row already belongs to the old one).
        self.identity = Identity(self, "Identity", config=config)
        CfnOutput(self, "UserPoolId", value=self.identity.user_pool.user_pool_id)
        CfnOutput(self, "UserPoolClientId", value=self.identity.client.user_pool_client_id)

    @property
    def key_param_prefix(self) -> str:
        """SSM path under which the block-key secret versions live (`<prefix>/v<N>`)."""
        return f"/tessera/{self.config.stage}/block-keys"


class AppStack(Stack):
    """The functions and everything that calls them."""

    def __init__(
        self, scope: Construct, id: str, *, config: StageConfig, data: DataStack, **kwargs: object
    ) -> None:
        super().__init__(scope, id, **kwargs)  # type: ignore[arg-type]
        self.config = config
        self.data = data
        self.messaging = Messaging(self, "Messaging", config=config)
        self.layer = TesseraLayer(self, "Layer", config=config).layer
        self.identity = data.identity
        placement = Placement(vpc=data.network.vpc, security_group=data.network.functions_sg)
        self.functions: dict[str, TesseraFunction] = {}

        def function(spec: FunctionSpec) -> lambda_.Function:
            made = TesseraFunction(
                self, _camel(spec.name), config=config, spec=spec, layer=self.layer,
                placement=placement,
            )  # fmt: skip
            self.functions[spec.name] = made
            return made.function

        api = function(FunctionSpec(
            "api", "the REST API", timeout=Duration.seconds(28), memory_mb=1024,
            reserved_concurrency=config.api_reserved_concurrency,
            environment={**self._db_env(), **self._blocks_env(), **self._changes_env()},
        ))  # fmt: skip
        longpoll = function(FunctionSpec(
            "longpoll", "long-poll on the changes table", timeout=Duration.seconds(28),
            memory_mb=256, reserved_concurrency=config.longpoll_reserved_concurrency,
            # The API app needs every adapter configured (the bucket is never called) and
            # the key service: cursors are signed with a key derived from the block keys.
            environment={**self._db_env(), **self._blocks_env(), **self._changes_env(),
                         "TESSERA_LONGPOLL_MIN_S": str(LONGPOLL_MAX_S - 5),
                         "TESSERA_LONGPOLL_MAX_S": str(LONGPOLL_MAX_S)},
        ))  # fmt: skip
        # POST /v1/auth/token: Cognito AdminInitiateAuth on the public app client (no secret,
        # no SECRET_HASH), the only sign-in call that takes the caller's address for threat
        # protection. So the role gets that one action on the pool (RevokeToken is not
        # IAM-authorised), beyond its logs and X-Ray.
        auth = function(FunctionSpec(
            "auth", "token endpoint (Cognito sign-in)", timeout=Duration.seconds(10),
            memory_mb=256, in_vpc=False, environment=self._identity_env(),
        ))  # fmt: skip
        self.identity.user_pool.grant(auth, "cognito-idp:AdminInitiateAuth")
        relay = function(FunctionSpec(
            "outbox_relay", "outbox sweep to the changes table", timeout=Duration.seconds(55),
            reserved_concurrency=2,  # two concurrent sweeps are safe (SKIP LOCKED), more is waste
            environment={**self._db_env(), **self._changes_env()},
        ))  # fmt: skip
        router = function(FunctionSpec(
            "change_router", "changes stream to the tessera bus", in_vpc=False,
            memory_mb=256, environment=self._events_env(),
        ))  # fmt: skip
        maintenance_env = {**self._db_env(), **self._blocks_env(), **self._changes_env()}
        maintenance = {
            name: function(
                FunctionSpec(
                    name,
                    description,
                    timeout=MAINTENANCE_TIMEOUT,
                    memory_mb=1024,
                    reserved_concurrency=reserved,
                    environment=maintenance_env,
                )
            )
            # A queue's poller runs two at a time (Lambda's least), beside the workflow's one.
            for name, description, reserved in (
                ("dedup_verify", "verify staged blocks, promote or quarantine", 4),
                ("gc", "garbage collection of trash, old versions and blocks", 1),
                ("cold_storage", "move unread blocks to Glacier, settle restores", 3),
                ("scrub", "check reported blocks, list every block, re-verify a sample", 3),
            )
        }
        migrate = function(FunctionSpec(
            "migrate", "schema migrations, the runtime role, the first block-key version",
            timeout=Duration.minutes(5),
            environment={
                "TESSERA_DB_SECRET_ARN": data.database.secret.secret_arn,
                "TESSERA_APP_DB_SECRET_ARN": data.database.app_secret.secret_arn,
                "TESSERA_DB_HOST": data.database.cluster.cluster_endpoint.hostname,
                "TESSERA_DB_PORT": str(CLUSTER_PORT),
                "TESSERA_DB_NAME": DB_NAME,
                **self._keys_env(),
            },
        ))  # fmt: skip

        self._grant(api, longpoll, relay, router, maintenance, migrate)

        api_target: lambda_.IFunction = api
        if config.api_provisioned_concurrency:
            api_target = api.add_alias(
                "live", provisioned_concurrent_executions=config.api_provisioned_concurrency
            )
        self.api = Api(
            self, "Api", config=config, user_pool=self.identity.user_pool,
            api_function=api_target, longpoll_function=longpoll, auth_function=auth,
        )  # fmt: skip
        self.stream = ChangeStream(
            self, "ChangeStream", config=config, table=data.changes.table, router=router,
            messaging=self.messaging,
        )  # fmt: skip
        # The bus is made after the router (the pipe needs the router first).
        router.add_environment("TESSERA_EVENT_BUS", self.stream.bus.event_bus_name)
        self.stream.bus.grant_put_events_to(router)
        # Commit events on the dedup queue trigger dedup-verify directly (an SQS batch names
        # the upload sessions to verify); the hourly workflow sweeps whatever is left.
        _triggered_by(maintenance["dedup_verify"], self.stream.dedup_queue, batch_size=10)
        # A client's report of a block it could not read triggers scrub's check of it (an
        # SQS batch names the blocks); the weekly workflow sweeps whatever is left.
        # (Ten a batch: each is a block read, perhaps a file's blocks looked over.)
        _triggered_by(maintenance["scrub"], self.stream.scrub_queue, batch_size=10)
        # S3's restore completions trigger cold storage directly (settled within a minute,
        # where a file past `max_cold_checks` blocks waited for the daily run).
        self.restores = RestoreEvents(
            self, "RestoreEvents", bucket_name=blocks_bucket_name(config), messaging=self.messaging
        )
        _triggered_by(maintenance["cold_storage"], self.restores.queue, batch_size=100)
        self.workflows = Workflows(
            self, "Workflows", config=config, functions=maintenance, relay=relay,
            messaging=self.messaging,
        )  # fmt: skip
        self._async_failures_to_dlq(relay, "OutboxRelayFunction")
        self.migrations = Migrations(self, "Migrations", config=config, function=migrate)
        # Nothing scheduled runs before the schema exists, and no new code before its
        # migrations ran (it may read a column they add).
        self.workflows.node.add_dependency(self.migrations.resource)
        for fn in (api, longpoll, relay, *maintenance.values()):
            fn.node.add_dependency(self.migrations.resource)
        self.observability = Observability(
            self, "Observability", config=config, rest_api=self.api.rest_api,
            cluster=data.database.cluster,
            functions=[f.function for f in self.functions.values()],
            api_function=self.functions["api"].function,
            dead_letter_queues=self.messaging.dlqs, alarm_action=self.messaging.alarm_action,
        )  # fmt: skip
        CfnOutput(self, "ApiUrl", value=self.api.rest_api.url)
        CfnOutput(self, "BlocksBucket", value=blocks_bucket_name(config))

    def _async_failures_to_dlq(self, fn: lambda_.Function, name: str) -> None:
        """The Scheduler invokes `fn` asynchronously: a failed run goes to a dead-letter queue
        (alarmed) instead of being retried; the next scheduled run does the same work."""
        dlq = self.messaging.dead_letter_queue(f"{name}Dlq", purpose=f"async runs of {name}")
        lambda_.CfnEventInvokeConfig(
            self,
            f"{name}AsyncConfig",
            function_name=fn.function_name,
            qualifier="$LATEST",
            maximum_retry_attempts=0,
            maximum_event_age_in_seconds=120,
            destination_config=lambda_.CfnEventInvokeConfig.DestinationConfigProperty(
                on_failure=lambda_.CfnEventInvokeConfig.OnFailureProperty(destination=dlq.queue_arn)
            ),
        )
        # (Not `grant_send_messages`: it also grants kms:ReEncrypt* and GenerateDataKey*.)
        fn.add_to_role_policy(
            iam.PolicyStatement(actions=["sqs:SendMessage"], resources=[dlq.queue_arn])
        )
        self.messaging.key.grant(fn, "kms:GenerateDataKey", "kms:Decrypt")

    # --- the environment contract (docs/deploy.md lists it per function) ---------------------

    def _db_env(self) -> dict[str, str]:
        # One request at a time per Lambda environment: two pooled connections are plenty,
        # and they keep the proxy's connection count proportional to concurrency.
        return {
            "TESSERA_POOL_MIN_SIZE": "1",
            "TESSERA_POOL_MAX_SIZE": "2",
            "TESSERA_DB_HOST": self.data.database.proxy.endpoint,
            "TESSERA_DB_PORT": str(PROXY_PORT),
            "TESSERA_DB_NAME": DB_NAME,
            "TESSERA_DB_USER": APP_DB_USER,
            "TESSERA_DB_IAM_AUTH": "1",
        }

    def _keys_env(self) -> dict[str, str]:
        return {
            "TESSERA_KMS_KEY_ID": self.data.keys.block_key_secret.key_arn,
            "TESSERA_KEY_PARAM_PREFIX": self.data.key_param_prefix,
        }

    def _blocks_env(self) -> dict[str, str]:
        return {"TESSERA_BUCKET": blocks_bucket_name(self.config), **self._keys_env()}

    def _changes_env(self) -> dict[str, str]:
        return {"TESSERA_CHANGES_TABLE": self.data.changes.table.table_name}

    def _events_env(self) -> dict[str, str]:
        return {"TESSERA_EVENT_SOURCE": EVENT_SOURCE}

    def _identity_env(self) -> dict[str, str]:
        return {
            "TESSERA_USER_POOL_ID": self.identity.user_pool.user_pool_id,
            "TESSERA_USER_POOL_CLIENT_ID": self.identity.client.user_pool_client_id,
        }

    # --- least privilege, function by function -------------------------------------------------

    def _grant(
        self,
        api: lambda_.Function,
        longpoll: lambda_.Function,
        relay: lambda_.Function,
        router: lambda_.Function,
        maintenance: dict[str, lambda_.Function],
        migrate: lambda_.Function,
    ) -> None:
        data = self.data
        table = data.changes.table
        proxy = data.database.proxy
        dedup, gc = maintenance["dedup_verify"], maintenance["gc"]
        cold, scrub = maintenance["cold_storage"], maintenance["scrub"]
        for fn in (api, longpoll, relay, *maintenance.values()):
            proxy.grant_connect(fn, APP_DB_USER)
        # Block keys: read the encrypted versions, decrypt them with the block-key CMK.
        # (Long-poll too: cursors are signed with a key derived from them; cold storage
        # repairs a block whose object is lost as scrub does, `maintenance.cold._repair_lost`;
        # the maintenance functions that decode blocks first check the keys' fingerprints.)
        decoders = [maintenance[w.function] for w in WORKFLOWS.values() if w.decodes_blocks]
        for fn in (api, longpoll, *decoders):
            self._grant_block_keys_read(fn)
        # Changes table: writers put items (idempotent on event_id), long-poll reads. The
        # actions are those DynamoChangeFeed calls: publish = conditional PutItem (+ GetItem
        # when the key is taken); publish_many = BatchGetItem then BatchWriteItem.
        # (Scrub and cold storage too: they announce the damage they find, a lost object
        # of a block being restored among it, `maintenance.damage.publish_damage`.)
        table_key = self.data.keys.database
        for fn in (api, relay, dedup, scrub, cold):
            table.grant(fn, *CHANGES_WRITER_ACTIONS)
            grant_via_dynamodb(fn, table_key, "kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey")
        table.grant(longpoll, "dynamodb:Query", "dynamodb:GetItem")
        grant_via_dynamodb(longpoll, table_key, "kms:Decrypt")
        # The blocks bucket, by prefix and action (see `_grant_objects`); each line is what
        # one function's code calls (moto does not enforce IAM: a missing one fails on AWS).
        staging, blocks, quarantine = STAGING_PREFIX, CANONICAL_PREFIX, QUARANTINE_PREFIX
        landing = LANDING_PREFIX
        self._grant_objects(api, ["s3:GetObject"], [staging, blocks])
        self._grant_objects(api, ["s3:PutObject"], [staging])
        self._grant_objects(api, ["s3:RestoreObject"], [blocks])
        # dedup: verify, promote (CopyObject; over a cold block by way of a landing key),
        # quarantine a bad copy, drop a promoted object that changed under it, delete
        # settled copies
        self._grant_objects(dedup, ["s3:GetObject"], [staging, blocks, landing])
        self._grant_objects(dedup, ["s3:PutObject"], [blocks, quarantine, landing])
        self._grant_objects(dedup, ["s3:DeleteObject"], [staging, blocks, landing])
        # gc: expired and settled copies, unreferenced blocks, and (listed) the landing
        # objects of runs killed mid-copy
        self._grant_objects(gc, ["s3:DeleteObject"], [staging, blocks, quarantine, landing])
        self._grant_listing(gc, [landing])
        self._grant_objects(cold, ["s3:GetObject", "s3:PutObject"], [blocks])  # re-class copy
        self._grant_objects(cold, ["s3:RestoreObject"], [blocks])
        # scrub: re-verify, and repair from a verified duplicate (a staged copy, or an
        # earlier version of the block's object, verified again at a landing key before it
        # replaces the canonical object); cold storage runs the same repair on a block
        # whose object it finds lost
        for fn in (scrub, cold):
            self._grant_objects(fn, ["s3:GetObject"], [staging, blocks, landing])
            self._grant_objects(fn, ["s3:GetObjectVersion"], [blocks])
            self._grant_listing(fn, [blocks], action="s3:ListBucketVersions")
            # undo a delete (remove its markers); cold also drops the version a tier move
            # superseded (the same bytes: kept, it was paid for 30 more days)
            self._grant_objects(fn, ["s3:DeleteObjectVersion"], [blocks])
            self._grant_objects(fn, ["s3:PutObject"], [blocks, landing])
            self._grant_objects(fn, ["s3:DeleteObject"], [landing])
        # Migrations: the cluster secret, the runtime role's (it makes the role), and
        # creating the first block-key version. (Not `secret.grant_read`: it writes the role
        # into the data stack's key policy, a reference from data to app that would make
        # the stacks depend on each other.)
        migrate.add_to_role_policy(iam.PolicyStatement(
            actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
            resources=[data.database.secret.secret_arn, data.database.app_secret.secret_arn],
        ))  # fmt: skip
        data.keys.database.grant_decrypt(migrate)
        # creating the first block-key version, and comparing each version's secret with
        # the fingerprints the database recorded (a parameter put again fails the deploy)
        data.keys.block_key_secret.grant(migrate, "kms:GenerateDataKey", "kms:Decrypt")
        migrate.add_to_role_policy(iam.PolicyStatement(
            actions=["ssm:GetParametersByPath", "ssm:GetParameter", "ssm:PutParameter"],
            resources=[self._param_arn(""), self._param_arn("/*")],
        ))  # fmt: skip
        acknowledge(
            migrate.role or migrate,
            f"AwsSolutions-IAM5[Resource::{self._param_nag('/*')}]",
            "block-key versions are parameters <prefix>/v1..vN: the migration creates v1",
        )
        del router  # the router only needs the bus (granted with its environment)

    def _grant_listing(
        self, fn: lambda_.Function, prefixes: list[str], *, action: str = "s3:ListBucket"
    ) -> None:
        """`action` (a listing) on the blocks bucket, for keys under `prefixes` only."""
        fn.add_to_role_policy(iam.PolicyStatement(
            actions=[action],
            resources=[f"arn:{Aws.PARTITION}:s3:::{blocks_bucket_name(self.config)}"],
            conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
        ))  # fmt: skip

    def _grant_objects(self, fn: lambda_.Function, actions: list[str], prefixes: list[str]) -> None:
        """`actions` on the blocks bucket's objects under `prefixes`, plus what KMS needs.

        Object keys are content hashes and upload ids, so a prefix is the narrowest scope;
        readers also get s3:ListBucket on those prefixes so a missing key is a 404, not a 403.
        """
        fn.add_to_role_policy(iam.PolicyStatement(
            actions=actions, resources=[blocks_objects_arn(self.config, p) for p in prefixes],
        ))  # fmt: skip
        key = self.data.keys.blocks
        if "s3:GetObject" in actions:
            self._grant_listing(fn, prefixes)
            key.grant(fn, "kms:Decrypt")
        if "s3:PutObject" in actions:
            key.grant(fn, "kms:GenerateDataKey", "kms:Decrypt")
        for prefix in prefixes:
            acknowledge(
                fn.role or fn,
                f"AwsSolutions-IAM5[Resource::{self._objects_nag(prefix)}]",
                f"object-level S3 actions limited to keys under {prefix} (content hashes or "
                "upload ids, unknown until run time)",
            )

    def _objects_nag(self, prefix: str) -> str:
        """How cdk-nag prints `blocks_objects_arn(prefix)` in a finding."""
        return (
            f"arn:<AWS::Partition>:s3:::{self.config.prefix}-blocks-<AWS::AccountId>-"
            f"<AWS::Region>/{prefix}*"
        )

    def _param_nag(self, suffix: str) -> str:
        """How cdk-nag prints `_param_arn(suffix)` in a finding."""
        return (
            "arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:parameter/"
            + self.data.key_param_prefix.lstrip("/")
            + suffix
        )

    def _param_arn(self, suffix: str) -> str:
        return self.format_arn(
            service="ssm",
            resource="parameter",
            resource_name=self.data.key_param_prefix.lstrip("/") + suffix,
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        )

    def _grant_block_keys_read(self, fn: lambda_.Function) -> None:
        fn.add_to_role_policy(iam.PolicyStatement(
            actions=["ssm:GetParametersByPath"], resources=[self._param_arn("")],
        ))  # fmt: skip
        fn.add_to_role_policy(iam.PolicyStatement(
            actions=["ssm:GetParameter"], resources=[self._param_arn("/*")],
        ))  # fmt: skip
        self.data.keys.block_key_secret.grant_decrypt(fn)
        acknowledge(
            fn.role or fn,
            f"AwsSolutions-IAM5[Resource::{self._param_nag('/*')}]",
            "block-key versions are parameters <prefix>/v1..vN, read by version at run time",
        )


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_")) + "Function"


def _triggered_by(fn: lambda_.Function, queue: sqs.IQueue, *, batch_size: int) -> None:
    """`fn` takes `queue`'s messages in batches of up to `batch_size` (gathered for at most
    30 s), two pollers at most: the function reserves more, for its workflow's runs too."""
    fn.add_event_source(
        lambda_event_sources.SqsEventSource(
            queue,
            batch_size=batch_size,
            max_batching_window=Duration.seconds(30),
            max_concurrency=2,
        )
    )
