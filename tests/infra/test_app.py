"""The CDK app: synth, cdk-nag, cfn-lint, and the essential properties of every construct."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match

from tests.infra.conftest import Synth

pytestmark = pytest.mark.infra


def resources(template: Any, type_: str) -> dict[str, dict[str, Any]]:
    """Logical id → resource of every `type_` resource in a Template."""
    return dict(template.find_resources(type_))


# --- synth, cdk-nag, cfn-lint ----------------------------------------------------------------


def test_both_stages_synthesise_without_an_account(dev: Synth, prod: Synth) -> None:
    for synth in (dev, prod):
        assert sorted(p.name for p in synth.outdir.glob("*.template.json")) == sorted(
            f"{name}.template.json" for name in synth.templates()
        )
    assert (
        dev.data.stack_name == "Tessera-dev-Data"
        and prod.app_stack.stack_name == "Tessera-prod-App"
    )


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_cdk_nag_aws_solutions_has_no_unacknowledged_finding(
    stage: str, request: pytest.FixtureRequest
) -> None:
    from cdk_nag import AwsSolutionsChecks

    synth: Synth = request.getfixturevalue(stage)
    report = AwsSolutionsChecks().validate_scope(synth.app)
    findings = [
        f"{v.rule_name} at {[r.construct_path for r in v.violating_resources]}"
        for v in report.violations
    ]
    assert findings == [], "\n".join(findings)
    assert report.success


def _acknowledgements(root: Any) -> Iterator[tuple[str, str, str]]:
    from aws_cdk import Validations

    key = Validations.ACKNOWLEDGED_RULES_METADATA_KEY
    stack = [root]
    while stack:
        node = stack.pop()
        for entry in node.node.metadata:
            if entry.type == key:
                for rule, reason in entry.data.items():
                    yield node.node.path, rule, reason
        stack.extend(node.node.children)


def test_every_acknowledgement_names_a_rule_and_a_specific_reason(dev: Synth) -> None:
    # (CDK acknowledges some of its own CloudFormation-Validate rules; those are not ours.)
    acks = [a for a in _acknowledgements(dev.app) if "AwsSolutions-" in a[1]]
    assert len(acks) > 10, "expected acknowledged findings (e.g. the health check)"
    for path, rule, reason in acks:
        assert len(reason) >= 40 and "TODO" not in reason, (path, rule, reason)


# cfn-lint rules ignored, with the reason:
# W3005 (redundant DependsOn): CDK makes a Lambda/state machine depend on its whole role
#   construct (role *and* its policy) so the policy exists before first use; the role half is
#   redundant with the GetAtt but harmless, and the policy half is what matters.
CFN_LINT_IGNORED = ["W3005"]


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_cfn_lint_reports_nothing_on_any_template(
    stage: str, request: pytest.FixtureRequest
) -> None:
    from cfnlint.api import ManualArgs, lint_file

    synth: Synth = request.getfixturevalue(stage)
    problems = []
    for path in sorted(synth.outdir.glob("*.template.json")):
        matches = lint_file(path, config=ManualArgs(ignore_checks=CFN_LINT_IGNORED))
        problems += [f"{path.name}: {m}" for m in matches]
    assert problems == [], "\n".join(problems)


# --- data stack -------------------------------------------------------------------------------


def test_every_kms_key_rotates_and_is_retained(dev: Synth) -> None:
    keys = {
        **resources(dev.data_template, "AWS::KMS::Key"),
        **resources(dev.app_template, "AWS::KMS::Key"),
    }
    assert len(keys) == 4  # blocks, database, block-key secret, messaging
    for key in keys.values():
        assert key["Properties"]["EnableKeyRotation"] is True
        assert key["DeletionPolicy"] == "Retain"


def test_blocks_bucket_is_private_tls_only_kms_encrypted_and_logged(dev: Synth) -> None:
    buckets = resources(dev.data_template, "AWS::S3::Bucket")
    blocks = next(b for b in buckets.values() if "LifecycleConfiguration" in b["Properties"]
                  and "CorsConfiguration" in b["Properties"])  # fmt: skip
    props = blocks["Properties"]
    sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert "KMSMasterKeyID" in sse["ServerSideEncryptionByDefault"]
    assert sse["BucketKeyEnabled"] is True
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True,
        "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
    }  # fmt: skip
    assert props["LoggingConfiguration"]["DestinationBucketName"]
    assert blocks["DeletionPolicy"] == "Retain"
    # Every bucket denies plain HTTP.
    policies = resources(dev.data_template, "AWS::S3::BucketPolicy").values()
    assert len(policies) == len(buckets)
    for policy in policies:
        denies = [s for s in policy["Properties"]["PolicyDocument"]["Statement"]
                  if s["Effect"] == "Deny"]  # fmt: skip
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in denies)


def test_blocks_bucket_lifecycle_and_cors(dev: Synth) -> None:
    dev.data_template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "LifecycleConfiguration": {
                "Rules": Match.array_with([
                    Match.object_like({"AbortIncompleteMultipartUpload":
                                       {"DaysAfterInitiation": 1}}),
                ])
            },
            "CorsConfiguration": {
                "CorsRules": [Match.object_like({
                    "AllowedMethods": Match.array_with(["PUT", "GET"]),
                    "ExposedHeaders": Match.array_with(["x-amz-checksum-sha256"]),
                })]
            },
        },
    )  # fmt: skip


def test_blocks_bucket_keeps_what_is_deleted_for_a_while(dev: Synth) -> None:
    """Versioned: an object gc deletes stays a noncurrent version, a canonical block for 30
    days (time for a gc bug to show), any other key for a day (each staged copy is deleted
    once promoted: kept longer, it would double what new data costs). Every prefix of the
    key layout has its rule."""
    from tessera.domain import object_keys

    bucket = next(b["Properties"] for b in resources(dev.data_template, "AWS::S3::Bucket")
                  .values() if "BucketName" in b["Properties"])  # fmt: skip
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = bucket["LifecycleConfiguration"]["Rules"]
    kept = {r["Prefix"]: r["NoncurrentVersionExpiration"]["NoncurrentDays"]
            for r in rules if "NoncurrentVersionExpiration" in r}  # fmt: skip
    prefixes = {v for k, v in vars(object_keys).items() if k.endswith("_PREFIX")}
    assert set(kept) == prefixes
    assert kept[object_keys.CANONICAL_PREFIX] == 30
    assert {days for prefix, days in kept.items() if prefix != "blocks/"} == {1}
    assert any(r.get("ExpiredObjectDeleteMarker") for r in rules)


def test_no_lifecycle_rule_deletes_or_archives_what_the_database_relies_on(dev: Synth) -> None:
    """S3 counts an object's age, not its last read nor whether a version needs it: an
    unpromoted staged copy is a commit's only bytes, and an archived `live` block is never
    restored (downloads fail and scrub quarantines it). gc and cold storage do both."""
    for bucket in resources(dev.data_template, "AWS::S3::Bucket").values():
        if "BucketName" not in bucket["Properties"]:
            continue  # the access-log bucket
        for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]:
            assert "ExpirationInDays" not in rule and "Transitions" not in rule, rule


def test_changes_table(dev: Synth, prod: Synth) -> None:
    dev.data_template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [{"AttributeName": "ns_id", "KeyType": "HASH"},
                          {"AttributeName": "seq", "KeyType": "RANGE"}],
            "AttributeDefinitions": Match.array_with([
                {"AttributeName": "ns_id", "AttributeType": "N"},
                {"AttributeName": "seq", "AttributeType": "N"}]),
            "BillingMode": "PAY_PER_REQUEST",
            "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
            "StreamSpecification": {"StreamViewType": "NEW_IMAGE"},
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "SSESpecification": Match.object_like({"SSEEnabled": True, "SSEType": "KMS"}),
        },
    )  # fmt: skip
    prod.data_template.has_resource(
        "AWS::DynamoDB::Table",
        {
            "DeletionPolicy": "Retain",
            "Properties": Match.object_like({"DeletionProtectionEnabled": True}),
        },
    )


def test_aurora_serverless_v2_encrypted_backed_up_and_protected_in_prod(
    dev: Synth, prod: Synth
) -> None:
    for synth in (dev, prod):
        synth.data_template.has_resource_properties(
            "AWS::RDS::DBCluster",
            {
                "Engine": "aurora-postgresql",
                "StorageEncrypted": True,
                "KmsKeyId": Match.any_value(),
                "EnableIAMDatabaseAuthentication": True,
                "BackupRetentionPeriod": Match.any_value(),
                "ServerlessV2ScalingConfiguration": Match.any_value(),
                "EnableCloudwatchLogsExports": ["postgresql"],
            },
        )
        synth.data_template.has_resource_properties(
            "AWS::RDS::DBInstance", {"DBInstanceClass": "db.serverless"}
        )
    prod.data_template.has_resource(
        "AWS::RDS::DBCluster",
        {"DeletionPolicy": "Retain",
         "Properties": Match.object_like({"DeletionProtection": True,
                                          "BackupRetentionPeriod": 30})},
    )  # fmt: skip
    dev_cluster = next(iter(resources(dev.data_template, "AWS::RDS::DBCluster").values()))
    assert dev_cluster["Properties"]["ServerlessV2ScalingConfiguration"]["MinCapacity"] == 0


def test_rds_proxy_requires_iam_auth_and_tls(dev: Synth, prod: Synth) -> None:
    dev.data_template.has_resource_properties(
        "AWS::RDS::DBProxy",
        # (two secrets: the master user's and the runtime role's; IAM for each)
        {"RequireTLS": True, "Auth": [Match.object_like({"IAMAuth": "REQUIRED"})] * 2},
    )
    # proxy names are unique per account and region: CDK's default ("Proxy") let only one
    # stage (or one app) deploy there
    names = [
        proxy["Properties"]["DBProxyName"]
        for synth in (dev, prod)
        for proxy in resources(synth.data_template, "AWS::RDS::DBProxy").values()
    ]
    assert names == ["tessera-dev-proxy", "tessera-prod-proxy"]


def test_the_functions_connect_as_the_runtime_role_never_the_master_user(dev: Synth) -> None:
    """The master user owns the schema: a function taken over could drop every table. The
    functions connect as `tessera_app` (rows only: `tessera.metadata.roles`), through the
    proxy, which holds both secrets; each secret rotates."""
    proxy = next(iter(resources(dev.data_template, "AWS::RDS::DBProxy").values()))
    assert len(proxy["Properties"]["Auth"]) == 2
    schedules = resources(dev.data_template, "AWS::SecretsManager::RotationSchedule").values()
    # the runtime role's is not rotated as it is made: its role does not exist until the
    # app stack's migrate function makes it
    assert sorted(str(r["Properties"].get("RotateImmediatelyOnUpdate")) for r in schedules) == [
        "False",
        "None",
    ]
    app_secret = next(
        secret
        for secret in resources(dev.data_template, "AWS::SecretsManager::Secret").values()
        if "tessera_app" in json.dumps(secret["Properties"])
    )
    assert app_secret["Properties"]["KmsKeyId"]
    functions = resources(dev.app_template, "AWS::Lambda::Function")
    users = {
        f["Properties"]["Environment"]["Variables"]["TESSERA_DB_USER"]
        for f in functions.values()
        if "TESSERA_DB_USER" in f["Properties"].get("Environment", {}).get("Variables", {})
    }
    assert users == {"tessera_app"}
    policies = json.dumps(resources(dev.app_template, "AWS::IAM::Policy"))
    assert "rds-db:connect" in policies
    assert ":dbuser:" in policies and "/tessera_app" in policies
    assert '/tessera"' not in policies  # no grant to connect as the master user


def test_vpc_has_no_nat_and_the_endpoints_the_functions_use(dev: Synth) -> None:
    dev.data_template.resource_count_is("AWS::EC2::NatGateway", 0)
    dev.data_template.resource_count_is("AWS::EC2::InternetGateway", 0)
    endpoints = resources(dev.data_template, "AWS::EC2::VPCEndpoint").values()
    names = json.dumps([e["Properties"]["ServiceName"] for e in endpoints])
    for service in ("s3", "dynamodb", "kms", "secretsmanager", "ssm"):
        assert f".{service}" in names or f'{service}"' in names, service
    gateway = [e for e in endpoints if e["Properties"].get("VpcEndpointType") != "Interface"]
    assert len(gateway) == 2
    dev.data_template.resource_count_is("AWS::EC2::FlowLog", 1)


# --- app stack --------------------------------------------------------------------------------


def test_every_api_method_but_health_uses_the_cognito_authorizer(dev: Synth) -> None:
    methods = resources(dev.app_template, "AWS::ApiGateway::Method")
    paths = {lid: r for lid, r in resources(dev.app_template, "AWS::ApiGateway::Resource").items()}
    unauthenticated = []
    for lid, method in methods.items():
        props = method["Properties"]
        if props["AuthorizationType"] == "COGNITO_USER_POOLS":
            assert "AuthorizerId" in props, lid
            continue
        part = paths[props["ResourceId"]["Ref"]]["Properties"]["PathPart"]
        unauthenticated.append((props["HttpMethod"], part))
    assert sorted(unauthenticated) == [("GET", "health"), ("POST", "revoke"), ("POST", "token")]
    # GET /v1/health, ANY /v1/{proxy+}, POST /v1/list_folder/longpoll, POST /v1/auth/token,
    # POST /v1/auth/revoke
    assert len(methods) == 5


def test_token_routes_have_no_authorizer_but_validation_throttling_and_their_own_function(
    dev: Synth,
) -> None:
    methods = resources(dev.app_template, "AWS::ApiGateway::Method").values()
    routes = [m["Properties"] for m in methods if "AuthFunction" in json.dumps(m)]
    assert len(routes) == 2  # token, revoke
    for route in routes:
        assert route["HttpMethod"] == "POST"
        assert route["AuthorizationType"] == "NONE" and "AuthorizerId" not in route
        assert route["RequestValidatorId"] and route["RequestModels"]["application/json"]
    dev.app_template.has_resource_properties(
        "AWS::ApiGateway::Model",
        {"Schema": Match.object_like({"additionalProperties": False,
         "properties": Match.object_like({"refresh_token": Match.any_value()})})},
    )  # fmt: skip
    dev.app_template.has_resource_properties(
        "AWS::ApiGateway::Model",
        {"Schema": Match.object_like({"required": ["refresh_token"]})},
    )  # the revoke's
    for path in ("token", "revoke"):
        dev.app_template.has_resource_properties(
            "AWS::ApiGateway::Stage",
            {"MethodSettings": Match.array_with([Match.object_like({
                "HttpMethod": "POST", "ResourcePath": f"/~1v1~1auth~1{path}",
                "ThrottlingRateLimit": 5, "ThrottlingBurstLimit": 10})])},
        )  # fmt: skip
    functions = resources(dev.app_template, "AWS::Lambda::Function")
    auth_id, auth = next((lid, f) for lid, f in functions.items() if lid.startswith("AuthFunction"))
    props = auth["Properties"]
    assert "VpcConfig" not in props  # Cognito's public endpoint; no NAT in the VPC
    assert set(props["Environment"]["Variables"]) >= {
        "TESSERA_USER_POOL_ID", "TESSERA_USER_POOL_CLIENT_ID"}  # fmt: skip
    assert not {n for n in props["Environment"]["Variables"] if n.startswith("TESSERA_DB")}
    # Least privilege: its own logs and X-Ray, and the admin sign-in (the one call that takes
    # the caller's address for threat protection) on the pool alone; nothing on the data.
    role = props["Role"]["Fn::GetAtt"][0]
    statements = [
        st
        for p in resources(dev.app_template, "AWS::IAM::Policy").values()
        if {"Ref": role} in p["Properties"]["Roles"]
        for st in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    actions = {
        a for st in statements
        for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    }  # fmt: skip
    assert "cognito-idp:AdminInitiateAuth" in actions
    others = actions - {"cognito-idp:AdminInitiateAuth"}
    assert others and all(a.split(":")[0] in {"logs", "xray"} for a in others), (auth_id, actions)
    [sign_in] = [st for st in statements if st["Action"] == "cognito-idp:AdminInitiateAuth"]
    [pool_id] = resources(dev.data_template, "AWS::Cognito::UserPool")  # the data stack's
    assert re.fullmatch(f".*FnGetAtt{pool_id}Arn.*", sign_in["Resource"]["Fn::ImportValue"])
    [client] = resources(dev.data_template, "AWS::Cognito::UserPoolClient").values()
    assert "ALLOW_ADMIN_USER_PASSWORD_AUTH" in client["Properties"]["ExplicitAuthFlows"]


def test_api_stage_logs_traces_throttles_and_validates(dev: Synth) -> None:
    dev.app_template.has_resource_properties(
        "AWS::ApiGateway::Stage",
        {
            "TracingEnabled": True,
            "AccessLogSetting": Match.object_like({"DestinationArn": Match.any_value()}),
            "MethodSettings": Match.array_with([Match.object_like({
                "HttpMethod": "*", "ResourcePath": "/*",
                "ThrottlingRateLimit": 50, "ThrottlingBurstLimit": 100,
                "LoggingLevel": "ERROR", "DataTraceEnabled": False})]),
        },
    )  # fmt: skip
    dev.app_template.has_resource_properties(
        "AWS::ApiGateway::RequestValidator",
        {"ValidateRequestBody": True, "ValidateRequestParameters": True},
    )
    dev.app_template.resource_count_is("AWS::WAFv2::WebACLAssociation", 1)


def test_no_one_client_can_take_the_shared_throttles(dev: Synth) -> None:
    """The stage's and the auth routes' throttles are shared by every caller: one address
    sending 50 sign-ins a second refused everyone's token refresh (all devices signed out
    within the hour), and one runaway client took the whole stage. WAF limits each."""
    [acl] = resources(dev.app_template, "AWS::WAFv2::WebACL").values()
    rules = {r["Name"]: r for r in acl["Properties"]["Rules"]}
    auth = rules["auth-rate-limit-per-ip"]["Statement"]["RateBasedStatement"]
    assert auth["AggregateKeyType"] == "IP" and auth["Limit"] == 500
    assert auth["ScopeDownStatement"]["ByteMatchStatement"]["SearchString"] == "/v1/auth/"
    caller = rules["rate-limit-per-caller"]["Statement"]["RateBasedStatement"]
    assert caller["CustomKeys"] == [
        {"Header": {"Name": "authorization", "TextTransformations": [
            {"Priority": 0, "Type": "NONE"}]}}
    ]  # fmt: skip
    assert caller["Limit"] == 50 * 300 // 2  # half the dev stage's 5-minute rate
    assert len({r["Priority"] for r in rules.values()}) == len(rules)
    # blocked as the API throttles: 429 in its error shape, with when to come back
    for name in ("rate-limit-per-ip", "auth-rate-limit-per-ip", "rate-limit-per-caller"):
        answer = rules[name]["Action"]["Block"]["CustomResponse"]
        assert answer["ResponseCode"] == 429, name
        assert answer["ResponseHeaders"] == [{"Name": "Retry-After", "Value": "60"}]
        body = acl["Properties"]["CustomResponseBodies"][answer["CustomResponseBodyKey"]]
        assert json.loads(body["Content"])["error"]["code"] == "rate_limited"


def test_gateway_errors_use_the_api_error_shape_and_429_says_when_to_retry(dev: Synth) -> None:
    responses = {
        r["Properties"]["ResponseType"]: r["Properties"]
        for r in resources(dev.app_template, "AWS::ApiGateway::GatewayResponse").values()
    }
    for kind in ("THROTTLED", "QUOTA_EXCEEDED"):
        assert responses[kind]["StatusCode"] == "429"
        assert responses[kind]["ResponseParameters"]["gatewayresponse.header.Retry-After"] == "'1'"
        body = json.loads(responses[kind]["ResponseTemplates"]["application/json"])
        assert body["error"]["code"] == "rate_limited"
    assert responses["UNAUTHORIZED"]["StatusCode"] == "401"
    # a throttled function (its reserved concurrency full) had been a bare 504: retried at
    # once, eight times, where a 503 with Retry-After is waited out
    failed = responses["INTEGRATION_FAILURE"]
    assert failed["StatusCode"] == "503"
    assert failed["ResponseParameters"]["gatewayresponse.header.Retry-After"] == "'2'"
    assert json.loads(failed["ResponseTemplates"]["application/json"])["error"]["code"] == (
        "unavailable"
    )
    # a malformed body is 422 `invalid` in either mode; too large, 413 `too_large`; a
    # function past the 29 s integration timeout, a 503 to retry, in the API's error shape
    wanted = {
        "BAD_REQUEST_BODY": ("422", "invalid"),
        "REQUEST_TOO_LARGE": ("413", "too_large"),
        "INTEGRATION_TIMEOUT": ("503", "unavailable"),
    }
    for kind, (status, code) in wanted.items():
        body = json.loads(responses[kind]["ResponseTemplates"]["application/json"])
        assert (responses[kind]["StatusCode"], body["error"]["code"]) == (status, code), kind
    for props in responses.values():
        assert set(json.loads(props["ResponseTemplates"]["application/json"])) == {"error"}


def test_prod_reserves_concurrency_and_keeps_api_environments_warm(prod: Synth) -> None:
    prod.app_template.has_resource_properties(
        "AWS::Lambda::Alias",
        {"Name": "live", "ProvisionedConcurrencyConfig": {"ProvisionedConcurrentExecutions": 2}},
    )
    functions = resources(prod.app_template, "AWS::Lambda::Function")
    reserved = {lid.split("Function")[0]: f["Properties"].get("ReservedConcurrentExecutions")
                for lid, f in functions.items()}  # fmt: skip
    assert reserved["Api"] == 200 and reserved["Longpoll"] == 300
    methods = resources(prod.app_template, "AWS::ApiGateway::Method").values()
    proxy = next(m for m in methods if m["Properties"]["HttpMethod"] == "ANY")
    assert "Aliaslive" in json.dumps(proxy["Properties"]["Integration"]["Uri"])


def test_the_concurrency_a_stage_reserves_is_what_deploy_md_asks_of_the_account(
    dev: Synth, prod: Synth
) -> None:
    """docs/deploy.md ("What you need") gives these sums: an account must have 100 more."""
    for synth, total in ((dev, 13), (prod, 513)):
        functions = resources(synth.app_template, "AWS::Lambda::Function").values()
        reserved = [f["Properties"].get("ReservedConcurrentExecutions", 0) for f in functions]
        assert sum(reserved) == total


def test_longpoll_has_its_own_function_and_timeout_within_the_gateway_limit(dev: Synth) -> None:
    methods = resources(dev.app_template, "AWS::ApiGateway::Method").values()
    post = next(m for m in methods if "LongpollFunction" in json.dumps(m))
    integration = post["Properties"]["Integration"]
    assert integration["TimeoutInMillis"] <= 29_000
    assert "LongpollFunction" in json.dumps(integration["Uri"])
    assert post["Properties"]["RequestModels"]


def test_cognito_pool_password_policy_and_threat_protection(dev: Synth) -> None:
    dev.data_template.has_resource_properties(
        "AWS::Cognito::UserPool",
        {
            "Policies": {"PasswordPolicy": Match.object_like({
                "MinimumLength": 12, "RequireLowercase": True, "RequireUppercase": True,
                "RequireNumbers": True, "RequireSymbols": True})},
            "UserPoolTier": "PLUS",
            "UserPoolAddOns": {"AdvancedSecurityMode": "ENFORCED"},
            # the email claim names the caller: a new address counts once verified
            "UserAttributeUpdateSettings": {"AttributesRequireVerificationBeforeUpdate": ["email"]},
        },
    )  # fmt: skip
    dev.data_template.has_resource_properties(
        "AWS::Cognito::UserPoolClient",
        {"GenerateSecret": False, "ExplicitAuthFlows": Match.array_with(
            ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_USER_SRP_AUTH"]), "WriteAttributes": []},
    )  # fmt: skip


def test_the_user_pool_lives_with_the_data(dev: Synth, prod: Synth) -> None:
    """Users are their pool's `sub`s: the app stack is redeployed freely, a pool must not be."""
    for synth in (dev, prod):
        synth.app_template.resource_count_is("AWS::Cognito::UserPool", 0)
        synth.data_template.resource_count_is("AWS::Cognito::UserPool", 1)
    prod.data_template.has_resource("AWS::Cognito::UserPool", {"DeletionPolicy": "Retain"})


def test_functions_arm64_python312_traced_with_layer_and_powertools(dev: Synth) -> None:
    functions = {
        lid: f for lid, f in resources(dev.app_template, "AWS::Lambda::Function").items()
        if f["Properties"].get("Runtime", "").startswith("python")
    }  # fmt: skip
    assert len(functions) == 10
    for lid, fn in functions.items():
        props = fn["Properties"]
        assert props["Architectures"] == ["arm64"], lid
        assert props["Runtime"] == "python3.12", lid
        assert props["TracingConfig"] == {"Mode": "Active"}, lid
        assert len(props["Layers"]) == 1, lid
        env = props["Environment"]["Variables"]
        for name in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "LOG_LEVEL"):
            assert env[name], (lid, name)


def test_db_functions_get_proxy_iam_settings_and_the_migration_gets_the_secret(dev: Synth) -> None:
    functions = resources(dev.app_template, "AWS::Lambda::Function")
    env = {lid: f["Properties"].get("Environment", {}).get("Variables", {})
           for lid, f in functions.items()}  # fmt: skip
    api = next(v for lid, v in env.items() if lid.startswith("ApiFunction"))
    assert api["TESSERA_DB_IAM_AUTH"] == "1" and api["TESSERA_DB_PORT"] == "5432"
    for name in (
        "TESSERA_BUCKET",
        "TESSERA_CHANGES_TABLE",
        "TESSERA_KMS_KEY_ID",
        "TESSERA_KEY_PARAM_PREFIX",
    ):
        assert api[name], name
    # Cognito's ids are the token endpoint's alone (API Gateway's authorizer checks tokens)
    users = {lid for lid, v in env.items() if "TESSERA_USER_POOL_ID" in v}
    assert len(users) == 1 and next(iter(users)).startswith("AuthFunction"), users
    router = next(v for lid, v in env.items() if lid.startswith("ChangeRouterFunction"))
    assert router["TESSERA_EVENT_BUS"] and router["TESSERA_EVENT_SOURCE"] == "tessera"
    assert "TESSERA_DB_HOST" not in router  # outside the VPC, no database
    migrate = next(v for lid, v in env.items() if lid.startswith("MigrateFunction"))
    assert migrate["TESSERA_DB_SECRET_ARN"] and migrate["TESSERA_KEY_PARAM_PREFIX"]
    assert migrate["TESSERA_APP_DB_SECRET_ARN"]
    dev.app_template.has_resource_properties(
        "Custom::TesseraSchema", {"Fingerprint": Match.string_like_regexp("^[0-9a-f]{64}$")}
    )


def test_stream_pipe_dedup_rule_and_queue_trigger(dev: Synth) -> None:
    pipes = resources(dev.app_template, "AWS::Pipes::Pipe").values()
    assert len(pipes) == 1
    stream = next(iter(pipes))["Properties"]
    params = stream["SourceParameters"]["DynamoDBStreamParameters"]
    assert params["OnPartialBatchItemFailure"] == "AUTOMATIC_BISECT"
    assert params["DeadLetterConfig"]["Arn"]
    assert "StreamArn" in json.dumps(stream["Source"])
    # EventBridge Pipes' documented permissions for a DynamoDB stream source
    role = json.dumps(resources(dev.app_template, "AWS::IAM::Policy"))
    for action in ("DescribeStream", "GetRecords", "GetShardIterator", "ListStreams"):
        assert f"dynamodb:{action}" in role
    assert "ChangeRouterFunction" in json.dumps(stream["Target"])
    dev.app_template.has_resource_properties(
        "AWS::Events::Rule",
        {"EventPattern": {"source": ["tessera"], "detail-type": ["tessera.file"]},
         "Targets": [Match.object_like({"Arn": {"Fn::GetAtt": [Match.string_like_regexp(
             "DedupQueue"), "Arn"]}, "DeadLetterConfig": Match.any_value(),
             "RetryPolicy": Match.any_value()})]},
    )  # fmt: skip
    sources = resources(dev.app_template, "AWS::Lambda::EventSourceMapping").values()
    mappings = [json.dumps(m["Properties"]) for m in sources]
    assert any("DedupQueue" in m and "DedupVerifyFunction" in m for m in mappings)


def test_block_reports_reach_scrub_by_a_queue(dev: Synth) -> None:
    """A `block_reported` event (POST /v1/blocks/report) on the bus is queued for the scrub
    function, which the queue triggers: a reported block is checked within a minute."""
    dev.app_template.has_resource_properties(
        "AWS::Events::Rule",
        {"EventPattern": {"source": ["tessera"], "detail-type": ["tessera.block_reported"]},
         "Targets": [Match.object_like({"Arn": {"Fn::GetAtt": [Match.string_like_regexp(
             "ScrubQueue"), "Arn"]}, "DeadLetterConfig": Match.any_value()})]},
    )  # fmt: skip
    mappings = [m["Properties"] for m in
                resources(dev.app_template, "AWS::Lambda::EventSourceMapping").values()
                if "ScrubQueue" in json.dumps(m["Properties"])]  # fmt: skip
    assert len(mappings) == 1 and "ScrubFunction" in json.dumps(mappings[0])


def test_restore_completions_reach_cold_storage_by_a_queue(dev: Synth) -> None:
    """S3 sends its events to EventBridge (set on the bucket itself, no custom resource);
    a rule on the default bus queues the blocks bucket's restore completions, and the queue
    triggers the cold-storage function."""
    dev.data_template.has_resource_properties(
        "AWS::S3::Bucket",
        {"NotificationConfiguration": {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}},
    )
    assert not resources(dev.data_template, "Custom::S3BucketNotifications")
    rules = [r["Properties"] for r in resources(dev.app_template, "AWS::Events::Rule").values()
             if r["Properties"]["EventPattern"].get("source") == ["aws.s3"]]  # fmt: skip
    assert len(rules) == 1 and "EventBusName" not in rules[0]  # the default bus
    pattern = rules[0]["EventPattern"]
    assert pattern["detail-type"] == ["Object Restore Completed"]
    assert pattern["detail"]["object"] == {"key": [{"prefix": "blocks/"}]}
    assert "-blocks-" in json.dumps(pattern["detail"]["bucket"])
    target = json.dumps(rules[0]["Targets"])
    assert "RestoresQueue" in target and "DeadLetterConfig" in target
    mappings = [m["Properties"] for m in
                resources(dev.app_template, "AWS::Lambda::EventSourceMapping").values()
                if "RestoresQueue" in json.dumps(m["Properties"])]  # fmt: skip
    assert len(mappings) == 1 and "ColdStorageFunction" in json.dumps(mappings[0])
    assert mappings[0]["BatchSize"] == 100


def test_every_queue_is_kms_encrypted_tls_only_and_every_dlq_alarmed(dev: Synth) -> None:
    queues = resources(dev.app_template, "AWS::SQS::Queue")
    for lid, queue in queues.items():
        assert "KmsMasterKeyId" in queue["Properties"], lid
    policies = resources(dev.app_template, "AWS::SQS::QueuePolicy").values()
    tls_only = [q for p in policies for s in p["Properties"]["PolicyDocument"]["Statement"]
                if s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
                for q in p["Properties"]["Queues"]]  # fmt: skip
    assert len(tls_only) == len(queues)
    dlqs = [lid for lid in queues if "Dlq" in lid]
    # stream pipe, the two bus rules, dedup queue, scrub queue, restore rule, restores queue,
    # schedules, relay runs
    assert len(dlqs) == 9
    alarms = json.dumps(resources(dev.app_template, "AWS::CloudWatch::Alarm"))
    for lid in dlqs:
        assert lid in alarms, f"no alarm on {lid}"
    dev.app_template.has_resource_properties(
        "AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()}
    )


def test_one_state_machine_per_workflow_with_retries_catch_alarm_logs_and_tracing(
    dev: Synth,
) -> None:
    from tessera.maintenance.workflows import WORKFLOWS

    machines = resources(dev.app_template, "AWS::StepFunctions::StateMachine")
    assert len(machines) == len(WORKFLOWS) == 4
    for lid, machine in machines.items():
        props = machine["Properties"]
        assert props["TracingConfiguration"] == {"Enabled": True}, lid
        assert props["LoggingConfiguration"]["Level"] == "ALL", lid
        definition = json.dumps(props["DefinitionString"])
        assert '\\"Retry\\"' in definition and '\\"Catch\\"' in definition, lid
        assert "sns:publish" in definition and "NotifyFailure" in definition, lid
        assert '\\"step\\"' in definition, lid


def test_each_workflow_runs_on_the_schedule_its_spec_names(dev: Synth) -> None:
    """The schedules have one home, `tessera.maintenance.workflows` (the CLI lists them):
    the app once kept its own, and the two disagreed on every workflow (cold storage:
    hourly in one, daily in the other)."""
    from tessera.maintenance.workflows import WORKFLOWS

    schedules = {p["Properties"]["ScheduleExpression"] for p in
                 resources(dev.app_template, "AWS::Scheduler::Schedule").values()}  # fmt: skip
    assert schedules == {wf.schedule for wf in WORKFLOWS.values()} | {"rate(1 minute)"}


def test_with_failure_alarm_catches_every_task_and_keeps_the_retries() -> None:
    from infra.constructs.workflows import with_failure_alarm
    from tessera.maintenance.workflows import WORKFLOWS, state_machine_definition

    asl = with_failure_alarm(state_machine_definition("gc", "arn:fn"), "arn:topic", "gc")
    tasks = {n: s for n, s in asl["States"].items() if s["Type"] == "Task" and n != "NotifyFailure"}
    assert sorted(tasks) == sorted(WORKFLOWS["gc"].step_names)  # purge_trash ... recount_usage
    assert "recount_usage" in tasks
    for task in tasks.values():
        assert task["Retry"] and task["Catch"][0]["Next"] == "NotifyFailure"
    assert asl["States"]["NotifyFailure"]["Parameters"]["TopicArn"] == "arn:topic"
    assert asl["States"]["NotifyFailure"]["Next"] == "Failed"
    assert asl["States"]["Failed"]["Type"] == "Fail"


def test_code_reading_the_schema_deploys_after_the_migrations(dev: Synth) -> None:
    """A new version of a function may read a column its migration adds."""
    schema = next(iter(resources(dev.app_template, "Custom::TesseraSchema")))
    functions = resources(dev.app_template, "AWS::Lambda::Function")
    waiting = {name for name, f in functions.items() if schema in f.get("DependsOn", [])}
    for fn in ("Api", "Longpoll", "OutboxRelay", "Gc", "DedupVerify", "Scrub", "ColdStorage"):
        assert any(name.startswith(f"{fn}Function") for name in waiting), (fn, sorted(waiting))


def test_schedules(dev: Synth) -> None:
    schedules = resources(dev.app_template, "AWS::Scheduler::Schedule").values()
    expressions = sorted(s["Properties"]["ScheduleExpression"] for s in schedules)
    assert expressions == sorted([
        "rate(1 hour)", "cron(15 3 * * ? *)", "cron(15 4 * * ? *)", "cron(15 5 ? * SUN *)",
        "rate(1 minute)",
    ])  # fmt: skip
    schema = next(iter(resources(dev.app_template, "Custom::TesseraSchema")))
    for schedule in schedules:
        target = schedule["Properties"]["Target"]
        assert target["DeadLetterConfig"]["Arn"] and "RetryPolicy" in target
        assert schema in schedule["DependsOn"]  # nothing runs before the schema exists
    # failed runs reach the (KMS-encrypted) dead-letter queue through the schedules' role
    role = next(r for r in resources(dev.app_template, "AWS::IAM::Role") if "SchedulerRole" in r)
    granted = [
        st
        for policy in resources(dev.app_template, "AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"]["Roles"]
        for st in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert any(
        "kms:GenerateDataKey" in json.dumps(st["Action"])
        and "Messaging" in json.dumps(st["Resource"])
        for st in granted
    )
    relay = next(s for s in schedules if s["Properties"]["ScheduleExpression"] == "rate(1 minute)")
    assert "OutboxRelayFunction" in json.dumps(relay["Properties"]["Target"]["Arn"])
    # the AWS mode of the local cloud sweeps on the same schedule
    from tessera.local.aws_mode import RELAY_EVERY_S

    assert RELAY_EVERY_S == 60


def test_the_database_key_reaches_its_users_only_by_way_of_dynamodb(dev: Synth) -> None:
    """The changes table shares its key with Aurora and its master secret: the functions
    that use the table, and the pipe that reads its stream, get it through DynamoDB alone
    (migrate reads the secret)."""
    statements = [
        (name, st)
        for name, policy in resources(dev.app_template, "AWS::IAM::Policy").items()
        for st in policy["Properties"]["PolicyDocument"]["Statement"]
        if "KeysDatabase" in json.dumps(st["Resource"])
    ]
    users = {name.split("Function")[0] for name, _ in statements if "FunctionRole" in name}
    assert {"Api", "Longpoll", "OutboxRelay", "DedupVerify", "Scrub", "ColdStorage"} <= users
    assert any("PipeRole" in name for name, _ in statements)
    for name, st in statements:
        if not name.startswith("MigrateFunction"):
            via = st.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
            assert "dynamodb." in json.dumps(via), (name, st)


def test_alarms_may_only_encrypt_messages_for_the_alarm_topic(dev: Synth) -> None:
    """CloudWatch needs the messaging key to send encrypted alarms, not to encrypt or
    re-encrypt anything else with it. (EventBridge's grant is CDK's SqsQueue target's.)"""
    [key] = [
        k["Properties"]["KeyPolicy"]["Statement"]
        for name, k in resources(dev.app_template, "AWS::KMS::Key").items()
        if name.startswith("Messaging")
    ]
    actions = {
        a
        for st in key
        if st["Principal"].get("Service") == "cloudwatch.amazonaws.com"
        for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    }
    assert actions == {"kms:Decrypt", "kms:GenerateDataKey*"}


def test_dashboard_and_service_alarms(dev: Synth) -> None:
    dev.app_template.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    alarms = json.dumps(resources(dev.app_template, "AWS::CloudWatch::Alarm"))
    for metric in (
        "5XXError",
        "Duration",
        "RelayLagSeconds",
        "OutboxRelayFailed",
        "OutboxDeadLettered",
        "CPUUtilization",
        "DatabaseConnections",
        "ExecutionsFailed",
    ):
        assert metric in alarms, metric  # fmt: skip
    lag = next(a["Properties"] for a in resources(dev.app_template, "AWS::CloudWatch::Alarm")
               .values() if a["Properties"].get("MetricName") == "RelayLagSeconds")  # fmt: skip
    assert lag["Namespace"] == "Tessera" and lag["Threshold"] == 180
    assert lag["Dimensions"] == [{"Name": "service", "Value": "tessera-outbox-relay"}]
    assert lag["TreatMissingData"] == "breaching"  # a relay that stopped publishing is lagging
    dead = next(a["Properties"] for a in resources(dev.app_template, "AWS::CloudWatch::Alarm")
                .values() if a["Properties"].get("MetricName") == "OutboxDeadLettered")  # fmt: skip
    assert (dead["EvaluationPeriods"], dead["DatapointsToAlarm"]) == (1, 1)  # counted once
    # latency: the api function's, not the gateway's, which long-polls' 20-25 s waits fill
    assert '"Latency"' not in alarms
    slow = next(a["Properties"] for a in resources(dev.app_template, "AWS::CloudWatch::Alarm")
                .values() if a["Properties"].get("MetricName") == "Duration")  # fmt: skip
    assert (slow["ExtendedStatistic"], slow["Threshold"]) == ("p99", 10_000)
    assert "ApiFunction" in json.dumps(slow["Dimensions"])


# --- least privilege --------------------------------------------------------------------------

# Actions that have no resource-level permissions at all: "*" is the narrowest possible.
STAR_ALLOWED = {
    "xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
    # CloudWatch Logs vended-log delivery (Step Functions execution logging) takes only "*".
    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies", "logs:DescribeLogGroups",
    # The stream pipe lists its source's streams: stream ARNs, no data (`infra.constructs.events`).
    "dynamodb:ListStreams",
}  # fmt: skip


def star_statements(template: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(policy logical id, actions) of every Allow statement on Resource "*" whose actions are
    not all in STAR_ALLOWED (key policies are exempt: there "*" means "this key")."""
    offending = []
    for lid, res in template["Resources"].items():
        if res["Type"] not in ("AWS::IAM::Policy", "AWS::IAM::Role", "AWS::IAM::ManagedPolicy"):
            continue
        docs = [res["Properties"].get("PolicyDocument")] + [
            p["PolicyDocument"] for p in res["Properties"].get("Policies", [])
        ]
        for doc in filter(None, docs):
            for st in doc["Statement"]:
                resources_ = st.get("Resource", [])
                resources_ = resources_ if isinstance(resources_, list) else [resources_]
                actions = st.get("Action", [])
                actions = actions if isinstance(actions, list) else [actions]
                if st["Effect"] == "Allow" and "*" in resources_:
                    extra = [a for a in actions if a not in STAR_ALLOWED]
                    if extra:
                        offending.append((lid, extra))
    return offending


def test_no_iam_statement_uses_resource_star_where_a_narrower_one_exists(
    dev: Synth, prod: Synth
) -> None:
    for synth in (dev, prod):
        for name, template in synth.templates().items():
            assert star_statements(template) == [], name


def test_star_statement_helper_flags_a_broad_statement() -> None:
    template = {"Resources": {"P": {"Type": "AWS::IAM::Policy", "Properties": {
        "PolicyDocument": {"Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject", "xray:PutTraceSegments"],
             "Resource": "*"},
            {"Effect": "Allow", "Action": "xray:PutTraceSegments", "Resource": "*"},
        ]}}}}}  # fmt: skip
    assert star_statements(template) == [("P", ["s3:GetObject"])]


def _actions(synth: Synth, function: str, service: str) -> set[str]:
    """The `service:` actions granted by the IAM policies of `function` (logical id prefix)."""
    found: set[str] = set()
    for lid, policy in resources(synth.app_template, "AWS::IAM::Policy").items():
        if lid.startswith(function):
            for st in policy["Properties"]["PolicyDocument"]["Statement"]:
                acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                found |= {a for a in acts if a.startswith(f"{service}:")}
    return found


def _object_grants(synth: Synth, function: str) -> set[tuple[str, str]]:
    """(s3 action, key prefix) pairs the IAM policies of `function` grant on bucket objects."""
    found: set[tuple[str, str]] = set()
    for lid, policy in resources(synth.app_template, "AWS::IAM::Policy").items():
        if lid.startswith(function):
            for st in policy["Properties"]["PolicyDocument"]["Statement"]:
                acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                arns = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                for arn in arns:
                    text = json.dumps(arn)
                    for prefix in ("staging/", "blocks/", "quarantine/", "landing/"):
                        if f"/{prefix}*" in text:
                            found |= {(a, prefix) for a in acts if a.startswith("s3:")}
    return found


def test_maintenance_functions_may_touch_every_prefix_their_code_does(dev: Synth) -> None:
    """moto does not enforce IAM: a missing grant fails a workflow step only on AWS."""
    get, put, delete = "s3:GetObject", "s3:PutObject", "s3:DeleteObject"
    # dedup copies a bad staged copy to quarantine/ and may delete a promoted object
    assert {(put, "quarantine/"), (delete, "blocks/"), (delete, "staging/")} <= _object_grants(
        dev, "DedupVerifyFunction"
    )
    # gc deletes quarantined copies once they expire
    assert (delete, "quarantine/") in _object_grants(dev, "GcFunction")
    # scrub repairs from a staged duplicate: it must read it
    assert {(get, "staging/"), (put, "blocks/")} <= _object_grants(dev, "ScrubFunction")
    # both verify a copy at a landing key before it replaces a canonical object
    landing = {(get, "landing/"), (put, "landing/"), (delete, "landing/")}
    assert landing <= _object_grants(dev, "DedupVerifyFunction")
    assert landing <= _object_grants(dev, "ScrubFunction")
    # cold storage repairs a block whose object it finds lost as scrub does: the same reads,
    # writes and block keys (missing, the daily cold run failed on each such block)
    assert {(get, "staging/"), (put, "blocks/")} | landing <= _object_grants(
        dev, "ColdStorageFunction"
    )
    assert _actions(dev, "ColdStorageFunction", "ssm") == _actions(dev, "ScrubFunction", "ssm")
    # both repair from an earlier version of the block's object: list and copy it
    for function in ("ScrubFunction", "ColdStorageFunction"):
        assert ("s3:GetObjectVersion", "blocks/") in _object_grants(dev, function)
        assert _listed_prefixes(dev, function, "s3:ListBucketVersions") == {"blocks/*"}
    # both undo a block's delete (its markers); cold storage also deletes the version a
    # tier move superseded (the same bytes); no other function may delete a version
    for function in ("ScrubFunction", "ColdStorageFunction"):
        assert ("s3:DeleteObjectVersion", "blocks/") in _object_grants(dev, function)
    for function in ("ApiFunction", "GcFunction", "DedupVerifyFunction"):
        assert "s3:DeleteObjectVersion" not in _actions(dev, function, "s3"), function
    # gc lists landing/ for the landing objects of killed runs, and deletes them
    assert (delete, "landing/") in _object_grants(dev, "GcFunction")
    assert _listed_prefixes(dev, "GcFunction") == {"landing/*"}


def test_the_maintenance_functions_that_decode_blocks_read_the_block_keys(dev: Synth) -> None:
    """They compare the keys with the recorded fingerprints at each cold start (refusing
    to judge any block under a swapped secret), as the deploy's migrate function does:
    without the grant, that start fails."""
    readers = {"DedupVerifyFunction", "ScrubFunction", "ColdStorageFunction", "MigrateFunction"}
    for function in (*readers, "GcFunction", "OutboxRelayFunction"):
        granted = {"ssm:GetParametersByPath", "ssm:GetParameter"} <= _actions(dev, function, "ssm")
        assert granted == (function in readers), function
    # the deploy's migrate function compares the secrets too: it decrypts them
    assert "kms:Decrypt" in _actions(dev, "MigrateFunction", "kms")


def _listed_prefixes(synth: Synth, function: str, action: str = "s3:ListBucket") -> set[str]:
    """The `s3:prefix` patterns the IAM policies of `function` may list the bucket with
    (`action`: its objects, or their versions)."""
    found: set[str] = set()
    for lid, policy in resources(synth.app_template, "AWS::IAM::Policy").items():
        if lid.startswith(function):
            for st in policy["Properties"]["PolicyDocument"]["Statement"]:
                if st["Action"] == action:
                    found |= set(st["Condition"]["StringLike"]["s3:prefix"])
    return found


def test_functions_get_only_their_own_bucket_actions(dev: Synth) -> None:
    assert _actions(dev, "ApiFunction", "s3") == {"s3:GetObject", "s3:PutObject",
                                                  "s3:RestoreObject", "s3:ListBucket"}  # fmt: skip
    assert _actions(dev, "GcFunction", "s3") == {"s3:DeleteObject", "s3:ListBucket"}
    assert _actions(dev, "LongpollFunction", "s3") == set()
    assert _actions(dev, "ChangeRouterFunction", "s3") == set()


def test_changes_table_writers_may_call_what_the_feed_calls(dev: Synth) -> None:
    """moto does not enforce IAM: a missing action here fails only on AWS."""
    from infra.stacks import CHANGES_WRITER_ACTIONS

    writer = set(CHANGES_WRITER_ACTIONS)
    assert {"dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"} <= writer
    writers = ("ApiFunction", "OutboxRelayFunction", "DedupVerifyFunction", "ScrubFunction")
    # cold storage too: a restore whose object is lost is damage it announces
    for function in (*writers, "ColdStorageFunction"):
        assert _actions(dev, function, "dynamodb") == writer, function
    assert _actions(dev, "LongpollFunction", "dynamodb") == {"dynamodb:Query", "dynamodb:GetItem"}


# --- layer and function plumbing ---------------------------------------------------------------


def test_a_change_to_the_layer_alone_publishes_a_new_function_version(tmp_path: Path) -> None:
    """prod's API runs the `live` alias of a published version, and the code is in the layer:
    a version whose hash left the layer out stayed the same, and `live` the old code."""
    from aws_cdk import App, Stack
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk.assertions import Template

    from infra.app import FEATURE_FLAGS

    def version_ids(layer_source: str) -> set[str]:
        layer = tmp_path / f"layer{len(layer_source)}"
        (layer / "python").mkdir(parents=True)
        (layer / "python" / "module.py").write_text(layer_source)
        app = App(context=FEATURE_FLAGS, outdir=str(tmp_path / f"out{len(layer_source)}"))
        stack = Stack(app, "Stack")
        function = lambda_.Function(
            stack, "Function", runtime=lambda_.Runtime.PYTHON_3_12, handler="index.handler",
            code=lambda_.Code.from_inline("def handler(event, context): pass"),
            layers=[lambda_.LayerVersion(stack, "Layer", code=lambda_.Code.from_asset(str(layer)))],
        )  # fmt: skip
        assert function.current_version is not None
        return set(resources(Template.from_stack(stack), "AWS::Lambda::Version"))

    assert version_ids("VALUE = 1\n") != version_ids("VALUE = 22\n")


def test_the_layers_asset_hash_covers_what_it_is_built_with(tmp_path: Path) -> None:
    """CDK hashed the layer over its sources and the bundling options as JSON, where the
    bundler shows none of its fields: a sources-only build (`-c bundle=false`) left in
    `cdk.out` was deployed as the layer (every function failed at import), and a
    dependency bump alone was never deployed."""
    from aws_cdk import App, Stack
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk.assertions import Template

    from infra.app import FEATURE_FLAGS
    from infra.constructs.layer import PipLayerBundler, layer_code

    root = tmp_path / "layers"
    (root / "tessera").mkdir(parents=True)
    (root / "tessera" / "__init__.py").write_text("VALUE = 1\n")

    class NoPip(PipLayerBundler):
        """Builds the sources only, whatever `install` says: no network in tests."""

        def try_bundle(self, output_dir: str, options: Any = None, **_: Any) -> bool:
            (Path(output_dir) / "python").mkdir()
            return True

    def layer_key(pins: str, *, install: bool) -> str:
        n = len(list(tmp_path.iterdir()))
        lock = tmp_path / f"layer{n}.lock"
        lock.write_text(pins)
        app = App(context=FEATURE_FLAGS, outdir=str(tmp_path / f"out{n}"))
        stack = Stack(app, "Stack")
        code = layer_code(root, NoPip(root, lock, install=install))
        lambda_.LayerVersion(stack, "Layer", code=code)
        [layer] = resources(Template.from_stack(stack), "AWS::Lambda::LayerVersion").values()
        return str(layer["Properties"]["Content"]["S3Key"])

    sources_only = layer_key("psycopg==3.2.1 --hash=sha256:00", install=False)
    assert sources_only == layer_key("psycopg==3.2.1 --hash=sha256:00", install=False)
    assert layer_key("psycopg==3.2.1 --hash=sha256:00", install=True) != sources_only
    # a new version, or the same version's wheel published again (another hash)
    assert layer_key("psycopg==3.2.2 --hash=sha256:00", install=False) != sources_only
    assert layer_key("psycopg==3.2.1 --hash=sha256:01", install=False) != sources_only


def test_the_layer_lock_pins_every_requirement_with_its_hash() -> None:
    """`infra/layer.lock` holds a version of each of the layer's requirements that meets
    pyproject.toml's specifier, each with its wheel's sha256: a bump in pyproject.toml
    without `make layer-lock` fails here, not at the deploy."""
    from packaging.requirements import Requirement

    from infra.constructs.layer import _NOT_IN_LAYER, LOCK, layer_requirements, locked_versions

    pinned = locked_versions()
    for line in LOCK.read_text().splitlines():
        assert line.startswith("#") or re.fullmatch(r"\S+==\S+ --hash=sha256:[0-9a-f]{64}", line)
    for spec in map(Requirement, layer_requirements()):
        name = spec.name.lower().replace("_", "-")
        assert name in pinned, f"{spec.name} is not in {LOCK.name}: run `make layer-lock`"
        assert spec.specifier.contains(pinned[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={pinned[name]}, outside {spec}: run `make layer-lock`"
        )
    assert {"psycopg-binary", "psycopg-pool"} <= pinned.keys()  # psycopg's extras
    assert not _NOT_IN_LAYER & pinned.keys()


def test_the_layer_is_installed_from_the_lock_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip installs the lock's wheels, checked against their hashes, and nothing they might
    pull in besides (whatever the index serves that day)."""
    from infra.constructs import layer

    ran: list[list[str]] = []

    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        ran.append(args)
        return subprocess.CompletedProcess(args, 1, "", "")  # (no Python 3.12 for bytecode)

    monkeypatch.setattr(subprocess, "run", run)
    root = tmp_path / "layers"
    (root / "tessera").mkdir(parents=True)
    bundler = layer.PipLayerBundler(root, layer.LOCK, install=True, bytecode_python="/none")
    assert bundler.try_bundle(str(tmp_path / "out"))
    pip = ran[0]
    assert pip[pip.index("--requirement") + 1] == str(layer.LOCK)
    assert {"--require-hashes", "--no-deps", "--only-binary=:all:"} <= set(pip)


def test_layer_requirements_come_from_pyproject_minus_laptop_only_packages() -> None:
    from infra.constructs.layer import layer_requirements

    names = " ".join(layer_requirements())
    assert "psycopg" in names and "aws-lambda-powertools" in names and "blake3" in names
    assert "boto3" in names  # paired with the botocore that pynamodb pulls in
    for local_only in ("pgserver", "uvicorn", "starlette", "watchdog"):
        assert local_only not in names


def test_unbundled_layer_holds_the_tessera_sources(dev: Synth) -> None:
    assets = [p for p in dev.outdir.glob("asset.*") if (p / "python" / "tessera").is_dir()]
    assert len(assets) == 1
    layer = assets[0] / "python"
    assert (layer / "tessera" / "__init__.py").is_file()
    assert not (layer / "psycopg").exists()  # bundle=false: pip never ran


def test_missing_function_folder_fails_naming_it(tmp_path: Path) -> None:
    from aws_cdk import App, Stack
    from aws_cdk import aws_ec2 as ec2
    from aws_cdk import aws_lambda as lambda_

    from infra.config import StageConfig
    from infra.constructs.function import (
        FunctionSpec,
        MissingFunctionError,
        Placement,
        TesseraFunction,
    )

    app = App(context={"functions_root": str(tmp_path), "bundle": "false"})
    stack = Stack(app, "S")
    config = StageConfig.from_context(app.node)
    vpc = ec2.Vpc(stack, "V")
    layer = lambda_.LayerVersion.from_layer_version_arn(
        stack, "L", "arn:aws:lambda:us-east-1:123456789012:layer:x:1"
    )
    placement = Placement(vpc=vpc, security_group=ec2.SecurityGroup(stack, "G", vpc=vpc))
    with pytest.raises(MissingFunctionError, match=r"'scrub'.*scrub/handler\.py"):
        TesseraFunction(stack, "F", config=config, spec=FunctionSpec("scrub", "x"),
                        layer=layer, placement=placement)  # fmt: skip


def test_relay_async_failures_go_to_a_dead_letter_queue(dev: Synth) -> None:
    configs = resources(dev.app_template, "AWS::Lambda::EventInvokeConfig").values()
    assert len(configs) == 1
    config = json.dumps(next(iter(configs))["Properties"])
    assert "OutboxRelayFunction" in config and "OutboxRelayFunctionDlq" in config


def test_migrations_fingerprint_follows_the_migrations_and_the_role_grants(tmp_path: Path) -> None:
    from infra.constructs.migrations import migrations_fingerprint

    folder = tmp_path / "tessera" / "metadata" / "migrations"
    folder.mkdir(parents=True)
    (folder.parent / "roles.py").write_text("GRANT = 'SELECT'")  # the runtime role's grants
    (folder / "001_init.sql").write_text("CREATE TABLE a ();")
    first = migrations_fingerprint(tmp_path)
    assert migrations_fingerprint(tmp_path) == first
    (folder / "002_more.sql").write_text("CREATE TABLE b ();")
    second = migrations_fingerprint(tmp_path)
    (folder / "002_more.sql").write_text("CREATE TABLE c ();")
    third = migrations_fingerprint(tmp_path)
    (folder.parent / "roles.py").write_text("GRANT = 'SELECT, INSERT'")
    assert len({first, second, third, migrations_fingerprint(tmp_path)}) == 4


def test_stage_defaults_and_single_overrides() -> None:
    from aws_cdk import App

    from infra.config import StageConfig

    prod = StageConfig.from_context(App(context={"stage": "prod", "db_max_acu": "8"}).node)
    assert prod.is_prod and prod.db_max_acu == 8.0 and prod.db_min_acu == 0.5
    assert prod.bundle is True  # deploys always build the real layer unless told otherwise
    dev = StageConfig.from_context(App(context={"bundle": "false"}).node)
    assert dev.stage == "dev" and not dev.is_prod and dev.bundle is False


def test_unknown_stage_is_refused() -> None:
    from aws_cdk import App

    from infra.config import StageConfig

    with pytest.raises(ValueError, match="unknown stage 'staging'"):
        StageConfig.from_context(App(context={"stage": "staging"}).node)


def test_layer_bytecode_is_compiled_by_python_312_as_unchecked_hash_pycs(tmp_path: Path) -> None:
    import importlib.util

    from infra.constructs.layer import PYTHON_VERSION, compile_bytecode, find_interpreter

    assert find_interpreter(sys.executable) is None or sys.version_info[:2] == (3, 12)
    assert find_interpreter(str(tmp_path / "no-such-python")) is None
    pyenv = sorted(Path.home().glob(f".pyenv/versions/{PYTHON_VERSION}*/bin/python3"))
    interpreter = find_interpreter() or next(
        filter(None, map(find_interpreter, map(str, pyenv))), None
    )
    if interpreter is None:
        pytest.skip(f"no Python {PYTHON_VERSION} interpreter on this machine")
    package = tmp_path / "python" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    (package / "broken.py").write_text("def (:\n")  # one bad file does not stop the rest
    compile_bytecode(tmp_path / "python", interpreter)
    pyc = package / "__pycache__" / "__init__.cpython-312.pyc"
    assert pyc.is_file()
    header = pyc.read_bytes()[:16]
    assert header[:4] != importlib.util.MAGIC_NUMBER or sys.version_info[:2] == (3, 12)
    assert int.from_bytes(header[4:8], "little") == 0b01  # hash-based, source not checked
    assert not (package / "__pycache__" / "broken.cpython-312.pyc").exists()
