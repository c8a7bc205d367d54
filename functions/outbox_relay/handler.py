"""Lambda `outbox_relay`: the scheduled sweep (EventBridge Scheduler, every minute).

Outbox rows not yet relayed → the DynamoDB changes table. At-least-once and idempotent:
see `tessera.metadata.outbox`. The event (a Scheduler payload) carries nothing we need.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from tessera.adapters.aws.wiring import TRACED_MODULES, AwsRuntime
from tessera.metadata.outbox import relay_outbox

logger = Logger(service="tessera-outbox-relay")
tracer = Tracer(service="tessera-outbox-relay", patch_modules=TRACED_MODULES)
metrics = Metrics(namespace="Tessera", service="tessera-outbox-relay")

#: Seconds of the function's time left unspent by the sweep: the batch in progress, the lag
#: query and the metrics' flush (a 100-event batch takes well under a second).
RESERVE_S = 10.0

runtime = AwsRuntime.from_env()
db = runtime.database()
feed = runtime.change_feed()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Run one sweep, for as long as the function's time allows; report how many events
    were relayed, which failed, which the feed refused for good (moved to outbox_dead),
    and the lag left."""
    # Rows younger than a few seconds are normally being published by the fast path.
    budget_s = max(0.0, context.get_remaining_time_in_millis() / 1000 - RESERVE_S)
    result = relay_outbox(db, feed, budget_s=budget_s, min_age_s=float(event.get("min_age_s", 5.0)))
    metrics.add_metric(name="OutboxRelayed", unit=MetricUnit.Count, value=result.relayed)
    metrics.add_metric(name="OutboxRelayFailed", unit=MetricUnit.Count, value=len(result.failed))
    metrics.add_metric(name="OutboxDeadLettered", unit=MetricUnit.Count, value=len(result.dead))
    # The relay-lag alarm and dashboard read this (namespace Tessera, service dimension).
    metrics.add_metric(name="RelayLagSeconds", unit=MetricUnit.Seconds, value=result.lag_s)
    if result.failed:
        logger.warning("outbox relay left events pending", extra={"failed": result.failed})
    if result.dead:
        logger.error("outbox relay moved events to outbox_dead", extra={"dead": result.dead})
    return {
        "relayed": result.relayed,
        "failed": result.failed,
        "dead": result.dead,
        "lag_s": result.lag_s,
    }
