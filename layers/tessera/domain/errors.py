"""Domain errors. Each carries the stable error code and HTTP status the API maps it to.

The API turns any `TesseraError` into `{"error": {"code", "message"}}` with `status`;
anything else is a 500 that never leaks internals.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TesseraError(Exception):
    """Base of every error the domain raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    retry_after: int | None = None  # seconds to wait, for the errors that pass (429, 503)

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_body(self) -> dict[str, Any]:
        """The JSON error body of DESIGN §5."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error.update(self.details)
        return {"error": error}

    def headers(self) -> dict[str, str]:
        """The HTTP headers of the error's answer: `Retry-After` when it has a wait."""
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class BadRequest(TesseraError):
    status = 400
    code = "bad_request"


class Unauthorized(TesseraError):
    status = 401
    code = "unauthorized"


class Forbidden(TesseraError):
    status = 403
    code = "forbidden"


class NotFound(TesseraError):
    status = 404
    code = "not_found"


class Conflict(TesseraError):
    status = 409
    code = "conflict"


class PayloadTooLarge(TesseraError):
    status = 413
    code = "too_large"


class Unprocessable(TesseraError):
    status = 422
    code = "invalid"


class TooManyRequests(TesseraError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class Unavailable(TesseraError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class InvalidPath(Unprocessable):
    """A path that is not canonicalisable (traversal, NUL, over-long, empty component)."""

    code = "invalid_path"


class InvalidCursor(BadRequest):
    """A cursor that is forged, corrupted, or belongs to another user."""

    code = "invalid_cursor"


class BlockUnavailable(Unavailable):
    """A block of the file is damaged (quarantined) and cannot be served."""

    code = "block_unavailable"


class QuotaExceeded(PayloadTooLarge):
    """The upload would take the account over its quota."""

    code = "quota_exceeded"
