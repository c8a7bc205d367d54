"""Block ids, file content hashes and block keys (DESIGN §3)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

from blake3 import blake3

from tessera.blocks.errors import BlockFormatError

ID_PREFIX = "b3:"
_ID_RE = re.compile(r"b3:[0-9a-f]{64}\Z")


def block_id(data: bytes | bytearray | memoryview) -> str:
    """`b3:` + hex BLAKE3-256 of the plaintext chunk."""
    return ID_PREFIX + blake3(data).hexdigest()


def id_from_digest(digest: bytes) -> str:
    """The block id of a raw 32-byte BLAKE3 digest."""
    return ID_PREFIX + digest.hex()


def digest_of(block_id: str) -> bytes:
    """The raw 32-byte digest inside `block_id`; BlockFormatError when it is not a block id."""
    if not isinstance(block_id, str) or _ID_RE.match(block_id) is None:
        raise BlockFormatError(f"not a block id: {block_id!r} (expected 'b3:' + 64 lowercase hex)")
    return bytes.fromhex(block_id[len(ID_PREFIX) :])


def is_block_id(value: object) -> bool:
    """Whether `value` is a well-formed block id."""
    return isinstance(value, str) and _ID_RE.match(value) is not None


def content_hash(block_ids: Iterable[str]) -> str:
    """`b3:` + hex BLAKE3 over the concatenated raw digests of the file's blocks, in order.

    Equal content gives an equal hash whatever the device; an empty file hashes nothing.
    """
    h = blake3()
    for bid in block_ids:
        h.update(digest_of(bid))
    return ID_PREFIX + h.hexdigest()


def derive_block_key(secret: bytes, block_id: str) -> bytes:
    """The 32-byte AES key of `block_id`: HMAC-SHA256(secret, block id as ASCII).

    `secret` is the key-version's secret; `KeyService.block_key` picks it and calls this.
    """
    digest_of(block_id)  # refuse anything that is not a block id before keying on it
    return hmac.new(secret, block_id.encode("ascii"), hashlib.sha256).digest()


# Never a block id (which `derive_block_key` requires), so a fingerprint is never a block key
_FINGERPRINT_MESSAGE = b"tessera key fingerprint v1"


def key_fingerprint(secret: bytes) -> bytes:
    """A 32-byte fingerprint of a key-version's secret: HMAC-SHA256(secret, a fixed text).

    Safe to store beside the blocks (it reveals nothing of the secret, and no block id is
    that text), so a start can tell the secret it holds from the one blocks were stored
    under."""
    return hmac.new(secret, _FINGERPRINT_MESSAGE, hashlib.sha256).digest()
