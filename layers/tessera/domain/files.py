"""Reading and changing entries: metadata, download, revisions, restore/undelete, move,
soft delete, trash, create folder (DESIGN §4-§5). Everything is checked against the
caller's view: what they cannot see is 404, what they can see but not change is 403."""

from __future__ import annotations

import base64
import dataclasses

from pydantic import TypeAdapter

from tessera.domain import paths
from tessera.domain.acl import Action
from tessera.domain.changes import publish
from tessera.domain.commits import (
    VERIFIED_COPY_STATES,
    check_parent,
    ensure_parents,
    settled,
    stored_display,
    write_version,
)
from tessera.domain.errors import BlockUnavailable, Conflict, NotFound, Unprocessable
from tessera.domain.idempotency import remember, replayed
from tessera.domain.listing import PageBudget
from tessera.domain.models import (
    CreateFolderRequest,
    DeletedEntry,
    DeleteRequest,
    DownloadBlock,
    DownloadRequest,
    DownloadResponse,
    FileEntry,
    FolderEntry,
    MetadataRequest,
    MoveRequest,
    RestoreRequest,
    RestoringResponse,
    RevisionsRequest,
    RevisionsResponse,
    TrashEntry,
    TrashListRequest,
    TrashListResponse,
)
from tessera.domain.object_keys import canonical_key
from tessera.domain.services import Services
from tessera.domain.sharing import check_empty, delete_share, leave_share
from tessera.domain.views import (
    Located,
    View,
    check_access,
    check_mounts_unchanged,
    entry,
    entry_names,
    file_entry,
    folder_entry,
    locate,
    new_file_id,
    over_quota,
    require_file,
    view_transaction,
)
from tessera.metadata.store import (
    FileRow,
    MountRow,
    NewJournal,
    ReadableBlock,
    Store,
    VersionBlockRow,
    VersionInfo,
    VersionRow,
)
from tessera.parallel import parallel_map
from tessera.ports import ChangeEvent, Principal, StorageTier

# what a retried restore, move or delete answers again (`idempotency.replayed`)
_ENTRY: TypeAdapter[FileEntry | FolderEntry] = TypeAdapter(FileEntry | FolderEntry)
_FOLDER: TypeAdapter[FolderEntry] = TypeAdapter(FolderEntry)


def metadata(
    svc: Services, principal: Principal, req: MetadataRequest
) -> FileEntry | FolderEntry | DeletedEntry:
    """One entry by path or file_id (deleted ones only with `include_deleted`)."""
    with view_transaction(svc, principal) as (store, view):
        loc = locate(
            store, view, path=req.path, file_id=req.file_id, include_deleted=req.include_deleted
        )
        return entry(view, loc)


def _version_entry(view: View, loc: Located, row: FileRow, version: VersionRow) -> FileEntry:
    info = VersionInfo(version.size, version.content_hash, version.mtime, version.server_time)
    at_rev = FileRow(
        row.ns_id,
        row.file_id,
        row.path_key,
        row.path_display,
        "file",
        version.rev,
        row.is_deleted,
        row.deleted_at,
        info,
    )
    return file_entry(view, loc.mount, at_rev)


def download(
    svc: Services, principal: Principal, req: DownloadRequest
) -> DownloadResponse | RestoringResponse:
    """Presigned GETs and keys for a file's blocks at a rev. A block not yet verified is
    served from the staged copy this version was committed with (never anyone else's);
    cold blocks start a restore and the answer is `restoring`, unless their object is still
    hot (marked cold, not moved yet: served as it is).

    The read is recorded first: it takes the rows' locks, so a block cold storage is moving
    (it holds the row) is seen once moved, as cold, and one it has yet to mark stays live
    (`maintenance.cold`): a block whose row said live is never handed out as it moves.

    The answer holds one page of blocks (`DownloadRequest`). The first page checks and
    records the whole version (a damaged or cold block anywhere is known before any byte
    is fetched, and the restores start at once, `max_cold_checks` a request); a later
    page, its own blocks."""
    settings, bs = svc.settings, svc.block_store
    with view_transaction(svc, principal) as (store, view):
        loc = locate(
            store, view, path=req.path, file_id=req.file_id, include_deleted=req.include_deleted
        )
        row = require_file(loc, req.path or req.file_id or "")
        rev = req.rev or row.latest_rev
        version = store.version(row.ns_id, row.file_id, rev)
        if version is None:
            raise NotFound(f"no rev {rev} of this file")
        first = req.from_block
        size = min(req.limit or settings.download_page_blocks, settings.download_page_blocks)
        # a later page reads its own blocks (and one more: is there a next?), not the whole
        # version's: 400 pages of a 200,000-block file read 200,000 rows each
        checked = store.version_blocks(
            row.ns_id, row.file_id, rev, first, None if first == 0 else size + 1
        )
        if first and not checked:
            every = store.version_blocks(row.ns_id, row.file_id, rev)
            raise Unprocessable(f"from_block {first} is past the file's {len(every)} blocks")
        page = checked[:size]
        more = len(checked) > size
        if first:
            checked = page
        now_state = store.touch_blocks([vb.block_id for vb in checked])
        # what the device holds is read from its copy: a cold one of those needs no
        # restore (a one-byte edit of a cold file waited hours for all of its blocks);
        # anything else about it (damaged, a staged copy) is judged as ever
        have = set(req.have)
        states = [now_state.get(vb.block_id, vb.state) for vb in checked]
        states = [
            "live" if s in ("cold", "restoring") and vb.block_id in have else s
            for vb, s in zip(checked, states, strict=True)
        ]
        # The cold tier is asked about `io_workers` blocks at once (one by one, a cold file
        # of a thousand blocks outlasted the API's 29 s on S3, and no restore was ever
        # recorded), and about `max_cold_checks` a request: those not yet restoring first,
        # so each request of a huge cold file starts more restores, and the client's
        # retries (202) go on from there.
        frozen = sorted(
            (
                (state != "cold", canonical_key(vb.block_id))
                for vb, state in zip(checked, states, strict=True)
                if state in ("cold", "restoring") and not serves_own_copy(vb, state)
            )
        )
        asked = list(dict.fromkeys(key for _, key in frozen))[: settings.max_cold_checks]
        heads = dict(zip(asked, parallel_map(bs.head, asked, settings.io_workers), strict=True))
        sources: list[str] = []
        cold: dict[str, None] = {}  # to restore now
        waiting: dict[str, None] = {}  # not asked about this time
        for vb, state in zip(checked, states, strict=True):
            live_key = canonical_key(vb.block_id)
            if serves_own_copy(vb, state):
                if vb.staged_key is None or vb.staged_state == "quarantined":
                    raise BlockUnavailable(
                        f"block {vb.block_id} failed verification", block_id=vb.block_id
                    )
                sources.append(vb.staged_key)
                continue
            if state == "quarantined":
                raise BlockUnavailable(f"block {vb.block_id} is damaged", block_id=vb.block_id)
            if state in ("cold", "restoring") and live_key not in heads:
                waiting[vb.block_id] = None
            elif state in ("cold", "restoring"):
                head = heads[live_key]
                # no restore can bring it back; scrub (cold) or complete_restores (restoring)
                # records the loss and tells the namespace
                if head is None:
                    raise BlockUnavailable(
                        f"block {vb.block_id} is missing from the cold tier",
                        block_id=vb.block_id,
                    )
                if not (head.tier == StorageTier.HOT or head.restored):
                    cold[vb.block_id] = None
            sources.append(live_key)
        if cold or waiting:
            parallel_map(
                lambda bid: bs.restore(canonical_key(bid), days=settings.restore_days),
                cold,
                settings.io_workers,
            )
            store.mark_restoring(list(cold))
            return RestoringResponse(
                retry_after=settings.restore_retry_after_s,
                blocks=list(cold | waiting)[: settings.max_cold_checks],
            )
        result_entry = _version_entry(view, loc, row, version)
        offset = store.version_offset(row.ns_id, row.file_id, rev, first) if first else 0
    blocks: list[DownloadBlock] = []
    # `sources` follows `checked`, which begins with the page (the page, or the whole file)
    for vb, source in zip(page, sources[: len(page)], strict=True):
        get = bs.presign_get(source, expires_in=min(settings.presign_ttl_s, 900))
        kv, key = svc.keys.block_key(vb.block_id, vb.key_version)
        blocks.append(
            DownloadBlock(
                id=vb.block_id,
                offset=offset,
                size=vb.size,
                method=get.method,
                url=get.url,
                headers=dict(get.headers),
                key_version=kv,
                key=base64.b64encode(key).decode(),
            )
        )
        offset += vb.size
    return DownloadResponse(
        entry=result_entry, blocks=blocks, next_block=first + len(page) if more else None
    )


def serves_own_copy(vb: VersionBlockRow, state: str) -> bool:
    """Whether a download serves the version its own staged copy: an unverified version
    is served that copy, never the canonical block (a copy dedup-verify already vouched
    for gives way to the canonical block)."""
    verified = vb.staged_state in VERIFIED_COPY_STATES
    return (vb.staged_key is not None and not verified) or state == "staged"


def revisions(svc: Services, principal: Principal, req: RevisionsRequest) -> RevisionsResponse:
    """A file's versions, newest first (also of a deleted file)."""
    with view_transaction(svc, principal) as (store, view):
        loc = locate(store, view, path=req.path, file_id=req.file_id, include_deleted=True)
        row = require_file(loc, req.path or req.file_id or "")
        versions = store.versions(row.ns_id, row.file_id, req.limit)
        return RevisionsResponse(
            is_deleted=row.is_deleted,
            entries=[_version_entry(view, loc, row, v) for v in versions],
        )


def _journal(row: FileRow, op: str, path_key: str, path_display: str) -> NewJournal:
    """The journal row of `op` ("upsert" or "delete") on `row` at `path_display`; an upsert
    carries the row's latest version (files), a delete none."""
    v = row.version if op == "upsert" else None
    return NewJournal(
        row.file_id,
        row.latest_rev,
        op,
        row.kind,
        path_key,
        paths.path_key(paths.parent(path_display)),
        path_display,
        v.size if v else None,
        v.content_hash if v else None,
        v.mtime if v else None,
    )


def _relock(store: Store, view: View, loc: Located, what: str) -> FileRow:
    """The located entry again, its namespace and row locked for the change.

    It was located before the lock, so a change that held the lock meanwhile may have
    moved, deleted, undeleted or shared it, or mounted a share where the change leads: 409
    then, rather than changing it where it no longer is."""
    assert loc.row is not None
    store.lock_namespace(loc.mount.ns_id)
    check_mounts_unchanged(store, view, what)
    row = store.file_by_id(loc.row.file_id, lock=True)
    if row is None or (row.ns_id, row.path_key, row.is_deleted) != (
        loc.row.ns_id,
        loc.row.path_key,
        loc.row.is_deleted,
    ):
        raise Conflict(f"{what!r} changed during the request; retry")
    return row


def _lock_resolved(store: Store, view: View, path: str, mount: MountRow) -> None:
    """Take the namespace that `path` resolved to, before any file row (the lock order).

    The view was read before the lock, so a share that held it meanwhile may have turned a
    folder at or above `path` into a mount point, or changed the caller's access to it
    (made them a viewer): 409 then, rather than writing into the root namespace, hidden
    under the mount, or writing with the access they had."""
    store.lock_namespace(mount.ns_id)
    check_mounts_unchanged(store, view, path)


def _reopen_path(store: Store, view: View, mount: MountRow, row: FileRow) -> list[NewJournal]:
    """Make the old path of a deleted entry ready for it again: its missing parent folders
    are created (returns their journal rows). 409 when a live entry took the path, or a
    shared folder has been mounted at or above it since: the entry would lie hidden under
    the mount, in a namespace the path no longer leads to."""
    where = view.view_path(mount, row.path_display)
    if store.live_path_taken(row.ns_id, row.path_key):
        raise Conflict(f"{where!r} is taken; move it first")
    if _under_a_mount(view, mount, row):
        raise Conflict(
            f"a shared folder is mounted at or above {where!r}; it can go back once that"
            " folder is no longer shared (unshared from everyone, then deleted and restored,"
            " it is a folder of your own again); its content can be downloaded meanwhile",
            reason="under_a_shared_folder",
        )
    return ensure_parents(store, view, mount, row.path_display)[1]


def _place_under_live_folders(store: Store, rows: list[FileRow]) -> list[FileRow]:
    """`rows` (deleted entries of one namespace, by key) as they come back: each spelled as
    the live folder above it is, or as the entry above it that comes back with it (a
    folder deleted as `/Straße` may have come back as `/STRASSE`). An entry with neither
    above it (a file holds its folder's path now) is left out: it stays in the trash."""
    if not rows:
        return rows
    ns_id = rows[0].ns_id
    keys = {r.path_key for r in rows}
    above = {paths.path_key(paths.parent(r.path_display)) for r in rows} - keys - {paths.ROOT}
    placed = {paths.ROOT: paths.ROOT} | {
        key: display
        for key, (kind, display) in store.kinds_at(ns_id, sorted(above)).items()
        if kind == "folder"
    }
    out, respelled = [], []
    for r in rows:  # by key: a folder comes before what it holds
        folder = placed.get(paths.path_key(paths.parent(r.path_display)))
        if folder is None:
            continue
        display = stored_display(paths.join(folder, "/" + paths.name(r.path_display)))
        placed[r.path_key] = display
        out.append(dataclasses.replace(r, path_display=display))
        if display != r.path_display:
            respelled.append(out[-1])
    if respelled:
        store.rename(
            ns_id,
            [(r.file_id, r.path_key, paths.path_key(paths.parent(r.path_display)), r.path_display)
             for r in respelled],
        )  # fmt: skip
    return out


def _undelete_subtree(
    store: Store, view: View, mount: MountRow, row: FileRow
) -> tuple[list[NewJournal], FileRow]:
    """Make a deleted entry live again at its old path, and with a folder everything that
    was deleted with it (entries whose path was taken since stay in the trash). The
    entries come back spelled as the live folders above them are.

    A folder whose path a live folder holds again (made since, or made by the undelete of
    a file that was in it) is merged into it: what was deleted with it comes back into
    the live folder, and the deleted folder leaves the trash, as do the folders below it
    merged likewise. It had been refused as "taken", with no way back for its other
    entries but one undelete each.

    Returns the journal rows and the entry now at the path."""
    merge_into = None
    if row.kind == "folder":
        live = store.file_by_path(row.ns_id, row.path_key)
        if live is not None and live.kind == "folder":
            merge_into = live  # seen at the path: no mount hides it
    journal = [] if merge_into else _reopen_path(store, view, mount, row)
    restored = [] if merge_into else [row]
    if row.kind == "folder":
        assert row.deleted_at is not None  # a deleted row
        lo, hi = paths.subtree_range(row.path_key)
        restored += store.deleted_along(row.ns_id, lo, hi, row.deleted_at)
        if merge_into:
            store.drop_merged_folders(row.ns_id, row.path_key, lo, hi, row.deleted_at)
        restored = _not_under_a_mount(view, mount, row, restored)
    restored = _place_under_live_folders(store, restored)
    back, over = store.undelete(row.ns_id, [r.file_id for r in restored], view.user.user_id)
    if over:
        raise over_quota(view, mount, f"restoring {row.path_display!r}")
    # the children were read without a lock: gc may have purged some since (`row` is locked)
    restored = [r for r in restored if r.file_id in back]
    journal += [_journal(r, "upsert", r.path_key, r.path_display) for r in restored]
    return journal, merge_into or restored[0]


def _not_under_a_mount(
    view: View, mount: MountRow, folder: FileRow, rows: list[FileRow]
) -> list[FileRow]:
    """`rows` (entries deleted with `folder`) but those a shared folder mounted since at or
    above their path would hide: they stay in the trash, as an undelete of one of them
    alone is refused (`_reopen_path`). Brought back, they lay under the mount, listed twice
    and named by no path, and the owner could not delete the share once alone in it."""
    if not view.mounts_below(paths.path_key(view.view_path(mount, folder.path_display))):
        return rows
    return [r for r in rows if not _under_a_mount(view, mount, r)]


def _under_a_mount(view: View, mount: MountRow, row: FileRow) -> bool:
    """Whether a shared folder is mounted at or above `row`'s path in the caller's view
    (brought back there, the entry would lie hidden under the mount)."""
    return view.resolve(view.view_path(mount, row.path_display))[0].ns_id != row.ns_id


def _deleted_folder_at(store: Store, live: FileRow) -> FileRow:
    """What `undelete PATH` means where `live` holds the path: the folder last deleted there,
    locked, when `live` is a folder too (it is merged into `live`); `live` otherwise. The
    deleted folder lists in the trash under the path, and only its id had reached it."""
    if live.kind != "folder":
        return live
    deleted = store.deleted_by_path(live.ns_id, live.path_key)
    if deleted is None or deleted.kind != "folder":
        return live
    return store.file_by_id(deleted.file_id, lock=True) or live


def restore(svc: Services, principal: Principal, req: RestoreRequest) -> FileEntry | FolderEntry:
    """With `rev`: that version's blocks become a new rev (undeleting the file if needed).
    Without: undelete a deleted file or folder (with what was deleted along with it)."""
    with view_transaction(svc, principal) as (store, view):
        # a restore adds to the caller's usage: queued on first, the lock order (it claims
        # its idempotency key before its namespace, as a move or a delete does)
        store.lock_usage(view.user.user_id)
        if (first := replayed(store, view.user.user_id, req, _ENTRY)) is not None:
            return first
        loc = locate(store, view, path=req.path, file_id=req.file_id, include_deleted=True)
        if loc.row is None:
            raise Unprocessable("the root or a shared folder's mount point cannot be restored")
        check_access(loc.mount, Action.WRITE, view)
        row = _relock(store, view, loc, req.path or req.file_id or "")
        mount = loc.mount
        if req.rev is None:
            if not row.is_deleted and req.path is not None:
                row = _deleted_folder_at(store, row)
            if not row.is_deleted:
                raise Unprocessable(
                    "it is not deleted; to bring back an older version, restore that rev"
                )
            journal, row = _undelete_subtree(store, view, mount, row)
            events = []
            if journal:  # (a merge may bring nothing back: an empty folder, places taken)
                _, event = store.append_journal(
                    mount.ns_id,
                    journal,
                    kind="file",
                    payload={"op": "undelete", "file_id": row.file_id, "path": row.path_display},
                )
                events.append(event)
            result: FileEntry | FolderEntry = (
                file_entry(view, mount, row)
                if row.kind == "file"
                else folder_entry(view, mount, row)
            )
        else:
            if row.kind != "file":
                raise Unprocessable("only files have revisions")
            old = store.version(row.ns_id, row.file_id, req.rev)
            if old is None:
                raise NotFound(f"no rev {req.rev} of this file")
            journal = []
            if row.is_deleted:
                journal = _reopen_path(store, view, mount, row)
                row = _place_under_live_folders(store, [row])[0]
            blocks = store.version_blocks(row.ns_id, row.file_id, req.rev)
            # the old version's staged copies are pinned as a commit pins them: dedup may
            # have settled one since it was read, and the new version must not name it
            old_blocks = {
                b.block_id: ReadableBlock(b.block_id, b.size, b.state, b.staged_key) for b in blocks
            }
            carried = settled(store, old_blocks)
            # a block with no good copy: its staged copy failed, or scrub quarantined it
            damaged = [
                b.block_id
                for b in blocks
                if b.block_id not in carried
                or (carried[b.block_id].staged_key is None and b.state == "quarantined")
            ]
            if damaged:
                raise Unprocessable(
                    f"rev {req.rev} has {len(set(damaged))} block(s) that failed"
                    " verification; upload the file again",
                    blocks=list(dict.fromkeys(damaged))[:20],
                )
            counts: dict[str, int] = {}
            for b in blocks:
                counts[b.block_id] = counts.get(b.block_id, 0) + 1
            result, event = write_version(
                svc,
                store,
                view,
                mount,
                file_id=row.file_id,
                rev=row.latest_rev + 1,
                key=row.path_key,
                display=row.path_display,
                size=old.size,
                digest=old.content_hash,
                mtime=old.mtime,
                blocks=[(b.block_id, b.size, carried[b.block_id].staged_key) for b in blocks],
                refs=[(i, carried[i].size, 0, n) for i, n in counts.items()],
                journal=journal,
                op="restore",
            )
            events = [event]
        remember(store, view.user.user_id, req, result)
    publish(svc.feed, events)
    return result


def move(svc: Services, principal: Principal, req: MoveRequest) -> FileEntry | FolderEntry:
    """Move or rename a file or folder; file_id and history stay. Within one namespace."""
    with view_transaction(svc, principal) as (store, view):
        if (first := replayed(store, view.user.user_id, req, _ENTRY)) is not None:
            return first
        dst = paths.target(req.to_path, field="to_path")
        loc = locate(store, view, path=req.from_path, what="from_path")
        if loc.row is None:
            raise Unprocessable("the root or a shared folder's mount point cannot be moved")
        check_access(loc.mount, Action.WRITE, view)
        src_view_key = paths.path_key(view.view_path(loc.mount, loc.row.path_display))
        dst_mount, dst_rel = view.resolve(dst)
        if dst_mount.ns_id != loc.mount.ns_id or dst_rel == paths.ROOT:
            raise Unprocessable(
                "moving into or out of a shared folder is not supported: copy, then delete",
                reason="across_namespaces",
            )
        if loc.row.kind == "folder":
            dst_key = paths.path_key(dst)  # the source's key: a rename in case only
            if dst_key != src_view_key and paths.is_within(dst_key, src_view_key):
                raise Unprocessable("a folder cannot be moved into itself")
            if view.mounts_below(src_view_key):
                raise Unprocessable("the folder holds a shared folder; move that out first")
        row = _relock(store, view, loc, req.from_path)
        if req.parent_file_id is not None and row.file_id != req.parent_file_id:
            # another device deleted what the caller saw and put another file there: moved,
            # it was recorded under the caller's content, and the devices diverged unsaid
            raise Conflict(f"{req.from_path!r} holds another entry now than the one you saw")
        new_key = paths.path_key(dst_rel)
        if new_key != row.path_key and store.live_path_taken(row.ns_id, new_key):
            raise Conflict(f"{dst!r} already exists")
        new_display, journal = ensure_parents(store, view, loc.mount, dst_rel)
        journal.append(_journal(row, "delete", row.path_key, row.path_display))
        moved = [(row, new_key, new_display)]
        if row.kind == "folder":
            lo, hi = paths.subtree_range(row.path_key)
            for child in store.subtree(row.ns_id, lo, hi):
                # by components: a child may spell the folder otherwise, even in another
                # length ("ß" / "ss"), if it was undeleted under a re-spelled folder
                suffix = paths.relative(child.path_display, row.path_display)
                if problem := paths.length_problem(new_display + suffix):
                    raise Unprocessable(f"moved there, {dst + suffix!r} would be {problem}")
                moved.append(
                    (child, new_key + child.path_key[len(row.path_key) :], new_display + suffix)
                )
        store.rename(
            row.ns_id, [(r.file_id, k, paths.path_key(paths.parent(d)), d) for r, k, d in moved]
        )
        journal += [_journal(r, "upsert", k, d) for r, k, d in moved]
        _, event = store.append_journal(
            row.ns_id,
            journal,
            kind="file",
            payload={
                "op": "move",
                "file_id": row.file_id,
                "from": row.path_display,
                "path": new_display,
            },
        )
        renamed = FileRow(
            row.ns_id,
            row.file_id,
            new_key,
            new_display,
            row.kind,
            row.latest_rev,
            False,
            None,
            row.version,
        )
        result = (
            file_entry(view, loc.mount, renamed)
            if row.kind == "file"
            else folder_entry(view, loc.mount, renamed)
        )
        remember(store, view.user.user_id, req, result)
    publish(svc.feed, [event])
    return result


def delete(svc: Services, principal: Principal, req: DeleteRequest) -> FileEntry | FolderEntry:
    """Soft-delete a file or folder into the trash (a folder takes its contents along).
    Deleting a shared folder's mount point: a member who is not the owner leaves the share;
    the owner deletes the folder, once nobody else is a member (`sharing.delete_share`)."""
    events: list[ChangeEvent | None] = []
    guarded = req.parent_rev is not None or req.parent_file_id is not None
    with view_transaction(svc, principal) as (store, view):
        if (first := replayed(store, view.user.user_id, req, _ENTRY)) is not None:
            return first
        loc = locate(store, view, path=req.path)
        if guarded and (loc.row is None or loc.row.kind != "file"):
            # the client saw a file here: what stands here now is not its to delete
            raise Conflict(f"{req.path!r} is a folder now, not the file you saw")
        if loc.row is None:
            if loc.mount.kind != "shared":
                raise Unprocessable("the root cannot be deleted")
            if loc.mount.access == "owner":
                events.append(delete_share(store, view, loc.mount, if_empty=req.if_empty))
            else:
                events.append(leave_share(store, view.user, loc.mount, if_empty=req.if_empty))
            result: FileEntry | FolderEntry | DeletedEntry = entry(view, loc)
            assert isinstance(result, FolderEntry)
        else:
            check_access(loc.mount, Action.WRITE, view)
            row = _relock(store, view, loc, req.path)
            if guarded:
                if row.kind != "file":  # it became a folder while this request waited
                    raise Conflict(f"{req.path!r} is a folder now, not the file you saw")
                rev = row.latest_rev if req.parent_rev is None else req.parent_rev
                check_parent(row, req.path, rev, req.parent_file_id)
            elif req.if_empty and row.kind != "folder":
                # the caller deletes the (empty) folder it saw; another device put a file
                # in its place since: trashed, it went from every device unasked
                raise Conflict(f"{req.path!r} is a file now, not the folder you saw")
            ids = [row.file_id]
            if row.kind == "folder":
                view_key = paths.path_key(view.view_path(loc.mount, row.path_display))
                if view.mounts_below(view_key):
                    raise Unprocessable("the folder holds a shared folder; unshare it first")
                if req.if_empty:
                    check_empty(store, row.ns_id, row.path_key, req.path)
                lo, hi = paths.subtree_range(row.path_key)
                ids += [c.file_id for c in store.subtree(row.ns_id, lo, hi)]
            store.mark_deleted(row.ns_id, ids, view.user.user_id)
            _, event = store.append_journal(
                row.ns_id,
                [_journal(row, "delete", row.path_key, row.path_display)],
                kind="file",
                payload={"op": "delete", "file_id": row.file_id, "path": row.path_display},
            )
            events.append(event)
            result = entry(view, Located(loc.mount, loc.rel, row))
        assert not isinstance(result, DeletedEntry)
        remember(store, view.user.user_id, req, result)
    publish(svc.feed, events)
    return result


def create_folder(
    svc: Services, principal: Principal, path: str, *, idempotency_key: str | None = None
) -> FolderEntry:
    """Create a folder (and missing parents); 409 when the path is taken. A retry with the
    `idempotency_key` of a create that worked gets its answer, not a 409."""
    req = CreateFolderRequest.model_construct(path=path, idempotency_key=idempotency_key)
    with view_transaction(svc, principal) as (store, view):
        if (first := replayed(store, view.user.user_id, req, _FOLDER)) is not None:
            return first
        canon = paths.target(path)
        mount, rel = view.resolve(canon)
        if rel == paths.ROOT:
            raise Conflict(f"{canon!r} already exists")
        check_access(mount, Action.WRITE, view)
        _lock_resolved(store, view, canon, mount)
        display, journal = ensure_parents(store, view, mount, rel)
        key = paths.path_key(rel)
        fid = new_file_id()
        parent_key = paths.path_key(paths.parent(display))
        if not store.insert_file(mount.ns_id, fid, key, parent_key, display, "folder"):
            raise Conflict(f"{canon!r} already exists")
        journal.append(NewJournal(fid, 0, "upsert", "folder", key, parent_key, display))
        _, event = store.append_journal(
            mount.ns_id,
            journal,
            kind="file",
            payload={"op": "create_folder", "file_id": fid, "path": display},
        )
        row = FileRow(mount.ns_id, fid, key, display, "folder", 0, False, None)
        result = folder_entry(view, mount, row)
        remember(store, view.user.user_id, req, result)
    publish(svc.feed, [event])
    return result


def trash_list(svc: Services, principal: Principal, req: TrashListRequest) -> TrashListResponse:
    """Deleted entries under a path (in every namespace of the view below it), newest first."""
    with view_transaction(svc, principal) as (store, view):
        canon = paths.canonical(req.path)
        mount, rel = view.resolve(canon)
        scopes = {mount.ns_id: (mount, paths.subtree_range(paths.path_key(rel)))}
        scopes |= {
            m.ns_id: (m, paths.subtree_range(paths.ROOT))
            for m in view.mounts_below(paths.path_key(canon))
        }
        found: list[TrashEntry] = []
        # the newest `limit` of all the scopes at once: read `limit` from each, a view with
        # a thousand shared folders below the path brought ten million rows to Python
        for r in store.trash([(n, lo, hi) for n, (_, (lo, hi)) in scopes.items()], req.limit):
            assert r.deleted_at is not None
            found.append(
                TrashEntry(
                    **entry_names(view.view_path(scopes[r.ns_id][0], r.path_display)),
                    file_id=r.file_id,
                    kind=r.kind,  # type: ignore[arg-type]
                    rev=r.latest_rev,
                    size=r.version.size if r.version else 0,
                    deleted_at=r.deleted_at,
                    ns_id=r.ns_id,
                )
            )
    found.sort(key=lambda e: (e.deleted_at, e.path_lower), reverse=True)
    # within a Lambda answer (`PageBudget`): 22.7 MB had failed on every retry
    return TrashListResponse(entries=found[: PageBudget(req.limit).take(found)])
