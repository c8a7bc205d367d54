"""Lambda `api`: the whole REST API (API Gateway REST proxy events, Cognito authorizer).

Cold start: read settings, wire the AWS adapters into `Services`, build the Powertools
resolver and load the current block-key secret, checked against the database's record of
it (`guard_block_keys`) — once, here at import, inside `lambda_init` (no garbage
collection while init builds; what it built is then frozen).
Each invocation only resolves the event; after each transaction the domain publishes the
newest event of each namespace to the changes table (the outbox relay delivers the rest).
"""

from __future__ import annotations

from tessera.coldstart import lambda_init

with lambda_init():
    from contextlib import suppress
    from typing import Any

    from aws_lambda_powertools import Logger, Metrics, Tracer
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from tessera.adapters.aws.wiring import TRACED_MODULES, AwsRuntime
    from tessera.api import build_resolver
    from tessera.domain.errors import Unavailable
    from tessera.metadata.key_check import guard_block_keys

    logger = Logger(service="tessera-api")
    tracer = Tracer(service="tessera-api", patch_modules=TRACED_MODULES)
    metrics = Metrics(namespace="Tessera", service="tessera-api")

    runtime = AwsRuntime.from_env()
    services = runtime.services()
    # the long-poll has a function of its own: here it would wait out this one's timeout
    resolver = build_resolver(services, longpoll=False)
    # On AWS, init runs before the first request is routed (ahead of any, with provisioned
    # concurrency): the SSM + KMS round trips for the block-key secret belong here.
    guard_block_keys(services.db, services.keys)
    with suppress(Unavailable):  # keys refused (logged): each request answers 503 instead
        services.keys.load_current()


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId")
@tracer.capture_lambda_handler(capture_response=False)  # responses hold presigned URLs
@metrics.log_metrics(raise_on_empty_metrics=False, capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Resolve one API Gateway REST proxy event."""
    services.keys.refresh()  # a rotation, once a minute: here, before any lock is held
    return resolver.resolve(event, context)
