"""Lambda `change_router`: DynamoDB stream records of the changes table → `tessera` bus.

Fed by the stream (event source mapping, `{"Records": [...]}`) or by an EventBridge Pipe
with this function as target (a bare list of records). Only INSERTs are events: the feed
writes each event once and TTL expiry shows up as REMOVE. A record EventBridge refuses is
reported in `batchItemFailures`, so only it is retried.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from tessera.adapters.aws.changes import stream_image_to_event
from tessera.adapters.aws.wiring import TRACED_MODULES, AwsRuntime

logger = Logger(service="tessera-change-router")
tracer = Tracer(service="tessera-change-router", patch_modules=TRACED_MODULES)
metrics = Metrics(namespace="Tessera", service="tessera-change-router")

runtime = AwsRuntime.from_env()
publisher = runtime.event_publisher()
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


@tracer.capture_method
def route(record: DynamoDBRecord) -> None:
    """Put one INSERT record's event on the bus (raises when EventBridge refuses it)."""
    if record.raw_event.get("eventName") != "INSERT":
        return
    publisher.publish_one(stream_image_to_event(record.raw_event["dynamodb"]["NewImage"]))
    metrics.add_metric(name="ChangesRouted", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def handler(
    event: dict[str, Any] | list[dict[str, Any]], context: LambdaContext
) -> PartialItemFailureResponse:
    """Route a batch; `{"batchItemFailures": [...]}` names the records to retry."""
    batch = {"Records": event} if isinstance(event, list) else event
    return process_partial_response(
        event=batch, record_handler=route, processor=processor, context=context
    )
