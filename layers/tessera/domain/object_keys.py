"""Where blocks live in the block store: the one home of the key layout.

- `blocks/<hex>`: a verified, content-addressed block (the BLAKE3 id without `b3:`);
- `staging/<upload_id>/<group>/<hex>`: a session's unverified copy, until dedup-verify
  promotes or drops it. Blocks are grouped by their place in the session, `STAGING_GROUP`
  to a group (`<group>` in hex), so a commit lists the groups of its blocks, one
  ListObjectsV2 page each, and never a large session whole (sessions opened before
  groups were introduced keep `staging/<upload_id>/<hex>`: their group is the session);
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


#: Blocks per staging group: the client asks for PUT URLs 128 blocks at a time, so a
#: window's commit lists one or two groups.
STAGING_GROUP = 128


def staging_key(upload_id: str, block_id: str, ordinal: int) -> str:
    """Where a session's copy of its `ordinal`-th needed block is staged until
    dedup-verify promotes or drops it."""
    return f"{staging_prefix(upload_id)}{ordinal // STAGING_GROUP:x}/{_hex(block_id)}"


def staging_group(staged_key: str) -> str:
    """The prefix of the staging group that holds `staged_key`."""
    return staged_key.rsplit("/", 1)[0] + "/"


def staged_upload_id(key: str) -> str | None:
    """The upload session a staging key belongs to (either layout), else None."""
    parts = key.split("/")
    if parts[0] + "/" == STAGING_PREFIX and len(parts) in (3, 4) and all(parts[1:]):
        return parts[1]
    return None


def quarantine_key(staged_key: str) -> str:
    """Where a staged copy that failed verification is kept."""
    return QUARANTINE_PREFIX + staged_key.removeprefix(STAGING_PREFIX)
