"""Upload sessions (DESIGN §5): which blocks the caller must upload, their keys, and
presigned PUTs to staging keys bound to each encoded block's size and SHA-256."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import secrets
from collections.abc import Iterable, Sequence
from datetime import timedelta

from tessera.blocks import stored_size_limit
from tessera.domain import paths
from tessera.domain.acl import Action
from tessera.domain.commits import (
    check_block_count,
    check_block_list,
    check_block_sizes,
    check_file_size,
)
from tessera.domain.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unprocessable,
)
from tessera.domain.models import (
    BlockKey,
    PresignedUrl,
    UploadBlocksRequest,
    UploadBlocksResponse,
    UploadStartRequest,
    UploadStartResponse,
    UploadUrlsRequest,
    UploadUrlsResponse,
)
from tessera.domain.object_keys import staging_key
from tessera.domain.services import Services
from tessera.domain.views import View, check_access, over_quota, view_transaction
from tessera.metadata.store import MountRow, Store, UploadRow
from tessera.ports import Principal

MAX_PRESIGN_S = 900


def _check_quota(store: Store, view: View, files: Sequence[tuple[MountRow, str, int]]) -> None:
    """413 when the files (mount, path key in it, size) would take the caller over their
    quota, as their commits will count them (`Store.write_version`): a file by what it adds
    to the live file it replaces, so an edit that does not grow a file is never refused,
    even near the quota; the caller's own files, and for a file in a folder shared with
    them that folder's whole content. Never the owner's usage: an editor checked against it
    could size the owner's private files by the answers to sizes they declare. A batch
    commits in namespace order, so a shared folder's files may commit before or after the
    caller's own: each folder is checked without the own files' growth, never refusing
    what the commits would take."""
    by_ns: dict[int, dict[str, int]] = {}
    mounts: dict[int, MountRow] = {}
    for mount, key, size in files:
        by_ns.setdefault(mount.ns_id, {})[key] = size  # the last of one path counts
        mounts[mount.ns_id] = mount
    grow: dict[int, int] = {}
    for ns_id, sizes in by_ns.items():
        live = store.live_sizes(ns_id, list(sizes))
        grow[ns_id] = sum(size - live.get(key, 0) for key, size in sizes.items())
    mine = view.user.user_id
    own_grow = sum(g for n, g in grow.items() if mounts[n].owner_id == mine)
    theirs = [n for n, g in grow.items() if g > 0 and mounts[n].owner_id != mine]
    if own_grow <= 0 and not theirs:
        return  # nothing grows: never refused
    used = store.usage(mine)
    if own_grow > 0 and used + own_grow > view.user.quota_bytes:
        raise over_quota(view, view.root, f"these files need {own_grow} bytes")
    for ns_id, held in (store.bytes_used(theirs) if theirs else {}).items():
        if used + held + grow[ns_id] > view.user.quota_bytes:
            raise over_quota(view, mounts[ns_id], f"these files need {grow[ns_id]} bytes")


def _declare(sizes: dict[str, int], blocks: Iterable[tuple[str, int]]) -> None:
    """Note each block's (id, declared size); 422 for a block declared with two."""
    for bid, size in blocks:
        if sizes.setdefault(bid, size) != size:
            raise Unprocessable(f"block {bid} is declared with two sizes")


def _check_pending(
    svc: Services, store: Store, view: View, needed: Sequence[tuple[str, int]]
) -> None:
    """Hold the bytes a user's open sessions may expect, uncommitted, to their quota (or
    the largest file, if more), and the blocks to `max_pending_blocks`: staging counts
    against no quota, and sessions kept alive by use could hold any multiple of it for two
    days, and blocks of a byte a row each. Over either: 413 when these blocks alone are,
    else 429 until the others are committed or expire."""
    cap, most = (
        max(view.user.quota_bytes, svc.settings.max_file_size),
        svc.settings.max_pending_blocks,
    )
    asked = sum(size for _, size in needed)
    if asked > cap:
        raise PayloadTooLarge(f"these blocks hold {asked} bytes: over the {cap} an upload may")
    if len(needed) > most:
        raise PayloadTooLarge(f"{len(needed)} blocks: over the {most} an upload may expect")
    if not needed:
        return
    store.lock_pending_uploads(view.user.user_id)  # until the session is written
    held, blocks = store.pending_uploads(view.user.user_id, svc.clock.now(), needed)
    if held > cap or blocks > most:
        raise TooManyRequests(
            f"your uploads in progress would expect more than {cap} bytes or {most} blocks"
            " not yet committed; commit them, or wait for them to expire",
            retry_after=60,
        )


def _block_keys(svc: Services, blocks: Iterable[tuple[str, int]]) -> list[BlockKey]:
    """The key of each (block_id, key_version) the caller must upload."""
    keys = []
    for bid, version in blocks:
        kv, key = svc.keys.block_key(bid, version)
        keys.append(BlockKey(id=bid, key_version=kv, key=base64.b64encode(key).decode()))
    return keys


def start_upload(
    svc: Services, principal: Principal, req: UploadStartRequest
) -> UploadStartResponse:
    """Open a session for the files the caller is about to commit. A block is needed unless
    the caller can already read it; the key of every needed block is returned. A file
    declared without blocks has its list appended in parts (`append_blocks`)."""
    settings = svc.settings
    if len(req.files) > settings.max_files_per_upload:
        raise PayloadTooLarge(f"an upload holds at most {settings.max_files_per_upload} files")
    if sum(len(f.blocks or ()) for f in req.files) > settings.max_blocks_per_request:
        raise PayloadTooLarge(
            f"an upload holds at most {settings.max_blocks_per_request} blocks; send a longer"
            " list in parts (blocks: null, then POST /v1/uploads/blocks)"
        )
    version = _current_key_version(svc)
    with view_transaction(svc, principal) as (store, view):
        sizes: dict[str, int] = {}
        by_target: dict[int, list[str]] = {}  # ns_id → the blocks of the files written there
        written: list[tuple[MountRow, str, int]] = []
        in_parts: dict[str, tuple[str, int, str]] = {}  # path key → the upload_files row
        declared: set[str] = set()  # path keys
        for f in req.files:
            path = paths.target(f.path)
            if f.blocks is None:
                check_file_size(settings, f.size, path)
            else:
                check_block_list(
                    settings, f.size, f.content_hash, [(b.id, b.size) for b in f.blocks], path
                )
            mount, rel = view.resolve(path)
            if rel == paths.ROOT:
                raise Unprocessable(f"{path!r} is a folder, not a file")
            check_access(mount, Action.WRITE, view)
            written.append((mount, paths.path_key(rel), f.size))
            key = paths.path_key(path)
            if key in in_parts or (f.blocks is None and key in declared):
                # the quota counts the last declaration of a path: an inline one after
                # a long one had let its parts stage any size
                raise Unprocessable(f"{path!r} is declared twice, once with its list in parts")
            declared.add(key)
            if f.blocks is None:
                in_parts[key] = (key, f.size, f.content_hash)
            else:
                by_target.setdefault(mount.ns_id, []).extend(b.id for b in f.blocks)
                _declare(sizes, ((b.id, b.size) for b in f.blocks))
        _check_quota(store, view, written)
        # needed unless readable for every namespace a file holding it is written into:
        # what the commit of each file will check (`Store.readable_blocks`)
        unreadable: set[str] = set()
        for ns_id, ids in by_target.items():
            readable = store.readable_blocks(view.ns_ids, ids, target=ns_id)
            unreadable.update(bid for bid in ids if bid not in readable)
        needed = [bid for bid in sizes if bid in unreadable]
        _check_pending(svc, store, view, [(bid, sizes[bid]) for bid in needed])
        upload_id = "up_" + secrets.token_hex(16)
        expires_at = svc.clock.now() + timedelta(seconds=settings.upload_ttl_s)
        store.create_upload(
            upload_id,
            view.user.user_id,
            expires_at,
            [
                (bid, sizes[bid], version, staging_key(upload_id, bid, ordinal))
                for ordinal, bid in enumerate(needed)
            ],
            list(in_parts.values()),
        )
    return UploadStartResponse(
        upload_id=upload_id,
        expires_at=expires_at,
        needed=_block_keys(svc, ((bid, version) for bid in needed)),
    )


def append_blocks(
    svc: Services, principal: Principal, req: UploadBlocksRequest
) -> UploadBlocksResponse:
    """Append part of the block list of a file the session declared without one; which of
    the part's blocks the caller must upload, with their keys.

    Parts come in order: `first` is the index of the part's first block, so a retried part
    (its answer lost) matches what is there and appends nothing twice; another list there
    is 409. The commit then names the session instead of sending the list."""
    settings = svc.settings
    if len(req.blocks) > settings.max_blocks_per_request:
        raise PayloadTooLarge(f"a part holds at most {settings.max_blocks_per_request} blocks")
    path = paths.canonical(req.path)
    version = _current_key_version(svc)
    with view_transaction(svc, principal) as (store, view):
        mount, _rel = view.resolve(path)
        check_access(mount, Action.WRITE, view)
        key = paths.path_key(path)
        declared = store.lock_upload_file(req.upload_id, view.user.user_id, key)
        # read once the session is locked: a part that waited behind another sees the
        # session as gc or the clock left it meanwhile
        _open_session(svc, store, view, req.upload_id)
        if declared is None:
            raise NotFound(
                f"upload session {req.upload_id!r} declared no file {path!r} without its blocks"
            )
        if req.first > declared.block_count:
            raise Unprocessable(
                f"{path!r} has {declared.block_count} blocks so far: send the part from"
                f" first={declared.block_count}"
            )
        part = [(b.id, b.size) for b in req.blocks]
        known = store.upload_file_blocks(req.upload_id, key, req.first, len(part))
        if part[: len(known)] != known:
            raise Conflict(
                f"{path!r} holds other blocks from index {req.first}; start a new upload"
            )
        new = part[len(known) :]
        check_block_count(settings, declared.block_count + len(new), path)
        if declared.block_bytes + sum(size for _, size in new) > declared.size:
            raise Unprocessable(f"the blocks of {path!r} add up to more than its size")
        check_block_sizes(settings, new, path)
        sizes: dict[str, int] = {}
        _declare(sizes, part)
        expected = store.upload_blocks(req.upload_id, list(sizes))
        _declare(sizes, ((row.block_id, row.size) for row in expected.values()))
        readable = store.readable_blocks(view.ns_ids, list(sizes), target=mount.ns_id)
        needed = [bid for bid in sizes if bid not in readable and bid not in expected]
        _check_pending(svc, store, view, [(bid, sizes[bid]) for bid in needed])
        base = store.expected_block_count(req.upload_id)
        store.append_upload_file_blocks(
            req.upload_id,
            key,
            req.first + len(known),
            new,
            [
                (bid, sizes[bid], version, staging_key(req.upload_id, bid, base + i))
                for i, bid in enumerate(needed)
            ],
        )
        # a block an earlier part (or file) of the session expects is needed still, until
        # a commit has staged it
        waiting = [
            (bid, expected[bid].key_version)
            for bid in sizes  # in the part's order
            if bid in expected and expected[bid].state == "expected"
        ]
    return UploadBlocksResponse(
        needed=_block_keys(svc, [*waiting, *((bid, version) for bid in needed)])
    )


def _current_key_version(svc: Services) -> int:
    """The key version new blocks go under, its secret loaded (and checked, where keys are
    guarded) before any transaction: refused (503) after it, an upload's session or part
    was recorded all the same, and counted against the user's uploads in progress at every
    retry, holding back their uploads once the keys were back."""
    version = svc.keys.current_version()
    svc.keys.secret(version)
    return version


def _open_session(svc: Services, store: Store, view: View, upload_id: str) -> UploadRow:
    """The caller's open, unexpired session (404 otherwise), its expiry moved on to
    `upload_ttl_s` from now: a session in use lives on, up to `upload_max_lifetime_s`
    from its start. With a fixed hour, a file whose upload took longer (10 GiB below
    ~25 Mbit/s) failed at the hour and started over, every round."""
    session = store.get_upload(upload_id, view.user.user_id)
    now = svc.clock.now()
    if session is None or session.state != "open":
        raise NotFound(f"no upload session {upload_id!r}")
    if session.expires_at <= now:
        raise NotFound(f"upload session {upload_id!r} has expired; start a new upload")
    settings = svc.settings
    expires_at = store.extend_upload(
        upload_id,
        now + timedelta(seconds=settings.upload_ttl_s),
        timedelta(seconds=settings.upload_max_lifetime_s),
    )
    if expires_at is None:  # gc expired it meanwhile
        raise NotFound(f"upload session {upload_id!r} has expired; start a new upload")
    return dataclasses.replace(session, expires_at=expires_at)


def upload_urls(svc: Services, principal: Principal, req: UploadUrlsRequest) -> UploadUrlsResponse:
    """Presigned PUTs for encoded blocks of the caller's own, unexpired session."""
    settings = svc.settings
    if len(req.blocks) > settings.max_urls_per_request:
        raise PayloadTooLarge(f"ask for at most {settings.max_urls_per_request} URLs at once")
    with view_transaction(svc, principal) as (store, view):
        session = _open_session(svc, store, view, req.upload_id)
        now = svc.clock.now()
        rows = store.upload_blocks(req.upload_id, [b.id for b in req.blocks])
        ttl = int(
            min(settings.presign_ttl_s, MAX_PRESIGN_S, (session.expires_at - now).total_seconds())
        )
        puts: list[tuple[str, int, bytes]] = []
        for b in req.blocks:
            row = rows.get(b.id)
            if row is None:
                raise Unprocessable(f"block {b.id} is not needed by this upload session")
            # bounded by the block's own size: by the cap alone, 1-byte blocks could each
            # stage 4 MiB (held to the quota by their declared sizes) until the session expired
            limit = min(settings.max_stored_block_size, stored_size_limit(row.size))
            if b.size > limit:
                raise PayloadTooLarge(
                    f"encoded block {b.id} of {row.size} bytes takes at most {limit} bytes stored,"
                    f" not {b.size}"
                )
            try:
                puts.append((row.staged_key, b.size, base64.b64decode(b.sha256, validate=True)))
            except binascii.Error as exc:
                raise Unprocessable(f"sha256 of block {b.id} is not base64") from exc
        recorded = store.set_upload_blocks_stored(
            req.upload_id, [(b.id, b.size, b.sha256) for b in req.blocks]
        )
        if refused := sorted({b.id for b in req.blocks} - recorded):
            # a committed copy is what versions (and dedup-verify) rely on: other bytes for
            # it would be written after they looked
            raise Conflict(f"block {refused[0]} is committed in this session; it cannot change")
        signed = svc.block_store.presign_puts(puts, expires_in=max(ttl, 1))
    urls = [
        PresignedUrl(
            id=b.id, method=p.method, url=p.url, headers=dict(p.headers), expires_at=p.expires_at
        )
        for b, p in zip(req.blocks, signed, strict=True)
    ]
    return UploadUrlsResponse(urls=urls, expires_at=session.expires_at)
