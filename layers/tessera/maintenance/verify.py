"""Verifying one stored block: present, readable, authentic and hashing to its id."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from tessera.blocks import BlockError, decode_block, stored_key_version
from tessera.domain.errors import TesseraError
from tessera.domain.object_keys import landing_key
from tessera.ports import BlockStore, KeyService, StorageTier

MISSING = "missing"
"""The verdict on a key with no object."""

NOT_RESTORED = "unreadable: not_restored"
"""The verdict on an object in the cold tier that was not restored: intact as far as anyone
knows, just not readable now."""


class KeyUnavailableError(Exception):
    """The key of a version handed out before cannot be had now: no verdict on the block."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"key version {version} was handed out for this block but cannot be loaded now"
            " (the key service failing, or not yet aware of a rotation): checked again later"
        )
        self.version = version


@dataclass(frozen=True)
class Check:
    """The verdict on one stored object; `reason` says what is wrong when not `ok`."""

    ok: bool
    reason: str = ""
    stored_size: int = 0
    key_version: int = 0
    plain_size: int = 0
    # The bytes are the block, but not as the metadata records them (another stored size
    # or key version): the row is what is wrong, not the object
    unrecorded: bool = False


def check_stored(
    store: BlockStore,
    keys: KeyService,
    key: str,
    block_id: str,
    *,
    expect_plain_size: int | None = None,
    expect_key_version: int | None = None,
    issued_key_version: int | None = None,
) -> Check:
    """Read `key` and decode it as block `block_id` (decrypt, decompress, re-hash).

    The block key comes from the key version in the stored header; `expect_key_version`
    additionally requires that version (the one the metadata hands to downloaders).
    `issued_key_version` is the one an upload's uploader was given. It existed when it
    was handed out, so a header naming it whose key cannot be had now is no verdict: the
    key service is failing, or answering from a stale memory (AWS: a "not found" kept for
    a minute, met by a rotation within it), and the upload is intact as far as anyone
    knows. `KeyUnavailableError` says so, and the object is checked again later.
    """
    try:
        stored = store.get(key)
    except KeyError:
        return Check(False, MISSING)
    except TesseraError as exc:  # e.g. a cold object that was not restored (local store)
        return Check(False, f"unreadable: {exc.code}")
    except Exception:
        # S3's ColdObjectError is the adapter's own type: ask the port whether the object
        # is cold and unrestored (a verdict), else it was the store failing (not one)
        head = store.head(key)
        if head is None or head.tier is not StorageTier.COLD or head.restored:
            raise
        return Check(False, NOT_RESTORED)
    try:
        version = stored_key_version(stored)
        # The header is the uploader's to write: a made-up version must not cost a secret
        # store call (many at once were throttled, and failed the whole batch). The one
        # after the newest this process lists is loaded, as a rotation since its listing
        # (on AWS, read again at most once a minute) made it: judged unknown, an upload
        # under a freshly rotated key was quarantined for good.
        vouched = version == issued_key_version
        unlisted = not keys.knows(version) and version != max(keys.versions(), default=0) + 1
        if unlisted and not vouched:
            return Check(False, f"unknown key version {version}", stored_size=len(stored))
        try:
            _, block_key = keys.block_key(block_id, version)
        except KeyError:
            if vouched:
                raise KeyUnavailableError(version) from None
            return Check(False, f"unknown key version {version}", stored_size=len(stored))
        plain = decode_block(stored, block_id, block_key)
    except BlockError as exc:
        return Check(False, f"{exc.code}: {exc.message}", stored_size=len(stored))
    if expect_plain_size is not None and len(plain) != expect_plain_size:
        return Check(False, f"size {len(plain)}, declared {expect_plain_size}")
    found = Check(True, stored_size=len(stored), key_version=version, plain_size=len(plain))
    if expect_key_version is not None and version != expect_key_version:
        why = f"key version {version}, metadata says {expect_key_version}"
        return replace(found, ok=False, reason=why, unrecorded=True)
    return found


def copy_verified(
    store: BlockStore,
    keys: KeyService,
    source: str,
    target: str,
    block_id: str,
    *,
    plain_size: int,
    keep_target: bool,
    version: str | None = None,
    before_replacing: Callable[[], object] | None = None,
) -> Check:
    """Copy block `block_id` from `source` (its earlier `version`, if given) to `target`,
    verified where it lands.

    `source` may be a staging key, whose uploader may PUT other bytes there while their URL
    lasts: what a copy takes is not what was read before, so it is verified after the copy.
    With `keep_target` (the target may hold the block already: a cold object is its only
    copy) it lands at `landing_key(source)` first, a key no client writes, and only bytes
    verified there reach `target`; otherwise it lands at `target`, and is deleted again
    when it does not verify. `before_replacing` runs once the landed copy verified, just
    before it replaces `target` (the caller locks the block's row there: not across the
    copies and the read before). The verdict on what landed."""
    landing = landing_key(source) if keep_target else target
    store.copy(source, landing, version=version)
    try:
        check = check_stored(store, keys, landing, block_id, expect_plain_size=plain_size)
        if check.ok and landing != target:
            if before_replacing is not None:
                before_replacing()  # may give up (a lock timeout): the landing goes too
            store.copy(landing, target)
    except Exception:
        store.delete(landing)
        raise
    if landing != target or not check.ok:
        store.delete(landing)
    return check
