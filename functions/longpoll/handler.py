"""Lambda `longpoll`: `POST /v1/list_folder/longpoll`, on a function of its own so its
concurrency and timeout are its own.

The same API app as `api`: the cursor is validated by its signature, then the function
waits on the DynamoDB `changes` table — not Aurora — until a change or the timeout, so an
idle client costs Aurora nothing (the pool opens no connection until a route needs one).
Init runs inside `lambda_init`, as the api function's does: a user waits on both.
"""

from __future__ import annotations

from tessera.coldstart import lambda_init

with lambda_init():
    from typing import Any

    from aws_lambda_powertools import Logger, Metrics, Tracer
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from tessera.adapters.aws import DeadlineFeed, gateway_deadline
    from tessera.adapters.aws.wiring import TRACED_MODULES, AwsRuntime
    from tessera.api import build_resolver

    logger = Logger(service="tessera-longpoll")
    tracer = Tracer(service="tessera-longpoll", patch_modules=TRACED_MODULES)
    metrics = Metrics(namespace="Tessera", service="tessera-longpoll")

    runtime = AwsRuntime.from_env()
    # waits use DynamoDB, not Aurora, and end before API Gateway gives up on the request
    feed = DeadlineFeed(runtime.change_feed())
    services = runtime.services(lazy_db=True, feed=feed)
    resolver = build_resolver(services)


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId")
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(raise_on_empty_metrics=False, capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Resolve one long-poll request (API Gateway REST proxy event)."""
    feed.deadline = gateway_deadline(event)
    return resolver.resolve(event, context)
