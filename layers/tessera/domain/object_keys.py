"""Where blocks live in the block store: the one home of the key layout.

- `blocks/<hex>`: a verified, content-addressed block (the BLAKE3 id without `b3:`);
- `staging/<upload_id>/<hex>`: a session's unverified copy, until dedup-verify promotes
  or drops it;
- `quarantine/<upload_id>/<hex>`: a staged copy that failed verification, out of reach
  of downloads.
"""

from __future__ import annotations

CANONICAL_PREFIX = "blocks/"
STAGING_PREFIX = "staging/"
QUARANTINE_PREFIX = "quarantine/"


def _hex(block_id: str) -> str:
    return block_id.removeprefix("b3:")


def canonical_key(block_id: str) -> str:
    """The store key of a verified block."""
    return CANONICAL_PREFIX + _hex(block_id)


def staging_prefix(upload_id: str) -> str:
    """The prefix under which every block of one upload session is staged."""
    return f"{STAGING_PREFIX}{upload_id}/"


def staging_key(upload_id: str, block_id: str) -> str:
    """Where a session's copy of a block is staged until dedup-verify promotes or drops it."""
    return staging_prefix(upload_id) + _hex(block_id)


def quarantine_key(staged_key: str) -> str:
    """Where a staged copy that failed verification is kept."""
    return QUARANTINE_PREFIX + staged_key.removeprefix(STAGING_PREFIX)
