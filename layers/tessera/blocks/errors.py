"""Errors of the block pipeline. All are `TesseraError`s, so the API maps them to 422."""

from __future__ import annotations

from tessera.domain.errors import Unprocessable


class BlockError(Unprocessable):
    """Base of every error the block pipeline raises on purpose (HTTP 422)."""

    code = "block_error"


class BlockFormatError(BlockError):
    """Bytes that are not a stored block this build can read: bad magic, unknown version or
    flags, too short to hold a header and a tag, or a malformed block id."""

    code = "block_format"


class BlockIntegrityError(BlockError):
    """A stored block that fails authentication or whose plaintext does not hash to its id:
    a wrong key, a wrong block id, or bytes altered or truncated in storage or transit."""

    code = "block_integrity"


class FileChangedError(BlockError):
    """The file changed while it was being chunked; its block list would mix two versions.

    Chunk it again once it is quiet (the sync client retries on its next pass).
    """

    code = "file_changed"
