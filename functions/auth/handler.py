"""Lambda `auth`: `POST /v1/auth/token` and `POST /v1/auth/revoke` (API Gateway REST proxy,
no authorizer).

`{"email","password"}` or `{"refresh_token"}` → Cognito `AdminInitiateAuth` on the public
CLI app client, with the caller's address for threat protection →
`{"access_token","refresh_token","token_type":"Bearer","expires_in"}`; a revoke's
`{"refresh_token"}` → Cognito `RevokeToken` → `{}`; see
`tessera.adapters.aws.token_endpoint`. Its own function so the unauthenticated route has its
own small role (no database, no bucket, no keys; `cognito-idp:AdminInitiateAuth` on the pool)
and its own concurrency. Events are never logged: they carry passwords.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from tessera.adapters.aws.token_endpoint import token_endpoint
from tessera.adapters.aws.wiring import AwsRuntime

logger = Logger(service="tessera-auth")

users = AwsRuntime.from_env().users()


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId", log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Answer one token or revoke request."""
    return token_endpoint(users, event)
