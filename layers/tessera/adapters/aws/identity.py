"""Cognito identity (DESIGN §9).

On AWS, API Gateway's Cognito authorizer verifies the token and the API reads the claims
from `requestContext.authorizer.claims`. `CognitoIdentity` does the same verification for
the local gateway's AWS mode: RS256 against the pool's JWKS, issuer, audience (ID tokens)
or client_id (access tokens), expiry. `CognitoUsers` is the admin side: create users and
exchange a password or refresh token for tokens (`POST /v1/auth/token`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from tessera.adapters.aws.errors import is_transient
from tessera.adapters.tokens import TokenPair, verified_claims
from tessera.domain.errors import BadRequest, Conflict, TooManyRequests, Unauthorized, Unavailable
from tessera.ports import Identity, Principal, SignInOrigin

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient


def issuer_of(region: str, pool_id: str) -> str:
    """The `iss` claim of a pool's tokens (also moto's, whatever its endpoint)."""
    return f"https://cognito-idp.{region}.amazonaws.com/{pool_id}"


def jwks_url_of(region: str, pool_id: str, endpoint_url: str | None = None) -> str:
    """Where the pool's public keys are served (moto serves them at its own endpoint)."""
    base = (
        endpoint_url.rstrip("/") if endpoint_url else f"https://cognito-idp.{region}.amazonaws.com"
    )
    return f"{base}/{pool_id}/.well-known/jwks.json"


def principal_from_claims(claims: Mapping[str, Any] | None) -> Principal:
    """The caller named by verified claims (`sub`, `email`); Unauthorized when absent."""
    if not claims or not claims.get("sub"):
        raise Unauthorized("missing or invalid credentials")
    return Principal(user_id=str(claims["sub"]), email=str(claims.get("email", "")))


class CognitoIdentity(Identity):
    """Verifies Cognito user-pool JWTs the way API Gateway's Cognito authorizer does."""

    def __init__(
        self, *, region: str, pool_id: str, client_id: str, endpoint_url: str | None = None
    ) -> None:
        import jwt  # only the local gateway verifies tokens: keep it off the Lambda cold start

        self._issuer = issuer_of(region, pool_id)
        self._client_id = client_id
        # PyJWKClient caches the key set and refetches when it sees an unknown `kid`.
        self._jwks = jwt.PyJWKClient(jwks_url_of(region, pool_id, endpoint_url), lifespan=3600)

    def claims(self, token: str) -> dict[str, str]:
        """The verified claims as API Gateway passes them to the API (string values)."""
        claims = verified_claims(
            token,
            self._signing_key,
            algorithm="RS256",
            issuer=self._issuer,
            require=["exp", "iss", "sub", "token_use"],
        )
        use = claims.get("token_use")
        audience = claims.get("aud") if use == "id" else claims.get("client_id")
        if use not in {"id", "access"} or audience != self._client_id:
            log.debug("token refused: not issued to this app client (%s)", use)
            raise Unauthorized("invalid token")  # (as `verified_claims` says it)
        return {k: v if isinstance(v, str) else str(v) for k, v in claims.items()}

    def _signing_key(self, token: str) -> Any:
        import jwt

        try:
            return self._jwks.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError:
            # the pool's key set is out of reach: nothing is wrong with the token, and a
            # 401 would send the client to sign in again for nothing (nor name the URL)
            log.warning("cannot fetch the Cognito key set", exc_info=True)
            raise Unavailable(
                "cannot check sign-ins right now; retry shortly", retry_after=5
            ) from None

    def verify(self, token: str) -> Principal:
        """The caller of a valid token; `Unauthorized` otherwise."""
        return principal_from_claims(self.claims(token))


# The longest username and password Cognito takes (its API's limits).
COGNITO_MAX_USERNAME = 128
COGNITO_MAX_PASSWORD = 256
# Cognito's throttling error codes (per-second quotas on its sign-in calls).
_THROTTLED = frozenset(
    {"TooManyRequestsException", "LimitExceededException", "ThrottlingException"}
)
# Sign-ins refused for the account's state, not its credentials: what the user must do.
_ACCOUNT_STATES = {
    "PasswordResetRequiredException": "this account must reset its password before signing in",
    "UserNotConfirmedException": "this account is not confirmed yet; confirm it, then sign in",
}


# What RevokeToken answers for a token that is not a refresh token of this app client
# (InvalidParameterException: characters no token has).
_NOT_A_TOKEN = frozenset(
    {
        "UnauthorizedException",
        "UnsupportedTokenTypeException",
        "NotAuthorizedException",
        "InvalidParameterException",
    }
)


def _error_code(exc: Exception) -> str:
    """The Cognito error code of a failed call ("" for anything but a ClientError)."""
    return exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""


def _raise_if_passing(exc: Exception, code: str) -> None:
    """429 when Cognito throttles (it sends no Retry-After; its quotas are per second), 503
    when it fails for a while (a 5xx or a lost connection, after botocore's retries)."""
    if code in _THROTTLED:
        raise TooManyRequests("sign-in is throttled; retry shortly", retry_after=2) from None
    if is_transient(exc):
        log.warning("Cognito failed for a while", exc_info=True)
        raise Unavailable("cannot sign in right now; retry shortly", retry_after=5) from None


class CognitoUsers:
    """Admin operations on one user pool: users and password / refresh-token sign-in."""

    def __init__(self, client: CognitoIdentityProviderClient, pool_id: str, client_id: str):
        self._idp = client
        self._pool_id = pool_id
        self._client_id = client_id

    def create_user(self, email: str, password: str) -> str:
        """Create a confirmed user with a permanent password; the user's `sub`.

        Two calls: a user whose password is then refused is deleted again, else every
        retry of the same email would be a 409 for a user nobody can sign in as."""
        try:
            resp = self._idp.admin_create_user(
                UserPoolId=self._pool_id,
                Username=email,
                UserAttributes=[
                    {"Name": "email", "Value": email},
                    {"Name": "email_verified", "Value": "true"},
                ],
                MessageAction="SUPPRESS",
            )
        except self._idp.exceptions.UsernameExistsException:
            raise Conflict(f"user {email} already exists") from None
        try:
            self._idp.admin_set_user_password(
                UserPoolId=self._pool_id, Username=email, Password=password, Permanent=True
            )
        except Exception as exc:
            self._idp.admin_delete_user(UserPoolId=self._pool_id, Username=email)
            if isinstance(exc, self._idp.exceptions.InvalidPasswordException):
                raise BadRequest(f"password rejected by the pool policy: {exc}") from None
            raise
        attributes = {a["Name"]: a["Value"] for a in resp["User"].get("Attributes", [])}
        return attributes["sub"]

    def _auth(
        self, flow: str, params: dict[str, str], origin: SignInOrigin | None
    ) -> dict[str, Any]:
        # AdminInitiateAuth, not the public InitiateAuth: only the admin call takes the
        # caller's address (ContextData; a public client cannot pass it in UserContextData).
        # Without it, threat protection judged every sign-in by this function's own
        # addresses: all users' from the same few, its blocks landing on every one of them
        context: dict[str, Any] = {}
        if origin is not None:
            context["ContextData"] = {
                "IpAddress": origin.ip_address,
                "ServerName": origin.server_name,
                "ServerPath": origin.server_path,
                "HttpHeaders": [
                    {"headerName": name, "headerValue": value} for name, value in origin.headers
                ],
            }
        try:
            resp = self._idp.admin_initiate_auth(
                UserPoolId=self._pool_id,
                ClientId=self._client_id,
                AuthFlow=flow,  # type: ignore[arg-type]
                AuthParameters=params,
                **context,
            )
        except Exception as exc:
            code = _error_code(exc)
            if code in {"NotAuthorizedException", "UserNotFoundException"}:
                raise Unauthorized("wrong email, password or refresh token") from None
            if code in _ACCOUNT_STATES:
                raise Unauthorized(_ACCOUNT_STATES[code]) from None
            _raise_if_passing(exc, code)
            raise
        result = resp.get("AuthenticationResult")
        if not result:
            raise Unauthorized(f"sign-in needs a further challenge: {resp.get('ChallengeName')}")
        return dict(result)

    def revoke(self, body: Mapping[str, Any]) -> None:
        """`POST /v1/auth/revoke`: {refresh_token} → its session signed out (Cognito
        `RevokeToken`: the refresh token and the tokens it issued stop working; API
        Gateway's authorizer still takes an ID token until its hour is up). A token Cognito
        does not take as one of this client's needs no signing out (RFC 7009)."""
        refresh = body.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            raise BadRequest('send {"refresh_token"}')
        try:
            self._idp.revoke_token(Token=refresh, ClientId=self._client_id)
        except Exception as exc:
            code = _error_code(exc)
            if code in _NOT_A_TOKEN:
                return
            _raise_if_passing(exc, code)
            raise

    def token(self, body: Mapping[str, Any], origin: SignInOrigin | None = None) -> TokenPair:
        """`POST /v1/auth/token`: {email, password} or {refresh_token} → the token body;
        `origin` is passed on to threat protection.

        The `access_token` is Cognito's ID token: it carries `email`, and it is what API
        Gateway's Cognito authorizer verifies without OAuth scopes.
        """
        fields = {k: body.get(k) for k in ("email", "password", "refresh_token")}
        if any(v is not None and not isinstance(v, str) for v in fields.values()):
            raise BadRequest('send {"email", "password"} or {"refresh_token"} (strings)')
        if fields["refresh_token"]:
            refresh = str(fields["refresh_token"])
            result = self._auth("REFRESH_TOKEN_AUTH", {"REFRESH_TOKEN": refresh}, origin)
        elif fields["email"] and fields["password"]:
            if (
                len(str(fields["email"])) > COGNITO_MAX_USERNAME
                or len(str(fields["password"])) > COGNITO_MAX_PASSWORD
            ):
                # no user has such credentials; Cognito would refuse the call itself with an
                # InvalidParameterException, which a misconfigured client also raises (a 500)
                raise Unauthorized("wrong email, password or refresh token")
            result = self._auth(
                "ADMIN_USER_PASSWORD_AUTH",
                {"USERNAME": str(fields["email"]), "PASSWORD": str(fields["password"])},
                origin,
            )
            refresh = str(result["RefreshToken"])
        else:
            raise BadRequest('send {"email", "password"} or {"refresh_token"}')
        return TokenPair(
            access_token=str(result["IdToken"]),
            refresh_token=str(result.get("RefreshToken", refresh)),
            expires_in=int(result.get("ExpiresIn", 3600)),
        )
