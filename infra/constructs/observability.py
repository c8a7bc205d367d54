"""The CloudWatch dashboard and the service alarms (API 5xx rate, the api function's p99
duration, relay lag, Aurora CPU and connections). Dead-letter-queue and workflow alarms live
with their queues and state machines; all of them notify the one alarm topic."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import StageConfig
from infra.constructs.function import METRICS_NAMESPACE

# Published by the outbox relay with Powertools Metrics (EMF, namespace Tessera, dimension
# service=tessera-outbox-relay): `RelayLagSeconds`, the age of the oldest outbox row not yet
# relayed (the contract in docs/deploy.md), `OutboxRelayFailed`, events left pending, and
# `OutboxDeadLettered`, events the change table refused for good (moved to outbox_dead).
RELAY_LAG_METRIC = "RelayLagSeconds"
RELAY_FAILED_METRIC = "OutboxRelayFailed"
RELAY_DEAD_METRIC = "OutboxDeadLettered"
RELAY_SERVICE = "tessera-outbox-relay"

FIVE_MIN = Duration.minutes(5)
# An ordinary API call's p99 beyond this is slow: a commit of a whole 2 MiB batch takes a
# second or two, a listing page less.
API_P99_MS = 10_000


class Observability(Construct):
    """`dashboard` and `alarms`."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StageConfig,
        rest_api: apigw.RestApi,
        cluster: rds.IDatabaseCluster,
        functions: Sequence[lambda_.IFunction],
        api_function: lambda_.IFunction,
        dead_letter_queues: Sequence[sqs.IQueue],
        alarm_action: cw_actions.SnsAction,
    ) -> None:
        super().__init__(scope, id)
        api_name = rest_api.rest_api_name
        stage = config.stage
        dims = {"ApiName": api_name, "Stage": stage}
        requests = cloudwatch.Metric(
            namespace="AWS/ApiGateway", metric_name="Count", dimensions_map=dims,
            statistic="Sum", period=FIVE_MIN,
        )  # fmt: skip
        errors_5xx = cloudwatch.Metric(
            namespace="AWS/ApiGateway", metric_name="5XXError", dimensions_map=dims,
            statistic="Sum", period=FIVE_MIN,
        )  # fmt: skip
        rate_5xx = cloudwatch.MathExpression(
            expression="IF(requests > 0, 100 * errors / requests, 0)",
            using_metrics={"errors": errors_5xx, "requests": requests},
            label="5xx rate (%)",
            period=FIVE_MIN,
        )
        latency_p99 = cloudwatch.Metric(
            namespace="AWS/ApiGateway", metric_name="Latency", dimensions_map=dims,
            statistic="p99", period=FIVE_MIN,
        )  # fmt: skip
        relay_lag = cloudwatch.Metric(
            namespace=METRICS_NAMESPACE, metric_name=RELAY_LAG_METRIC,
            dimensions_map={"service": RELAY_SERVICE}, statistic="Maximum", period=FIVE_MIN,
        )  # fmt: skip
        relay_failed, relay_dead = (
            cloudwatch.Metric(
                namespace=METRICS_NAMESPACE, metric_name=name,
                dimensions_map={"service": RELAY_SERVICE}, statistic="Sum", period=FIVE_MIN,
            )
            for name in (RELAY_FAILED_METRIC, RELAY_DEAD_METRIC)
        )  # fmt: skip
        db_cpu = cluster.metric_cpu_utilization(period=FIVE_MIN, statistic="Maximum")
        db_connections = cluster.metric_database_connections(period=FIVE_MIN, statistic="Maximum")

        def alarm(
            name: str,
            metric: cloudwatch.IMetric,
            threshold: float,
            what: str,
            missing: cloudwatch.TreatMissingData = cloudwatch.TreatMissingData.NOT_BREACHING,
            *,
            periods: tuple[int, int] = (2, 3),  # (datapoints to alarm, evaluation periods)
        ) -> None:
            created = cloudwatch.Alarm(
                self,
                name,
                alarm_description=f"Tessera {stage}: {what}",
                metric=metric,
                threshold=threshold,
                evaluation_periods=periods[1],
                datapoints_to_alarm=periods[0],
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=missing,
            )
            created.add_alarm_action(alarm_action)
            self.alarms.append(created)

        self.alarms: list[cloudwatch.Alarm] = []
        alarm("Api5xxRate", rate_5xx, 1, "API 5xx rate above 1 %")
        # The api function's own p99, not the gateway's: long-polls (in their function) wait
        # 20-25 s by design, so the gateway's p99 sat near 25 s whenever they were over 1 %
        # of requests, and an alarm on it had to sit at 27 s, blind to ordinary calls slowed
        # to 26 s.
        alarm(
            "ApiDurationP99",
            api_function.metric_duration(period=FIVE_MIN, statistic="p99"),
            API_P99_MS,
            f"api function p99 duration above {API_P99_MS // 1000} s (long-polls not counted)",
        )
        # The relay publishes its lag every minute, even at 0: no data means it is not running.
        alarm(
            "RelayLag",
            relay_lag,
            180,
            "outbox relay more than 3 minutes behind, or not running",
            cloudwatch.TreatMissingData.BREACHING,
        )
        alarm("RelayFailures", relay_failed, 0, "outbox relay keeps leaving events pending")
        # A dead letter is counted once (its row leaves the outbox): one datapoint alarms.
        alarm(
            "RelayDeadLetters",
            relay_dead,
            0,
            "the change table refused events for good: see outbox_dead (docs/deploy.md)",
            periods=(1, 1),
        )
        alarm("DbCpu", db_cpu, 80, "Aurora CPU above 80 %")
        alarm("DbConnections", db_connections, 400, "Aurora connections above 400")

        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=f"{config.prefix}", default_interval=Duration.hours(6)
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="API requests and 5xx", left=[requests, errors_5xx],
                                   right=[rate_5xx], width=12),
            cloudwatch.GraphWidget(title="API latency p99 (ms)", left=[latency_p99], width=12),
        )  # fmt: skip
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Lambda errors",
                left=[fn.metric_errors(period=FIVE_MIN) for fn in functions],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Lambda p99 duration",
                left=[fn.metric_duration(period=FIVE_MIN, statistic="p99") for fn in functions],
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Outbox relay lag (s) / failed, dead-lettered",
                                   left=[relay_lag], right=[relay_failed, relay_dead], width=8),
            cloudwatch.GraphWidget(title="Aurora CPU / connections", left=[db_cpu],
                                   right=[db_connections], width=8),
            cloudwatch.GraphWidget(
                title="Dead-letter queues",
                left=[q.metric_approximate_number_of_messages_visible(period=FIVE_MIN)
                      for q in dead_letter_queues],
                width=8,
            ),
        )  # fmt: skip
