"""Which AWS failures are worth retrying later: the API answers them 503 + Retry-After.

botocore already retries throttling, 5xx answers and lost connections (standard mode, four
attempts, `AwsClients.client`). What still fails after that is a service under strain or out
of reach for a while, not a bug: the client should come back in a moment, as it does for an
unreachable database (`tessera.metadata.db.unavailable_on_db_errors`), instead of being told
"internal error" by a 500 that carries no Retry-After.
"""

from __future__ import annotations

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

# botocore's throttling and transient codes (`botocore.retries.standard`), which AWS answers
# with a 400 as often as with a 429 or 503.
_RETRYABLE_CODES = frozenset(
    {
        "BandwidthLimitExceeded",
        "EC2ThrottledException",
        "InternalError",
        "LimitExceededException",
        "PriorRequestNotComplete",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "TransactionInProgressException",
    }
)
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


def is_transient(exc: BaseException) -> bool:
    """True when `exc` is an AWS call that failed for a while (throttled, a 5xx, a timeout, a
    lost connection) after botocore's own retries; False for anything else."""
    cause = getattr(exc, "cause", None)  # PynamoDB's errors wrap botocore's as `cause`
    if isinstance(cause, BaseException):
        return is_transient(cause)
    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in _RETRYABLE_CODES or status in _RETRYABLE_STATUS
    return False
