"""Lambda `change_router`: DynamoDB stream records of the changes table → `tessera` bus.

Fed by the stream (event source mapping, `{"Records": [...]}`) or by an EventBridge Pipe
with this function as target (a bare list of records). Only INSERTs are events: the feed
writes each event once and TTL expiry shows up as REMOVE. The batch's events go to the bus
ten to a PutEvents call (one call per record made a 1,000-file sync cost 1,000 calls); a
record whose event EventBridge refuses is reported in `batchItemFailures`, so only it is
retried (named as each source expects: a stream mapping by SequenceNumber, a Pipe by eventID;
a Pipe matches no SequenceNumber, so it took the batch as delivered or bisected all of it).
When a PutEvents call fails outright, the invocation fails and the whole batch is retried:
the bus consumers de-duplicate on `event_id`.
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

from tessera.adapters.aws.changes import named_by_event_id, stream_image_to_event
from tessera.adapters.aws.events import PublishFailed
from tessera.adapters.aws.wiring import TRACED_MODULES, AwsRuntime

logger = Logger(service="tessera-change-router")
tracer = Tracer(service="tessera-change-router", patch_modules=TRACED_MODULES)
metrics = Metrics(namespace="Tessera", service="tessera-change-router")

runtime = AwsRuntime.from_env()
publisher = runtime.event_publisher()
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


@tracer.capture_method
def publish_inserts(records: list[dict[str, Any]]) -> set[str]:
    """Put the events of the INSERT records on the bus; the sequence numbers of the records
    whose event EventBridge refused."""
    inserts = [
        (r["dynamodb"]["SequenceNumber"], stream_image_to_event(r["dynamodb"]["NewImage"]))
        for r in records
        if r.get("eventName") == "INSERT"
    ]
    refused = {e.event_id for e in publisher.publish(event for _, event in inserts)}
    failed = {seq for seq, event in inserts if event.event_id in refused}
    metrics.add_metric(
        name="ChangesRouted", unit=MetricUnit.Count, value=len(inserts) - len(failed)
    )
    return failed


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def handler(
    event: dict[str, Any] | list[dict[str, Any]], context: LambdaContext
) -> PartialItemFailureResponse:
    """Route a batch; `{"batchItemFailures": [...]}` names the records to retry."""
    batch = {"Records": event} if isinstance(event, list) else event
    refused = publish_inserts(batch["Records"])

    def outcome(record: DynamoDBRecord) -> None:
        if record.dynamodb is not None and record.dynamodb.sequence_number in refused:
            raise PublishFailed(f"EventBridge refused the event of record {record.event_id}")

    response = process_partial_response(
        event=batch, record_handler=outcome, processor=processor, context=context
    )
    if isinstance(event, list):  # an EventBridge Pipe names a record by its eventID
        response = named_by_event_id(event, response)
    return response
