"""What both identity adapters share: the token endpoint's answer and JWT verification.

The local JWT issuer (`tessera.adapters.local.identity`) and Cognito
(`tessera.adapters.aws.identity`) each verify their own tokens; the decoding, the claims
every token must carry and how a bad token becomes `Unauthorized` live here once. `jwt` is
imported only when a token is verified: the Lambda functions import this module, and only
the local gateway verifies tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tessera.domain.errors import Unauthorized

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenPair:
    """Tokens as `POST /v1/auth/token` answers them (local issuer or Cognito)."""

    access_token: str
    refresh_token: str
    expires_in: int

    def to_body(self) -> dict[str, Any]:
        """The JSON body of `POST /v1/auth/token`."""
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }


def verified_claims(
    token: str,
    signing_key: Callable[[str], Any],
    *,
    algorithm: str,
    issuer: str,
    require: Sequence[str],
    audience: str | None = None,
) -> dict[str, Any]:
    """The claims of `token` once its signature (by `signing_key(token)`), issuer, expiry,
    required claims and — when `audience` is given — audience check out.

    Raises `Unauthorized` ("the token has expired" or "invalid token: ...") otherwise.
    """
    import jwt

    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            signing_key(token),
            algorithms=[algorithm],
            audience=audience,
            issuer=issuer,
            options={"require": list(require), "verify_aud": audience is not None},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the token has expired") from None
    except (jwt.PyJWTError, ValueError) as exc:  # ValueError: a key that is not a key
        # said as API Gateway's authorizer says it: PyJWT's text tells a prober which check
        # failed (the algorithm, the audience, the issuer) and how the token was decoded
        log.debug("token refused: %s", exc)
        raise Unauthorized("invalid token") from None
    return claims
