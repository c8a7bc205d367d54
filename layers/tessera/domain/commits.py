"""Commits (DESIGN §4): a new file version in one transaction, with optimistic concurrency
on `parent_rev`, per-user idempotency keys, and batches whose items stand or fall alone."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from tessera.blocks import content_hash
from tessera.domain import paths
from tessera.domain.acl import Action
from tessera.domain.changes import publish
from tessera.domain.errors import (
    Conflict,
    InvalidPath,
    NotFound,
    PayloadTooLarge,
    TesseraError,
    Unavailable,
    Unprocessable,
)
from tessera.domain.idempotency import first_answer, request_hash
from tessera.domain.models import (
    BlockSpec,
    CommitBatchItem,
    CommitBatchRequest,
    CommitBatchResponse,
    CommitRequest,
    ErrorInfo,
    FileEntry,
    dump,
)
from tessera.domain.object_keys import staged_upload_id
from tessera.domain.services import Services
from tessera.domain.views import (
    View,
    check_access,
    file_entry,
    new_file_id,
    over_quota,
    view_transaction,
)
from tessera.metadata.store import (
    CommitReads,
    FileRow,
    MountRow,
    NewJournal,
    ReadableBlock,
    SessionReads,
    Store,
    UploadBlockRow,
    UserRow,
    VersionInfo,
)
from tessera.ports import BlockStore, ChangeEvent, Principal
from tessera.settings import Settings


def check_file_size(settings: Settings, size: int, what: str) -> None:
    """413 for a file over the size limit."""
    if size > settings.max_file_size:
        raise PayloadTooLarge(f"{what} is larger than {settings.max_file_size} bytes")


def check_block_count(settings: Settings, count: int, what: str) -> None:
    """413 for a file of more blocks than a file may have."""
    if count > settings.max_blocks_per_file:
        raise PayloadTooLarge(f"{what} has more than {settings.max_blocks_per_file} blocks")


def check_block_sizes(settings: Settings, blocks: Iterable[tuple[str, int]], what: str) -> None:
    """413 for a block (id, plaintext size) over the block size limit."""
    for bid, bsize in blocks:
        if bsize > settings.max_block_size:
            raise PayloadTooLarge(
                f"block {bid} of {what} is larger than {settings.max_block_size} bytes"
            )


def with_block_list(svc: Services, user_id: str, req: CommitRequest) -> CommitRequest:
    """The commit with its block list: the request's own (at most a request's worth), or
    the one its upload session holds for the path (appended in parts). That list is only
    read here; `check_block_list` then holds it to the commit's size and content hash."""
    if req.blocks is not None:
        if len(req.blocks) > svc.settings.max_blocks_per_request:
            raise PayloadTooLarge(
                f"a commit carries at most {svc.settings.max_blocks_per_request} blocks; send a"
                " longer list in parts (blocks: null, with the upload session holding it)"
            )
        return req
    if req.upload_id is None:
        raise Unprocessable("a commit without blocks names the upload session that holds them")
    path = paths.canonical(req.path)
    with svc.db.transaction() as store:
        listed = store.session_file_blocks(req.upload_id, user_id, paths.path_key(path))
    if listed is None:
        # left as it came: `_commit_in` refuses it (404) once it has claimed its idempotency
        # key, whose stored answer a retry gets after gc has deleted the session
        return req
    # from the database, checked when appended: no need to validate 200,000 models again
    blocks = [BlockSpec.model_construct(id=bid, size=size) for bid, size in listed]
    return req.model_copy(update={"blocks": blocks})


def check_block_list(
    settings: Settings, size: int, digest: str, blocks: list[tuple[str, int]], what: str
) -> None:
    """Limits (413) and consistency (422) of a declared file: its blocks add up to `size`
    and hash to `digest`."""
    check_file_size(settings, size, what)
    check_block_count(settings, len(blocks), what)
    check_block_sizes(settings, blocks, what)
    if sum(b[1] for b in blocks) != size:
        raise Unprocessable(f"{what}: size {size} is not the sum of its block sizes")
    if content_hash(b[0] for b in blocks) != digest:
        raise Unprocessable(f"{what}: content_hash does not match its block list")


@dataclass(frozen=True)
class _Blocks:
    """The checked block list of a commit."""

    ordered: list[tuple[str, int, str | None]]  # (block_id, size, staged_key) per ordinal
    refs: list[tuple[str, int, int, int]]  # (block_id, size, key_version, count)
    staged_now: list[str]  # the session's blocks this commit stages


# The states dedup-verify leaves a staged copy in once its bytes proved to be the block:
# from then on the copy stands for the canonical block.
VERIFIED_COPY_STATES = ("promoted", "dropped")


def settled(store: Store, readable: dict[str, ReadableBlock]) -> dict[str, ReadableBlock]:
    """Pin the staged copies that readable blocks would be carried forward with.

    A block the caller reads only through another version's unverified staged copy keeps
    that copy. The copy's row is locked FOR SHARE, so dedup-verify (which locks it FOR
    UPDATE, repoints every version naming it, then deletes the object) either waits for
    this commit — and then repoints this version too — or has already settled it: verified
    (promoted/dropped) copies give way to the canonical block; a copy that is gone or
    quarantined grants nothing, and the block must be uploaded again. Restoring an old
    version carries its blocks forward the same way (`files.restore`).
    """
    carried = [r.staged_key for r in readable.values() if r.staged_key is not None]
    if not carried:
        return readable
    states = store.lock_staged_copies(carried)
    out: dict[str, ReadableBlock] = {}
    for bid, r in readable.items():
        state = states.get(r.staged_key) if r.staged_key is not None else None
        if r.staged_key is None or state == "staged":
            out[bid] = r
        elif state in VERIFIED_COPY_STATES:
            out[bid] = dataclasses.replace(r, staged_key=None)
    return out


def _verified_session_copies(
    expected: dict[str, UploadBlockRow], ids: Sequence[str]
) -> dict[str, ReadableBlock]:
    """The caller's own session copies among `ids` that dedup-verify has settled since an
    earlier commit of the session staged them (read locked: `Store.session_for_commits`).
    A verified (promoted/dropped) copy is the canonical block, as in `settled`: naming the
    copy instead would keep its object past gc for as long as the version lives."""
    return {
        i: ReadableBlock(i, r.size, "live", None)
        for i in ids
        if (r := expected.get(i)) and r.state in VERIFIED_COPY_STATES
    }


class _StagedSizes:
    """The sizes of the staged objects a request's commits rely on, asked of the block
    store (`BlockStore.sizes`) and remembered for the request: a batch asks for all its
    entries' blocks at once, and each entry's check then finds them here."""

    def __init__(self, block_store: BlockStore) -> None:
        self._block_store = block_store
        self._answered: dict[str, int | None] = {}

    def sizes(self, keys: Sequence[str]) -> dict[str, int]:
        """staged key → size, for the `keys` that have an object."""
        ask = [k for k in dict.fromkeys(keys) if k not in self._answered]
        if ask:
            found = self._block_store.sizes(ask)
            self._answered.update({k: found.get(k) for k in ask})
        return {k: size for k in keys if (size := self._answered[k]) is not None}


def _check_blocks(
    svc: Services,
    store: Store,
    view: View,
    req: CommitRequest,
    ids: list[str],
    rows: CommitReads,
    staged: _StagedSizes,
) -> _Blocks:
    """Every block must be readable by the caller, or staged by their upload session and
    present in the block store with the size the PUT URL was issued for. `ids` are the
    request's distinct block ids, `rows` what the metadata knows of them."""
    if req.upload_id is not None:
        session = rows.session
        if session is None or session.state != "open":
            raise NotFound(f"no upload session {req.upload_id!r}")
        if session.expires_at <= svc.clock.now():
            raise NotFound(f"upload session {req.upload_id!r} has expired; start a new upload")
    readable = settled(store, rows.readable)
    readable |= _verified_session_copies(rows.expected, [i for i in ids if i not in readable])
    missing = [i for i in ids if i not in readable]
    # a copy dedup quarantined grants nothing: like one never sent, it must be sent again
    session_rows = {
        i: r for i in missing if (r := rows.expected.get(i)) and r.state in ("expected", "staged")
    }
    # a PUT URL was issued for these, so they may have arrived: ask the block store
    issued = {i: r for i, r in session_rows.items() if _may_have_arrived(r)}
    uploaded: set[str] = set()
    if issued and req.upload_id is not None:
        keys = [r.staged_key for r in issued.values()]
        found = staged.sizes(keys)
        uploaded = {i for i, r in issued.items() if found.get(r.staged_key) == r.stored_size}
    never = [i for i in missing if i not in uploaded]
    if never:
        raise Unprocessable(
            f"{len(never)} block(s) were never uploaded in this session: {never[0]}"
            + (" …" if len(never) > 1 else ""),
            blocks=never[:20],
        )
    known = {i: r.size for i, r in readable.items()} | {i: r.size for i, r in session_rows.items()}
    blocks = _block_list(req)
    for b in blocks:
        if known[b.id] != b.size:
            raise Unprocessable(f"block {b.id} has size {known[b.id]}, not {b.size}")
    # a block readable only through an unverified staged copy stays tied to that copy:
    # claiming an id must never reach the canonical block before dedup-verify vouches
    staged_key: dict[str, str | None] = {i: r.staged_key for i, r in readable.items()}
    staged_key |= {i: r.staged_key for i, r in session_rows.items()}
    counts: dict[str, int] = {}
    for b in blocks:
        counts[b.id] = counts.get(b.id, 0) + 1
    key_version = {i: r.key_version for i, r in session_rows.items()}
    return _Blocks(
        ordered=[(b.id, b.size, staged_key[b.id]) for b in blocks],
        refs=[(i, known[i], key_version.get(i, 0), n) for i, n in counts.items()],
        staged_now=list(session_rows),
    )


def _may_have_arrived(row: UploadBlockRow) -> bool:
    """The session's copy of the block may be in the block store: its PUT URL was issued,
    and dedup has not quarantined what arrived (a quarantined copy grants nothing)."""
    return row.stored_size is not None and row.state in ("expected", "staged")


def ensure_parents(
    store: Store, view: View, mount: MountRow, rel: str
) -> tuple[str, list[NewJournal]]:
    """Create the missing parent folders of `rel` (409 when one of them is a file).

    Returns `rel` spelled with the existing folders' display names (the first spelling of
    a path wins) and the journal rows of the folders created.
    """
    return ensure_parents_found(
        store, view, mount, rel, store.kinds_at(mount.ns_id, parent_keys(rel))
    )


def parent_keys(rel: str) -> list[str]:
    """The path keys of the folders above `rel`, outermost first."""
    return [paths.path_key(a) for a in paths.ancestors(rel)]


def ensure_parents_found(
    store: Store, view: View, mount: MountRow, rel: str, found: dict[str, tuple[str, str]]
) -> tuple[str, list[NewJournal]]:
    """`ensure_parents`, given what the caller already read at `parent_keys(rel)`
    (`Store.kinds_at`: key → (kind, path_display) of the live entries)."""
    created: list[NewJournal] = []
    parent_display = paths.ROOT
    for ancestor in paths.ancestors(rel):
        key = paths.path_key(ancestor)
        display = paths.join(parent_display, "/" + paths.name(ancestor))
        if key not in found:
            fid = new_file_id()
            parent_key = paths.path_key(paths.parent(display))
            if store.insert_file(mount.ns_id, fid, key, parent_key, display, "folder"):
                created.append(NewJournal(fid, 0, "upsert", "folder", key, parent_key, display))
                parent_display = display
                continue
            found = found | store.kinds_at(mount.ns_id, [key])
        kind, parent_display = found[key]
        if kind == "file":
            raise Conflict(f"{view.view_path(mount, display)!r} is a file, not a folder")
    return stored_display(paths.join(parent_display, "/" + paths.name(rel))), created


def stored_display(display: str) -> str:
    """`display`, the spelling an entry is stored under, if it fits (422 otherwise).

    The request's path passed the limit, but an entry is stored spelled as the folders
    above it are, which may be longer by key-equal names (`ẞ` is 3 bytes, its key `ss`
    2): stored over the limit, it would be a path no later request could name."""
    if problem := paths.length_problem(display):
        raise InvalidPath(f"spelled as the folders above it, {display!r} would be {problem}")
    return display


class _PathTaken(Exception):
    """`write_version(create=True)` found a live entry at the path; nothing was written."""


def write_version(
    svc: Services,
    store: Store,
    view: View,
    mount: MountRow,
    *,
    file_id: str,
    rev: int,
    key: str,
    display: str,
    size: int,
    digest: str,
    mtime: datetime | None,
    blocks: Sequence[tuple[str, int, str | None]],
    refs: Sequence[tuple[str, int, int, int]],
    journal: Sequence[NewJournal],
    op: str,
    create: bool = False,
) -> tuple[FileEntry, ChangeEvent]:
    """Write version `rev` of a file whose row is locked: journal (+ outbox + notify), the
    version and its blocks, refcounts, the file's latest rev. Returns entry and event.

    With `create`, the file row is inserted by the same statement (a new file in one round
    trip); `_PathTaken` when a live entry already holds the path."""
    parent_key = paths.path_key(paths.parent(display))
    written = store.write_version(
        mount.ns_id,
        file_id,
        rev,
        size=size,
        content_hash=digest,
        author_id=view.user.user_id,
        mtime=mtime,
        path_display=display,
        blocks=blocks,
        refs=refs,
        journal=[
            *journal,
            NewJournal(
                file_id, rev, "upsert", "file", key, parent_key, display, size, digest, mtime
            ),
        ],
        payload={
            "op": op,
            "file_id": file_id,
            "rev": rev,
            "path": display,
            # the sessions whose staged copies this version names (dedup verifies them):
            # a few ids, where a list of the copies grew with the file past the 256 KB an
            # EventBridge request and the 400 KB a DynamoDB item may hold
            "upload_ids": sorted({u for b in blocks if b[2] and (u := staged_upload_id(b[2]))}),
        },
        create=(key, parent_key) if create else None,
    )
    if written is None:
        raise _PathTaken
    if written.over_quota:  # the transaction rolls back, the counters with it
        raise over_quota(view, mount, f"{display!r} needs {size} bytes")
    # A canonical block this commit meant to reuse that gc deleted (its row is new), or
    # that scrub quarantined meanwhile (too late for scrub to list this version damaged):
    # the client uploads it again.
    reused = {b[0] for b in blocks if b[2] is None}
    gone = sorted((written.created | written.quarantined) & reused)
    if gone:
        raise Unprocessable(
            f"{len(gone)} block(s) are no longer stored; upload them again", blocks=gone[:20]
        )
    row = FileRow(
        mount.ns_id,
        file_id,
        key,
        display,
        "file",
        rev,
        False,
        None,
        VersionInfo(size, digest, mtime, written.server_time),
    )
    return file_entry(view, mount, row), written.event


def _row_to_update(
    store: Store, ns_id: int, key: str, path: str, parent_rev: int | None, parent_id: str | None
) -> FileRow:
    """The file at `key`, locked, when it is at `parent_rev`; else 409 with its rev."""
    row = store.file_by_path(ns_id, key, lock=True)
    if row is None:
        if parent_rev is not None:
            raise Conflict(f"{path!r} was deleted or moved since rev {parent_rev}", rev=None)
        raise Conflict(f"{path!r} changed during the commit; retry", rev=None)
    if row.kind != "file":
        raise Conflict(f"{path!r} is a folder, not a file")
    check_parent(row, path, parent_rev, parent_id)
    return row


def check_parent(row: FileRow, path: str, parent_rev: int | None, parent_id: str | None) -> None:
    """409 (with the file's rev and id) unless the file at `path` is the one the client
    changed: at `parent_rev`, and `parent_id` when given. The rev alone cannot tell a file
    deleted and made again elsewhere from the one the client saw: both may be at rev 1."""
    if parent_rev != row.latest_rev or parent_id not in (None, row.file_id):
        seen = f"rev {parent_rev}" if parent_id in (None, row.file_id) else "another file"
        raise Conflict(
            f"{path!r} is at rev {row.latest_rev} of {row.file_id}, not {seen}",
            rev=row.latest_rev,
            file_id=row.file_id,
        )


class _Target(NamedTuple):
    """Where a commit writes: its canonical path, the mount holding it, the path relative to
    that mount and its key."""

    path: str
    mount: MountRow
    rel: str
    key: str


def _target(svc: Services, view: View, req: CommitRequest) -> _Target:
    """The commit's target, after the checks that need no database: the block list, the
    path, and write access there."""
    path = paths.target(req.path)
    if req.blocks is not None:  # None: no list in its session (`_commit_in` refuses it)
        check_block_list(
            svc.settings, req.size, req.content_hash, [(b.id, b.size) for b in req.blocks], path
        )
    mount, rel = view.resolve(path)
    if rel == paths.ROOT:
        raise Conflict(f"{path!r} is a folder, not a file")
    check_access(mount, Action.WRITE, view)
    return _Target(path, mount, rel, paths.path_key(rel))


def _commit_in(
    svc: Services,
    store: Store,
    view: View,
    req: CommitRequest,
    staged: _StagedSizes,
    after: _AfterCommits,
    root_reads: CommitReads | None = None,
    sessions: Mapping[str, SessionReads] | None = None,
    target: _Target | None = None,
    usage_locked: bool = False,
) -> tuple[FileEntry, ChangeEvent | None]:
    """One commit inside an open transaction (or savepoint); what it leaves for the end of
    the transaction goes to `after`. `root_reads`: what `Store.view_for_commit` already
    locked and read in the caller's root namespace; `sessions`: upload sessions a batch
    already read (`Store.session_for_commits`); `target`: `_target(svc, view, req)`, when
    the caller has it; `usage_locked`: the caller holds their own `Store.lock_usage`
    (a batch takes it before its namespaces: the lock order)."""
    path, mount, rel, key = target or _target(svc, view, req)
    ids = _block_ids(req)
    # the namespace first, before any file row or idempotency key: lock order
    if root_reads is not None and mount is view.root and rel == path:
        rows = root_reads
    else:
        rows = store.lock_for_commit(
            mount.ns_id,
            parent_keys(rel),
            ns_ids=view.ns_ids,
            block_ids=ids,
            upload_id=req.upload_id,
            user_id=view.user.user_id,
            session=sessions.get(req.upload_id) if sessions and req.upload_id else None,
            # The root's statement above needs none (a user who sees their root alone writes
            # in no other namespace of theirs), nor a batch's entry (`usage_locked`).
            lock_usage=bool(req.size) and not usage_locked,
        )
    if rows.membership_version != view.user.membership_version:
        # a share or unshare committed after the view was read: the path may lead into
        # another namespace now (written here, the file would lie hidden under a mount)
        raise Unavailable("your shared folders changed during this commit; retry it")
    if req.idempotency_key is not None:
        digest = request_hash(req)
        first = after.claim(store, view.user.user_id, req.idempotency_key, digest)
        if first is not None:
            return first_answer(first, digest, FileEntry.model_validate), None
    if req.blocks is None:
        raise NotFound(f"upload session {req.upload_id!r} holds no block list for {path!r}")
    blocks = _check_blocks(svc, store, view, req, ids, rows, staged)
    display, journal = ensure_parents_found(store, view, mount, rel, rows.kinds)
    version = functools.partial(
        write_version,
        svc,
        store,
        view,
        mount,
        key=key,
        size=req.size,
        digest=req.content_hash,
        mtime=req.mtime,
        blocks=blocks.ordered,
        refs=blocks.refs,
        journal=journal,
        op="commit",
    )
    written = None
    if req.parent_rev is None:  # a new file, the common case of a sync: one statement
        with contextlib.suppress(_PathTaken):
            written = version(file_id=new_file_id(), rev=1, display=display, create=True)
    if written is None:
        row = _row_to_update(store, mount.ns_id, key, path, req.parent_rev, req.parent_file_id)
        written = version(file_id=row.file_id, rev=row.latest_rev + 1, display=row.path_display)
    result, event = written
    if blocks.staged_now and req.upload_id is not None:
        after.staged.setdefault(req.upload_id, {}).update(dict.fromkeys(blocks.staged_now))
    if req.idempotency_key is not None:
        after.responses[req.idempotency_key] = dump(result)
    return result, event


@dataclass
class _AfterCommits:
    """What a transaction's commits share: the idempotency keys a batch claimed at once,
    and what they write once, after the last of them: the staged copies their versions now
    reference (upload_id -> block ids) and the responses their idempotency keys return.
    Claimed and written entry by entry, these were three statements of an entry's five in a
    batch (bench/bench_aws.py's initial sync: 1,000 entries)."""

    staged: dict[str, dict[str, None]] = dataclasses.field(default_factory=dict)
    responses: dict[str, dict[str, object]] = dataclasses.field(default_factory=dict)
    #: keys claimed ahead for the entries (`claim_all`), each with what an earlier
    #: transaction stored for it (hash, response) or None when this one claimed it
    ahead: dict[str, tuple[str, dict[str, object] | None] | None] = dataclasses.field(
        default_factory=dict
    )
    #: keys claimed ahead that an entry holds: its request hash
    held: dict[str, str] = dataclasses.field(default_factory=dict)

    def claim_all(self, store: Store, user_id: str, claims: Mapping[str, str]) -> None:
        """Claim every key of `claims` (key -> request hash) in one statement. The caller
        holds the namespaces the entries write to: the lock order (namespaces, then keys)."""
        self.ahead = {key: None for key in claims} | store.claim_idempotency_keys(user_id, claims)

    def claim(
        self, store: Store, user_id: str, key: str, request_hash: str
    ) -> tuple[str, dict[str, object] | None] | None:
        """Claim `key` for one entry, from the claims made ahead when there are: None when
        this entry holds the key now, else the first holder's (hash, response) — for an
        earlier entry of this transaction, its response not written yet (None if it has
        none)."""
        if key not in self.ahead:
            return store.claim_idempotency_keys(user_id, {key: request_hash}).get(key)
        if (earlier := self.ahead[key]) is not None:
            return earlier
        if key in self.held:
            return self.held[key], self.responses.get(key)
        self.held[key] = request_hash
        return None

    def release(self, key: str | None) -> None:
        """An entry that held `key` failed (in its savepoint): another entry may take it,
        and unless one does, `write` gives it up, as the savepoint undid a claim of its own."""
        if key is not None and key not in self.responses:
            self.held.pop(key, None)

    def write(self, store: Store, user_id: str) -> None:
        """Write them in `store`'s transaction."""
        for upload_id, block_ids in sorted(self.staged.items()):
            store.mark_staged(upload_id, list(block_ids))
        if self.responses:
            # a key claimed ahead holds the hash of the entry it was claimed for, which may
            # have failed and left it to another entry: the request it answers is the holder's
            store.store_idempotent_responses(
                user_id, {k: (self.held.get(k), r) for k, r in self.responses.items()}
            )
        unused = [k for k, earlier in self.ahead.items() if earlier is None and k not in self.held]
        if unused:
            store.release_idempotency_keys(user_id, unused)


def commit(svc: Services, principal: Principal, req: CommitRequest) -> FileEntry:
    """Commit one file version; 409 (with the current rev) when `parent_rev` is stale.

    For a caller without shared folders, every path is in their root namespace, so the
    view's statement also takes that namespace and reads what the commit checks
    (`Store.view_for_commit`): one round trip less than resolving the path first."""
    req = with_block_list(svc, principal.user_id, req)
    path = paths.target(req.path)
    ids = _block_ids(req)
    root_reads: list[CommitReads] = []

    def read_view(store: Store) -> tuple[UserRow, list[MountRow]] | None:
        if len(ids) > svc.settings.max_blocks_per_request:  # a long list (in parts): no fast path
            return store.user_view(principal.user_id)
        found, reads = store.view_for_commit(
            principal.user_id, parent_keys(path), block_ids=ids, upload_id=req.upload_id
        )
        root_reads[:] = [reads] if reads is not None else []
        return found

    after = _AfterCommits()
    with view_transaction(svc, principal, read_view=read_view) as (store, view):
        result, event = _commit_in(
            svc,
            store,
            view,
            req,
            _StagedSizes(svc.block_store),
            after,
            root_reads[0] if root_reads else None,
        )
        after.write(store, view.user.user_id)
    publish(svc.feed, [event])
    return result


def _block_ids(req: CommitRequest) -> list[str]:
    """The request's distinct block ids, in order (none when its session holds no list)."""
    return list(dict.fromkeys(b.id for b in req.blocks or ()))


def _block_list(req: CommitRequest) -> list[BlockSpec]:
    """The blocks of a commit that `with_block_list` has filled in."""
    assert req.blocks is not None, "with_block_list fills in the list first"
    return req.blocks


def _batch_sessions(
    store: Store, view: View, entries: Sequence[CommitRequest]
) -> dict[str, SessionReads]:
    """The upload sessions a batch's entries name, each read once for all of them: its
    row and its expected rows of their blocks. Each entry used to read them itself (with a
    count of the session's issued blocks, no longer needed: three statements of eight)."""
    wanted: dict[str, dict[str, None]] = {}
    for entry in entries:
        if entry.upload_id is not None:
            wanted.setdefault(entry.upload_id, {}).update(dict.fromkeys(_block_ids(entry)))
    return {
        upload_id: store.session_for_commits(upload_id, view.user.user_id, list(ids))
        for upload_id, ids in sorted(wanted.items())
    }


class _EntryFailed(Exception):
    """An entry of a batch run without a savepoint failed: the whole run is rolled back."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


#: Entries seen failing (each costing a rerun with a savepoint around it) before a batch
#: runs with a savepoint per entry.
_FAILURES_BEFORE_ALL_SAVEPOINTS = 2


def commit_batch(
    svc: Services, principal: Principal, req: CommitBatchRequest
) -> CommitBatchResponse:
    """Many commits in one transaction, each succeeding or failing alone. Items run in
    (namespace, path) order so concurrent batches cannot deadlock.

    The batch first runs without savepoints: in psycopg's pipeline mode a savepoint costs
    four round trips, more than an entry's own statements, and a sync's batch seldom holds
    a failure. When an entry fails, that transaction is rolled back whole and the batch runs
    again with a savepoint around that entry only, so its result (success or failure) is the
    committed transaction's, like every other entry's. Only when that second run meets
    another failure does a last run take a savepoint per entry: a batch with many failures
    costs three runs, not one per failure (docs/api.md has figures). An entry refused
    before any statement (`_target`: path, block list, access) costs no rerun at all."""
    if len(req.entries) > svc.settings.max_commits_per_batch:
        raise PayloadTooLarge(f"a batch holds at most {svc.settings.max_commits_per_batch} commits")
    entries: list[CommitRequest] = []
    refused: dict[int, TesseraError] = {}  # before any statement of the batch's transaction
    # Block lists sent in parts are read from the database, up to a largest file's each: a
    # batch of a thousand entries naming one such list read it a thousand times (262 M
    # rows from a 250 KB request). A batch reads lists of one largest file's worth; an
    # entry past that is refused unread (413), to be committed in a batch of its own.
    budget = svc.settings.max_blocks_per_file
    for i, entry in enumerate(req.entries):
        try:
            if entry.blocks is None and budget <= 0:
                raise PayloadTooLarge(
                    "this batch's block lists sent in parts are as long as a batch reads;"
                    " commit this file in a batch of its own"
                )
            entries.append(with_block_list(svc, principal.user_id, entry))
            if entry.blocks is None:
                budget -= len(entries[-1].blocks or ())
        except TesseraError as exc:
            refused[i] = exc
            entries.append(entry)
    req = req.model_copy(update={"entries": entries})
    staged = _StagedSizes(svc.block_store)
    failed: set[int] = set()
    while True:
        every = len(failed) >= _FAILURES_BEFORE_ALL_SAVEPOINTS
        try:
            results, events = _commit_entries(
                svc, principal, req, refused, staged, savepoints=None if every else failed
            )
            break
        except _EntryFailed as exc:
            failed.add(exc.index)
    publish(svc.feed, events)
    return CommitBatchResponse(entries=results)


def _failure(exc: TesseraError) -> CommitBatchItem:
    """A batch entry's result for the error it met."""
    return CommitBatchItem.model_validate(
        {
            ".tag": "failure",
            "status": exc.status,
            "error": ErrorInfo.model_validate(exc.to_body()["error"]),
        }
    )


def _commit_entries(
    svc: Services,
    principal: Principal,
    req: CommitBatchRequest,
    refused: Mapping[int, TesseraError],
    staged: _StagedSizes,
    *,
    savepoints: Container[int] | None,
) -> tuple[list[CommitBatchItem], list[ChangeEvent | None]]:
    """Commit every entry in one transaction but those `refused` already (their error is
    their result). The entries at the indexes `savepoints` (None: all) run in a savepoint
    each, and their failure is their result; any other entry's failure raises
    _EntryFailed."""
    results: list[CommitBatchItem | None] = [None] * len(req.entries)
    events: list[ChangeEvent | None] = []
    after = _AfterCommits()
    with view_transaction(svc, principal, pipeline=True) as (store, view):
        targets: dict[int, _Target] = {}
        for i, request in enumerate(req.entries):
            if i in refused:
                results[i] = _failure(refused[i])
                continue
            try:  # refused before any statement: nothing to roll back, no rerun
                targets[i] = _target(svc, view, request)
            except TesseraError as exc:
                results[i] = _failure(exc)
        # only entries within the limits: a refused one's block ids, up to the body's
        # size, would all go to the database first
        sessions = _batch_sessions(store, view, [req.entries[i] for i in targets])
        # ask the block store about the whole batch's staged copies at once (on S3, one
        # listing per run of keys): entry by entry, each would ask on its own
        staged.sizes(
            [
                row.staged_key
                for reads in sessions.values()
                for row in reads.expected.values()
                if row.stored_size is not None
            ]
        )

        order = sorted(targets, key=lambda i: (targets[i].mount.ns_id, targets[i].key))
        if any(req.entries[i].size for i in order):
            store.lock_usage(view.user.user_id)
        for ns_id in sorted({targets[i].mount.ns_id for i in order}):
            store.lock_namespace(ns_id)  # before any idempotency key: the lock order
        after.claim_all(
            store,
            view.user.user_id,
            {
                key: request_hash(req.entries[i])
                for i in reversed(order)  # the first entry of a key claims it
                if (key := req.entries[i].idempotency_key) is not None
            },
        )
        # the staged copies the entries carry forward, then the blocks, every entry's at
        # once, after the namespaces and keys: the lock order (a commit's and dedup's: a
        # copy before its block)
        blocks_by_ns: dict[int, set[str]] = {}
        for i in order:
            blocks_by_ns.setdefault(targets[i].mount.ns_id, set()).update(
                b.id for b in req.entries[i].blocks or ()
            )
        for ns_id in sorted(blocks_by_ns):
            store.pin_staged_copies(ns_id, sorted(blocks_by_ns[ns_id]))
        store.lock_blocks(
            (b.id for i in order for b in req.entries[i].blocks or ()),
            create=(
                (r.block_id, r.size, r.key_version)
                for reads in sessions.values()
                for r in reads.expected.values()
                if _may_have_arrived(r)
            ),
        )
        for i in order:
            isolated = savepoints is None or i in savepoints
            try:
                with store.savepoint() if isolated else contextlib.nullcontext():
                    entry, event = _commit_in(
                        svc,
                        store,
                        view,
                        req.entries[i],
                        staged,
                        after,
                        sessions=sessions,
                        target=targets[i],
                        usage_locked=True,
                    )
            except TesseraError as exc:
                if not isolated:
                    raise _EntryFailed(i) from exc
                after.release(req.entries[i].idempotency_key)
                results[i] = _failure(exc)
                continue
            results[i] = CommitBatchItem.model_validate(
                {".tag": "success", "entry": entry, "status": 200}
            )
            events.append(event)
        after.write(store, view.user.user_id)
    return [r for r in results if r is not None], events
