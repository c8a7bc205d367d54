"""The REST API: Cognito authorizer on every method but `GET /v1/health`, request validation,
throttling, access logs, X-Ray, WAF; `api` behind everything, `longpoll` on its own route."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cognito as cognito
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from infra.config import StageConfig, retention
from infra.nag import acknowledge
from tessera.domain.models import MAX_CURSOR_CHARS

# API Gateway's regional integration timeout is 29 s: long-poll answers well inside it.
LONGPOLL_INTEGRATION_TIMEOUT = Duration.seconds(29)

_LONGPOLL_SCHEMA = apigw.JsonSchema(
    schema=apigw.JsonSchemaVersion.DRAFT4,
    type=apigw.JsonSchemaType.OBJECT,
    required=["cursor"],
    properties={
        "cursor": apigw.JsonSchema(
            type=apigw.JsonSchemaType.STRING, min_length=1, max_length=MAX_CURSOR_CHARS
        ),
        "timeout": apigw.JsonSchema(type=apigw.JsonSchemaType.INTEGER, minimum=1, maximum=3600),
    },
)


# The token request: {email, password} or {refresh_token}. Only shapes and sizes are checked
# here (a failing body gets API Gateway's 400); `functions/auth` answers the rest (422).
_TOKEN_SCHEMA = apigw.JsonSchema(
    schema=apigw.JsonSchemaVersion.DRAFT4,
    type=apigw.JsonSchemaType.OBJECT,
    properties={
        "email": apigw.JsonSchema(type=apigw.JsonSchemaType.STRING, min_length=3, max_length=320),
        "password": apigw.JsonSchema(
            type=apigw.JsonSchemaType.STRING, min_length=1, max_length=256
        ),
        "refresh_token": apigw.JsonSchema(
            type=apigw.JsonSchemaType.STRING, min_length=1, max_length=8192
        ),
    },
    additional_properties=False,
)

# The revoke request: {refresh_token} (`tessera logout`).
_REVOKE_SCHEMA = apigw.JsonSchema(
    schema=apigw.JsonSchemaVersion.DRAFT4,
    type=apigw.JsonSchemaType.OBJECT,
    properties={
        "refresh_token": apigw.JsonSchema(
            type=apigw.JsonSchemaType.STRING, min_length=1, max_length=8192
        ),
    },
    required=["refresh_token"],
    additional_properties=False,
)

TOKEN_PATH = "/v1/auth/token"
REVOKE_PATH = "/v1/auth/revoke"


class Api(Construct):
    """`rest_api`, its `stage`, and the `web_acl` in front of it."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StageConfig,
        user_pool: cognito.IUserPool,
        api_function: lambda_.IFunction,
        longpoll_function: lambda_.IFunction,
        auth_function: lambda_.IFunction,
    ) -> None:
        super().__init__(scope, id)
        access_logs = logs.LogGroup(
            self, "AccessLogs", retention=retention(config), removal_policy=RemovalPolicy.DESTROY
        )
        self.rest_api = apigw.RestApi(
            self,
            "Api",
            rest_api_name=f"{config.prefix}-api",
            description="Tessera file sync API",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN,
            deploy_options=apigw.StageOptions(
                stage_name=config.stage,
                tracing_enabled=True,
                metrics_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # bodies carry block keys: never log them
                throttling_rate_limit=config.api_rate_limit,
                throttling_burst_limit=config.api_burst_limit,
                # The unauthenticated routes that do work get a far lower limit.
                method_options={
                    f"{path}/POST": apigw.MethodDeploymentOptions(
                        throttling_rate_limit=config.auth_rate_limit,
                        throttling_burst_limit=config.auth_burst_limit,
                    )
                    for path in (TOKEN_PATH, REVOKE_PATH)
                },
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=False,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=True,
                ),
            ),
        )
        acknowledge(
            self.rest_api,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonAPIGatewayPushToCloudWatchLogs]",
            "the account-wide API Gateway logging role needs exactly this AWS policy; "
            "API Gateway offers no narrower one for pushing execution logs",
        )
        authorizer = apigw.CognitoUserPoolsAuthorizer(
            self, "Authorizer", cognito_user_pools=[user_pool]
        )
        validator = self.rest_api.add_request_validator(
            "Validator", validate_request_body=True, validate_request_parameters=True
        )
        authed = apigw.MethodOptions(
            authorizer=authorizer,
            authorization_type=apigw.AuthorizationType.COGNITO,
            request_validator=validator,
            request_parameters={"method.request.header.Authorization": True},
        )
        api_integration = apigw.LambdaIntegration(api_function, proxy=True)

        v1 = self.rest_api.root.add_resource("v1")
        health = v1.add_resource("health").add_method("GET", api_integration)
        acknowledge(
            health,
            "AwsSolutions-APIG4",
            "GET /v1/health is the unauthenticated liveness probe; it returns no user data",
        )
        acknowledge(
            health,
            "AwsSolutions-COG4",
            "GET /v1/health is the unauthenticated liveness probe; it returns no user data",
        )
        v1.add_proxy(default_integration=api_integration, any_method=False).add_method(
            "ANY", api_integration, **_opts(authed)
        )
        longpoll_model = self.rest_api.add_model(
            "LongpollRequest", content_type="application/json", schema=_LONGPOLL_SCHEMA
        )
        v1.add_resource("list_folder").add_resource("longpoll").add_method(
            "POST",
            apigw.LambdaIntegration(
                longpoll_function, proxy=True, timeout=LONGPOLL_INTEGRATION_TIMEOUT
            ),
            request_models={"application/json": longpoll_model},
            **_opts(authed),
        )
        auth = v1.add_resource("auth")
        for name, schema, relays in (
            ("token", _TOKEN_SCHEMA, "AdminInitiateAuth"),
            ("revoke", _REVOKE_SCHEMA, "RevokeToken"),
        ):
            model = self.rest_api.add_model(
                f"{name.capitalize()}Request", content_type="application/json", schema=schema
            )
            method = auth.add_resource(name).add_method(
                "POST",
                apigw.LambdaIntegration(auth_function, proxy=True),
                authorization_type=apigw.AuthorizationType.NONE,
                request_validator=validator,
                request_models={"application/json": model},
            )
            for rule in ("AwsSolutions-APIG4", "AwsSolutions-COG4"):
                acknowledge(
                    method,
                    rule,
                    f"POST /v1/auth/{name} is how a client obtains (or signs out) a Cognito "
                    f"token, so it cannot require one; it only relays {relays} on the public "
                    "app client, with its own stage throttling, body validation and the WAF "
                    "rate rule in front",
                )
        _gateway_errors(self.rest_api)
        self.stage = self.rest_api.deployment_stage
        self.web_acl = _web_acl(self, config)
        wafv2.CfnWebACLAssociation(
            self,
            "WafAssociation",
            resource_arn=self.stage.stage_arn,
            web_acl_arn=self.web_acl.attr_arn,
        )


# API Gateway answers some requests itself (throttled, no or bad token, a body the validator
# refuses, a function it could not invoke); clients get the same error shape as from the API
# (DESIGN §5), and a 429 or 503 says when to retry, as the API's own do.
RETRY_AFTER_THROTTLED_S = 1
RETRY_AFTER_UNAVAILABLE_S = 2
# (type, status, code, message, Retry-After seconds or None)
_GATEWAY_ERRORS: list[tuple[apigw.ResponseType, str, str, str, int | None]] = [
    (apigw.ResponseType.THROTTLED, "429", "rate_limited", "too many requests; retry later",
     RETRY_AFTER_THROTTLED_S),
    (apigw.ResponseType.QUOTA_EXCEEDED, "429", "rate_limited", "request quota exceeded",
     RETRY_AFTER_THROTTLED_S),
    (apigw.ResponseType.UNAUTHORIZED, "401", "unauthorized", "missing or invalid token", None),
    (apigw.ResponseType.ACCESS_DENIED, "403", "forbidden", "access denied", None),
    # 422 as the app answers a malformed body (docs/api.md), where it had been 400 on AWS
    (apigw.ResponseType.BAD_REQUEST_BODY, "422", "invalid", "request body is malformed", None),
    (apigw.ResponseType.REQUEST_TOO_LARGE, "413", "too_large", "request body too large", None),
    # Lambda throttling the function (its reserved concurrency full: every long-poll slot
    # held by an idle device) reaches the caller as this, a bare 504 without Retry-After
    (apigw.ResponseType.INTEGRATION_FAILURE, "503", "unavailable",
     "the service could not take the request; retry shortly", RETRY_AFTER_UNAVAILABLE_S),
    (apigw.ResponseType.INTEGRATION_TIMEOUT, "503", "unavailable",
     "the service took too long to answer; retry shortly", RETRY_AFTER_UNAVAILABLE_S),
]  # fmt: skip


def _gateway_errors(api: apigw.RestApi) -> None:
    """Gateway responses in Tessera's JSON error shape; the 429s and 503 carry Retry-After."""
    for response_type, status, code, message, retry_after in _GATEWAY_ERRORS:
        headers = {"Content-Type": "'application/json'"}
        if retry_after is not None:
            headers["Retry-After"] = f"'{retry_after}'"
        api.add_gateway_response(
            f"Gateway{response_type.response_type}",
            type=response_type,
            status_code=status,
            response_headers=headers,
            templates={
                "application/json": json.dumps({"error": {"code": code, "message": message}})
            },
        )


def _opts(options: apigw.MethodOptions) -> dict[str, Any]:
    return {
        "authorizer": options.authorizer,
        "authorization_type": options.authorization_type,
        "request_validator": options.request_validator,
        "request_parameters": options.request_parameters,
    }


# Sign-ins and token refreshes one client IP may make in WAF's 5-minute window: a device
# refreshes hourly, so an office of a thousand behind one address stays below it, and one
# waking all at once is slowed (429, Retry-After), not refused. The gateway's own throttle
# on the auth routes is shared by every caller: one address sending 50 a second had every
# user's refresh refused, and every device signed out within the hour.
AUTH_REQUESTS_PER_IP = 500
# The share of the stage's rate one caller (one bearer token) may take: the stage's
# throttle is shared too, and one runaway client used it all.
CALLER_SHARE = 0.5
_RATE_LIMITED = "rate_limited"  # the WAF response body of a rate rule


def _web_acl(scope: Construct, config: StageConfig) -> wafv2.CfnWebACL:
    """Rate limits per client IP, per IP on the auth routes and per caller, plus AWS's
    known-bad-inputs rules. (The common rule set is not used: its 8 KB body limit would
    block `commit_batch` and `uploads` requests.)"""

    def visibility(name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
        return wafv2.CfnWebACL.VisibilityConfigProperty(
            cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=True
        )

    # A rate rule answers as the API's throttle does (429, its error shape, Retry-After):
    # WAF's own 403 told a client nothing of when to come back.
    throttled = wafv2.CfnWebACL.RuleActionProperty(
        block=wafv2.CfnWebACL.BlockActionProperty(
            custom_response=wafv2.CfnWebACL.CustomResponseProperty(
                response_code=429,
                custom_response_body_key=_RATE_LIMITED,
                response_headers=[
                    wafv2.CfnWebACL.CustomHTTPHeaderProperty(name="Retry-After", value="60")
                ],
            )
        )
    )

    def rate_rule(
        name: str, priority: int, rate: wafv2.CfnWebACL.RateBasedStatementProperty
    ) -> wafv2.CfnWebACL.RuleProperty:
        return wafv2.CfnWebACL.RuleProperty(
            name=name,
            priority=priority,
            action=throttled,
            statement=wafv2.CfnWebACL.StatementProperty(rate_based_statement=rate),
            visibility_config=visibility(name),
        )

    on_auth_routes = wafv2.CfnWebACL.StatementProperty(
        byte_match_statement=wafv2.CfnWebACL.ByteMatchStatementProperty(
            field_to_match=wafv2.CfnWebACL.FieldToMatchProperty(uri_path={}),
            positional_constraint="CONTAINS",
            search_string="/v1/auth/",
            text_transformations=[
                wafv2.CfnWebACL.TextTransformationProperty(priority=0, type="LOWERCASE")
            ],
        )
    )
    by_bearer = wafv2.CfnWebACL.RateBasedStatementCustomKeyProperty(
        header=wafv2.CfnWebACL.RateLimitHeaderProperty(
            name="authorization",
            text_transformations=[
                wafv2.CfnWebACL.TextTransformationProperty(priority=0, type="NONE")
            ],
        )
    )

    return wafv2.CfnWebACL(
        scope,
        "WebAcl",
        scope="REGIONAL",
        default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
        custom_response_bodies={
            _RATE_LIMITED: wafv2.CfnWebACL.CustomResponseBodyProperty(
                content_type="APPLICATION_JSON",
                content=json.dumps(
                    {"error": {"code": "rate_limited", "message": "too many requests; retry later"}}
                ),
            )
        },
        visibility_config=visibility(f"{config.prefix}-waf"),
        rules=[
            rate_rule(
                "rate-limit-per-ip",
                0,
                wafv2.CfnWebACL.RateBasedStatementProperty(
                    limit=config.api_rate_limit * 300, aggregate_key_type="IP"
                ),
            ),
            rate_rule(
                "auth-rate-limit-per-ip",
                1,
                wafv2.CfnWebACL.RateBasedStatementProperty(
                    limit=AUTH_REQUESTS_PER_IP,
                    aggregate_key_type="IP",
                    scope_down_statement=on_auth_routes,
                ),
            ),
            rate_rule(  # requests without the header (the auth routes) are not counted
                "rate-limit-per-caller",
                2,
                wafv2.CfnWebACL.RateBasedStatementProperty(
                    limit=int(config.api_rate_limit * 300 * CALLER_SHARE),
                    aggregate_key_type="CUSTOM_KEYS",
                    custom_keys=[by_bearer],
                ),
            ),
            wafv2.CfnWebACL.RuleProperty(
                name="aws-known-bad-inputs",
                priority=3,
                override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
                statement=wafv2.CfnWebACL.StatementProperty(
                    managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                        vendor_name="AWS", name="AWSManagedRulesKnownBadInputsRuleSet"
                    )
                ),
                visibility_config=visibility("aws-known-bad-inputs"),
            ),
        ],
    )
