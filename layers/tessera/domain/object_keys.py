"""Where blocks live in the block store: the one home of the key layout.

- `blocks/<hex>`: a verified, content-addressed block (the BLAKE3 id without `b3:`);
- `staging/<upload_id>/<ordinal>-<hex>`: a session's unverified copy of its `ordinal`-th
  needed block (8 hex digits, so keys sort in issue order), until dedup-verify promotes
  or drops it. On S3 a commit lists just the run of keys its blocks fall in (`staged_run`:
  ListObjectsV2 with StartAfter and MaxKeys), never a whole session. Sessions staged
  under earlier layouts keep them until they expire: `staging/<upload_id>/<group>/<hex>`
  (blocks grouped 128 to a folder) and `staging/<upload_id>/<hex>`; S3 lists the key's
  folder for them (`staging_folder`);
- `quarantine/<upload_id>/<hex>`: a staged copy that failed verification, out of reach
  of downloads;
- `landing/<source key>`: where maintenance copies a staged copy to verify it before it
  replaces a canonical object that may hold the block (a cold one: its only copy). No
  client is ever given a URL for it, so what was verified there stays what it holds.
"""

from __future__ import annotations

from tessera.blocks import is_block_id

CANONICAL_PREFIX = "blocks/"
STAGING_PREFIX = "staging/"
QUARANTINE_PREFIX = "quarantine/"
LANDING_PREFIX = "landing/"

#: Days the store keeps an object's earlier version once it is overwritten or deleted, by
#: key prefix (S3 lifecycle rules on the versioned bucket; the local store keeps those of
#: `blocks/` only). A block gc deleted or a bug overwrote is repaired from one (scrub) or
#: recovered by hand (docs/deploy.md) within that time; every staged copy is deleted once
#: promoted, and kept longer those copies would double what new data costs.
NONCURRENT_RETENTION_DAYS = {
    CANONICAL_PREFIX: 30,
    STAGING_PREFIX: 1,
    LANDING_PREFIX: 1,
    QUARANTINE_PREFIX: 1,
}


def _hex(block_id: str) -> str:
    return block_id.removeprefix("b3:")


def canonical_key(block_id: str) -> str:
    """The store key of a verified block."""
    return CANONICAL_PREFIX + _hex(block_id)


def canonical_block_id(key: str) -> str | None:
    """The block a canonical key holds (the inverse of `canonical_key`), else None."""
    candidate = "b3:" + key.removeprefix(CANONICAL_PREFIX)
    return candidate if key.startswith(CANONICAL_PREFIX) and is_block_id(candidate) else None


def staging_prefix(upload_id: str) -> str:
    """The prefix under which every block of one upload session is staged."""
    return f"{STAGING_PREFIX}{upload_id}/"


_ORDINAL_DIGITS = 8


def staging_key(upload_id: str, block_id: str, ordinal: int) -> str:
    """Where a session's copy of its `ordinal`-th needed block is staged until
    dedup-verify promotes or drops it."""
    return f"{staging_prefix(upload_id)}{ordinal:0{_ORDINAL_DIGITS}x}-{_hex(block_id)}"


def staged_run(staged_key: str) -> tuple[str, int] | None:
    """(session prefix, ordinal) of a key in the ordinal layout; None for earlier ones."""
    prefix, _, name = staged_key.rpartition("/")
    ordinal, dash, _rest = name.partition("-")
    if not dash or len(ordinal) != _ORDINAL_DIGITS:
        return None
    try:
        return prefix + "/", int(ordinal, 16)
    except ValueError:
        return None


def run_start_after(prefix: str, first: int) -> str:
    """The ListObjectsV2 `StartAfter` that lists a session's keys from ordinal `first` on:
    the ordinal alone sorts before every key that begins with it."""
    return f"{prefix}{first:0{_ORDINAL_DIGITS}x}"


def staging_folder(staged_key: str) -> str:
    """The folder that holds `staged_key` (the whole listing of an earlier layout)."""
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


def landing_key(source_key: str) -> str:
    """Where maintenance lands a copy of `source_key` to verify it (see the module doc)."""
    return LANDING_PREFIX + source_key


def landed_block_id(key: str) -> str | None:
    """The block a landing key holds a copy of (its source is a staging key, whose name
    ends in the block's hex), else None."""
    candidate = "b3:" + key.rsplit("/", 1)[-1].rpartition("-")[2]
    return candidate if key.startswith(LANDING_PREFIX) and is_block_id(candidate) else None
