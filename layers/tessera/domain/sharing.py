"""Shared folders (DESIGN §4): a shared folder is its own namespace, mounted into the tree of
each member; plus the account summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from tessera.domain import paths
from tessera.domain.acl import Action, require
from tessera.domain.changes import publish
from tessera.domain.errors import Conflict, NotFound, Unprocessable
from tessera.domain.models import (
    AccountResponse,
    DeclineRequest,
    Invitation,
    InvitationRequest,
    InvitationsResponse,
    ShareInfo,
    ShareMember,
    ShareRequest,
    SharesResponse,
    UnshareRequest,
)
from tessera.domain.services import Services
from tessera.domain.views import (
    View,
    check_mounts_unchanged,
    locate,
    mount_file_id,
    new_file_id,
    view_transaction,
)
from tessera.metadata.store import (
    FileRow,
    InvitationRow,
    MountRow,
    NewJournal,
    Store,
    UserRow,
)
from tessera.ports import ChangeEvent, Principal


def _mount_journal(
    store: Store, user: UserRow, ns_id: int, mount_path: str, op: str
) -> ChangeEvent:
    """Log a mount point appearing or disappearing in a member's root namespace, so their
    long-polls wake and their cursors notice (with the membership version)."""
    store.bump_membership(user.user_id)
    key = paths.path_key(mount_path)
    row = NewJournal(
        mount_file_id(ns_id),
        0,
        op,
        "folder",
        key,
        paths.path_key(paths.parent(mount_path)),
        mount_path,
    )
    _, event = store.append_journal(
        user.root_ns_id,
        [row],
        kind="membership",
        payload={
            "op": "mount" if op == "upsert" else "unmount",
            "shared_ns_id": ns_id,
            "user_id": user.user_id,
            "path": mount_path,
        },
    )
    return event


# Each shared folder is a part of its member's listing cursors: so many that those no
# longer fit (`models.MAX_CURSOR_CHARS`) would stop their sync.
MAX_SHARED_FOLDERS = 1000

# Invitations wait in their invitee's `/v1/shares` answer, which must stay a bounded size;
# and one sender may hold a user's only so many, so filling them takes many accounts (the
# invitee declines all of one sender's at once: `decline` with `from_email`).
MAX_INVITATIONS = 1000
MAX_INVITATIONS_FROM_ONE = 100


def _free_mount_path(store: Store, user: UserRow, name: str) -> str:
    """`/<name>`, or `/<name> (2)`, `/<name> (3)`… when the member already has that path
    (the name shortened to leave room for the suffix within MAX_NAME_BYTES: a longer mount
    name made every path under it invalid, even the one to leave the share by).
    422 when they already have `MAX_SHARED_FOLDERS` shared folders."""
    taken = store.mount_keys(user.user_id)
    if len(taken) > MAX_SHARED_FOLDERS:  # their root is one of them
        raise Unprocessable(
            f"{user.email} already has {MAX_SHARED_FOLDERS} shared folders; they must leave"
            " one first"
        )
    n = 1
    while True:
        suffix = "" if n == 1 else f" ({n})"
        fitted = paths.utf8_prefix(name, paths.MAX_NAME_BYTES - len(suffix.encode()))
        candidate = "/" + fitted + suffix
        key = paths.path_key(candidate)
        if (
            key not in taken
            and not store.live_path_taken(user.root_ns_id, key)
            # nor over what they deleted there: a mount hides it, and it could not be
            # restored (409) until they left the share or the trash was purged
            and not store.holds_trash(user.root_ns_id, key, *paths.subtree_range(key))
        ):
            return candidate
        n += 1


def lock_in_order(store: Store, *ns_ids: int) -> None:
    """Take namespaces in ns_id order (the lock order). A membership change takes the
    shared namespace, so it queues behind the writes in flight there, and the members'
    roots, where it journals the mount point appearing or going."""
    for ns_id in sorted(set(ns_ids)):
        store.lock_namespace(ns_id)


def check_empty(store: Store, ns_id: int, folder_key: str, path: str) -> None:
    """409 when the folder at `folder_key` of a namespace holds a live entry: a delete with
    `if_empty` must not take along what another device added since the caller listed it."""
    if store.holds_entries(ns_id, *paths.subtree_range(folder_key)):
        raise Conflict(f"{path!r} is not empty: it holds entries added since you listed it")


def leave_share(
    store: Store, user: UserRow, mount: MountRow, *, if_empty: bool = False
) -> ChangeEvent:
    """Remove the caller (not the owner) from a shared namespace; with `if_empty`, 409
    while it holds anything."""
    lock_in_order(store, mount.ns_id, user.root_ns_id)
    if if_empty:
        check_empty(store, mount.ns_id, paths.ROOT, mount.mount_path)
    if store.remove_member(mount.ns_id, user.user_id) is None:  # removed while this waited
        raise Conflict(f"{mount.mount_path!r} changed during the request; retry")
    store.mark_alone(mount.ns_id)
    store.bump_seq(mount.ns_id)  # a commit of theirs waiting for it must not write now
    return _mount_journal(store, user, mount.ns_id, mount.mount_path, "delete")


def delete_share(
    store: Store, view: View, mount: MountRow, *, if_empty: bool = False
) -> ChangeEvent:
    """The owner deletes a shared folder nobody else is a member of: it turns back into a
    folder of their root namespace (its entries move back, keeping file_ids and history)
    and goes to the trash with what it holds, restorable like any deleted folder. The
    namespace is left empty, without members. 422 while others are members; with
    `if_empty`, 409 while it holds anything.

    Both namespaces are taken first, in ns_id order (the lock order); `share` takes the
    shared one before adding a member, so none joins meanwhile."""
    root = view.root
    lock_in_order(store, root.ns_id, mount.ns_id)
    members = {m.user_id for m in store.members(mount.ns_id)}
    if view.user.user_id not in members:  # deleted while this request waited (a retry)
        raise Conflict(f"{mount.mount_path!r} changed during the request; retry")
    if members != {view.user.user_id}:
        raise Unprocessable("others are members: unshare the folder before deleting it")
    if if_empty:
        check_empty(store, mount.ns_id, paths.ROOT, mount.mount_path)
    live = store.subtree(mount.ns_id, *paths.subtree_range(paths.ROOT))
    trash = store.subtree(mount.ns_id, *paths.subtree_range(paths.ROOT), deleted=True)
    _check_paths_fit_root(mount, (("inside", live), ("in its trash", trash)), "delete")
    store.remove_member(mount.ns_id, view.user.user_id)
    store.remove_invites(mount.ns_id)  # nothing is left to join
    store.bump_seq(mount.ns_id)  # a commit waiting for it must not write into it now
    folder = new_file_id()
    parent_key = paths.path_key(paths.parent(mount.mount_path))
    if not store.insert_file(
        root.ns_id, folder, mount.mount_key, parent_key, mount.mount_path, "folder"
    ):
        raise Conflict(f"{mount.mount_path!r} is taken in your own folders")
    store.move_to_namespace(
        mount.ns_id,
        root.ns_id,
        [r.file_id for r in (*live, *trash)],
        0,
        0,
        under=(mount.mount_key, mount.mount_path),
    )
    store.mark_deleted(root.ns_id, [folder, *(r.file_id for r in live)], view.user.user_id)
    # The root journal logs only the mount point going away: to the owner's devices that
    # is the folder and everything under it deleted, as a folder delete would log.
    return _mount_journal(store, view.user, mount.ns_id, mount.mount_path, "delete")


def _check_paths_fit_root(
    mount: MountRow, rows: Sequence[tuple[str, Sequence[FileRow]]], then: str
) -> None:
    """422 when an entry of the shared folder, moved back into the owner's root under its
    mount point, would have a path too long there (stored inside the share, a path may be
    too long below the mount point). `rows` are (where they are, entries); `then` is what
    the owner does once they moved it."""
    for where, entries in rows:
        for row in entries:
            if problem := paths.length_problem(paths.join(mount.mount_path, row.path_display)):
                raise Unprocessable(
                    f"{row.path_display!r} {where} would be {problem} in your own folders:"
                    f" move it to a shorter path (restore it first if deleted), then {then}"
                    " the folder"
                )


def _trash_deleted_alone(store: Store, mount: MountRow) -> list[FileRow]:
    """What was deleted in a shared folder while its owner was alone in it (before anyone
    accepted, since `unshare` of everyone, or since the last member left: the namespace
    stays): hers alone, which whoever joins next must not list, restore or read."""
    since = store.alone_since(mount.ns_id)
    if since is None:
        return []
    return [
        row
        for row in store.subtree(mount.ns_id, *paths.subtree_range(paths.ROOT), deleted=True)
        if row.deleted_at is not None and row.deleted_at >= since
    ]


def _check_trash_fits_root(store: Store, mount: MountRow) -> None:
    """422, for the owner (`mount` is hers), when what she deleted alone in the folder
    could not move back into her own folders (`_check_paths_fit_root`): told when she
    shares it, since an accept must not name those files to the invitee."""
    _check_paths_fit_root(mount, (("in its trash", _trash_deleted_alone(store, mount)),), "share")


def _keep_trash_private(store: Store, owner: UserRow, mount: MountRow) -> None:
    """Move what the owner deleted while alone in a shared folder (`_trash_deleted_alone`)
    into her own trash, as `_make_shared` leaves what she deleted before a first share;
    what was deleted while others were in it stays, for them to restore. It lists in her
    trash under her mount point (`mount` is hers) and can be restored once the folder is no
    longer shared. Called as someone joins: a 422 when it cannot be done names none of
    those files (the caller is the one who must not see them), only whom to ask."""
    trash = _trash_deleted_alone(store, mount)
    store.end_alone(mount.ns_id)
    if not trash:
        return
    try:
        _check_paths_fit_root(mount, (("in its trash", trash),), "share")
    except Unprocessable:
        raise Unprocessable(
            f"{owner.email} must first deal with files they deleted in this folder; ask them"
            " to share it with you again, which tells them what to do"
        ) from None
    store.move_to_namespace(
        mount.ns_id,
        owner.root_ns_id,
        [r.file_id for r in trash],
        0,
        0,
        under=(mount.mount_key, mount.mount_path),
    )


def _held_info(store: Store, view: View, mount: MountRow) -> ShareInfo:
    """`_info` of a shared folder whose namespace the caller holds, checked still shared."""
    info = _info(store, view, mount)
    if info is None:
        raise Conflict(f"{mount.mount_path!r} changed during the request; retry")
    return info


def _info(store: Store, view: View, mount: MountRow) -> ShareInfo | None:
    """The shared folder as `mount` shows it; None when it has no owner any more (deleted
    since the view was read: its members went with it)."""
    members = store.members(mount.ns_id)
    owner = next((m for m in members if m.access == "owner"), None)
    if owner is None:
        return None
    return ShareInfo(
        ns_id=mount.ns_id,
        path_display=mount.mount_path,
        name=mount.name,
        access=mount.access,  # type: ignore[arg-type]
        owner_email=owner.email,
        members=[ShareMember(email=m.email, access=m.access) for m in members],  # type: ignore[arg-type]
        # the owner's to see and act on, not every member's
        invited=[
            ShareMember(email=i.email, access=i.access)  # type: ignore[arg-type]
            for i in (store.invitees(mount.ns_id) if mount.access == "owner" else ())
        ],
    )


def _make_shared(store: Store, view: View, path: str, events: list[ChangeEvent | None]) -> MountRow:
    """Turn a folder of the caller's root namespace into a shared namespace, mounted at the
    same path: its live entries move in one transaction, keeping file_ids and history.

    What the owner deleted there before stays in their root's trash: the members were not
    meant to see it (a file deleted last week is not shared today). It lists in the owner's
    trash and can be restored once the folder is no longer shared.

    The root namespace is taken first (the lock order) and the folder located under the
    lock: a commit into the folder that is still running is waited for and its entry moves
    along, instead of staying in the root namespace, hidden under the new mount."""
    store.lock_namespace(view.root.ns_id)
    check_mounts_unchanged(store, view, path)  # a share of a folder above or below it
    loc = locate(store, view, path=path)
    row = loc.row
    assert row is not None
    if row.kind != "folder":  # (first: a file in a shared folder was "a folder inside")
        raise Unprocessable("only folders can be shared")
    if loc.mount.kind != "root":
        raise Unprocessable("a folder inside a shared folder cannot be shared again")
    if view.mounts_below(row.path_key):
        raise Unprocessable("the folder holds a shared folder; shared folders cannot nest")
    root = loc.mount
    name = paths.name(row.path_display)
    ns_id = store.create_namespace("shared", view.user.user_id, name)
    lo, hi = paths.subtree_range(row.path_key)
    ids = [r.file_id for r in store.subtree(root.ns_id, lo, hi)]
    store.move_to_namespace(root.ns_id, ns_id, ids, len(row.path_key), row.path_display.count("/"))
    # The folder row becomes the namespace root. The owner's root journal logs only the
    # mount appearing at the same path: their devices then see the same entries (same
    # file_ids and revs) under it, so nothing is deleted and fetched again.
    store.delete_entry(root.ns_id, row.file_id)
    store.add_member(ns_id, view.user.user_id, "owner", row.path_display, row.path_key)
    store.mark_alone(ns_id)  # until an invitee accepts
    events.append(_mount_journal(store, view.user, ns_id, row.path_display, "upsert"))
    return MountRow(
        ns_id, row.path_display, row.path_key, "owner", "shared", name, view.user.user_id
    )


def share(svc: Services, principal: Principal, req: ShareRequest) -> ShareInfo:
    """Invite a user by email into a folder (owner only): they become a member once they
    accept (`accept`). Sharing again changes a member's access, or what a pending
    invitation offers."""
    events: list[ChangeEvent | None] = []
    with view_transaction(svc, principal) as (store, view):
        loc = locate(store, view, path=req.path)
        if loc.row is None:
            if loc.mount.kind != "shared":
                raise Unprocessable("the root cannot be shared")
            require(loc.mount.access, Action.SHARE, loc.mount.mount_path)
        target = store.user_by_email(req.email)
        if target is None:
            raise NotFound(f"no user with email {req.email!r} (they must sign in once first)")
        if target.user_id == view.user.user_id:
            raise Unprocessable("you cannot share a folder with yourself")
        if loc.row is None:
            mount = loc.mount
        else:
            # both roots now, in order: `_make_shared` takes the caller's, and the target's
            # came after it, so Alice sharing with Bob while Bob shared with Alice each
            # held the root the other wanted next (a deadlock: one answered 503)
            lock_in_order(store, view.root.ns_id, target.root_ns_id)
            mount = _make_shared(store, view, req.path, events)
        # holding the shared namespace, no member joins a share that `delete_share` is
        # deleting, nor is removed by `unshare` while their access changes here; the
        # caller's root, for the trash of a folder they were alone in
        lock_in_order(store, view.root.ns_id, mount.ns_id, target.root_ns_id)
        existing = {m.user_id: m for m in store.members(mount.ns_id)}
        if view.user.user_id not in existing:  # deleted while this request waited
            raise Conflict(f"{req.path!r} changed during the request; retry")
        member = existing.get(target.user_id)
        if member is not None:
            if member.access == "owner":
                raise Unprocessable("the owner's access cannot be changed")
            if member.access != req.access:
                store.add_member(mount.ns_id, target.user_id, req.access, "", "")
                # their requests in flight read the old access: the membership version
                # (and the seq, for a commit waiting on the namespace) make them retry
                events.append(
                    _mount_journal(store, target, mount.ns_id, member.mount_path, "upsert")
                )
                store.bump_seq(mount.ns_id)
        else:
            if existing.keys() == {view.user.user_id}:
                _check_trash_fits_root(store, mount)
            _invite(store, view.user, target, mount.ns_id, req.access)
        info = _held_info(store, view, mount)
    publish(svc.feed, events)
    return info


def _invite(store: Store, owner: UserRow, target: UserRow, ns_id: int, access: str) -> None:
    """Invite `target` into a namespace, or change what their pending invitation offers;
    422 when they already hold `MAX_INVITATIONS`, or `MAX_INVITATIONS_FROM_ONE` from this
    owner."""
    if store.invitations(target.user_id, 1, ns_id=ns_id):
        store.invite(ns_id, target.user_id, access)
        return
    if store.invitation_count(target.user_id, owner_id=owner.user_id) >= MAX_INVITATIONS_FROM_ONE:
        raise Unprocessable(
            f"{target.email} has {MAX_INVITATIONS_FROM_ONE} invitations from you waiting;"
            " they must accept or decline some first"
        )
    if store.invitation_count(target.user_id) >= MAX_INVITATIONS:
        raise Unprocessable(f"{target.email} cannot be sent more invitations now")
    store.invite(ns_id, target.user_id, access)


def _no_invitation(ns_id: int) -> NotFound:
    """The same answer whether the folder does not exist, was never offered to the caller,
    or the invitation was withdrawn, declined or accepted: nobody learns of another's."""
    return NotFound(f"no invitation to shared folder {ns_id} is waiting for you")


def accept(svc: Services, principal: Principal, req: InvitationRequest) -> ShareInfo:
    """Accept an invitation: the shared folder is mounted in the caller's view at `/<name>`
    (or `/<name> (2)`… when that path is taken), with the access it offered."""
    events: list[ChangeEvent | None] = []
    with view_transaction(svc, principal) as (store, view):
        found = store.invitations(view.user.user_id, 1, ns_id=req.ns_id)
        if not found:
            raise _no_invitation(req.ns_id)
        invitation = found[0]
        owner = store.get_user(invitation.owner_id)
        assert owner is not None  # a namespace's owner is a user (foreign key)
        # the shared namespace first (the lock order; `share`, `unshare` and `delete_share`
        # change its invitations and members holding it), the caller's root for the mount
        # point, the owner's for the trash she had alone
        lock_in_order(store, req.ns_id, view.root.ns_id, owner.root_ns_id)
        invite = store.remove_invite(req.ns_id, view.user.user_id)
        members = store.members(req.ns_id)
        if invite is None or not members or members[0].access != "owner":
            raise _no_invitation(req.ns_id)  # withdrawn, declined or deleted meanwhile
        # the cheap refusal first: a caller at the cap must not make the owner's trash move
        # (and roll back) at every try, holding her root
        mount_path = _free_mount_path(store, view.user, invitation.name)
        mount = MountRow(
            req.ns_id,
            mount_path,
            paths.path_key(mount_path),
            invite.access,
            "shared",
            invitation.name,
            owner.user_id,
        )
        if len(members) == 1:  # the owner's own mount, for the trash she had alone
            hers = members[0].mount_path
            owners = replace(mount, mount_path=hers, mount_key=paths.path_key(hers), access="owner")
            _keep_trash_private(store, owner, owners)
        store.add_member(req.ns_id, view.user.user_id, invite.access, mount_path, mount.mount_key)
        events.append(_mount_journal(store, view.user, req.ns_id, mount_path, "upsert"))
        info = _held_info(store, view, mount)
    publish(svc.feed, events)
    return info


def decline(svc: Services, principal: Principal, req: DeclineRequest) -> InvitationsResponse:
    """Decline an invitation, or every invitation from one owner (`from_email`): they are
    gone, and the owner may invite the caller again. 404 when none was waiting."""
    with view_transaction(svc, principal) as (store, view):
        waiting = store.invitations(
            view.user.user_id, MAX_INVITATIONS, ns_id=req.ns_id, owner_email=req.from_email
        )
        # each removed, or accepted meanwhile (its row gone under this one's lock)
        declined = [i for i in waiting if store.remove_invite(i.ns_id, view.user.user_id)]
        if not declined:
            if req.ns_id is not None:
                raise _no_invitation(req.ns_id)
            raise NotFound(f"no invitation from {req.from_email!r} is waiting for you")
        return InvitationsResponse(invitations=[_invitation_model(i) for i in declined])


def invitations(svc: Services, principal: Principal) -> InvitationsResponse:
    """The invitations waiting for the caller, oldest first: what `shares` tells of them,
    without reading every shared folder's members."""
    with view_transaction(svc, principal) as (store, view):
        return InvitationsResponse(invitations=_waiting(store, view.user))


def _waiting(store: Store, user: UserRow) -> list[Invitation]:
    """The invitations waiting for `user`, oldest first."""
    return [_invitation_model(row) for row in store.invitations(user.user_id, MAX_INVITATIONS)]


def _invitation_model(row: InvitationRow) -> Invitation:
    return Invitation(
        ns_id=row.ns_id,
        name=row.name,
        owner_email=row.owner_email,
        access=row.access,  # type: ignore[arg-type]
        invited_at=row.invited_at,
    )


def _withdraw_invitation(store: Store, view: View, mount: MountRow, email: str) -> ShareInfo:
    """The owner withdraws the pending invitation of `email` (404: neither a member nor
    invited). Under the shared namespace, as an accept takes it."""
    lock_in_order(store, mount.ns_id)
    invitee = next(
        (i for i in store.invitees(mount.ns_id) if i.email.lower() == email.lower()), None
    )
    if invitee is None:
        if any(m.email.lower() == email.lower() for m in store.members(mount.ns_id)):
            raise Conflict("the shared folder's members changed meanwhile; try again")
        raise NotFound(f"{email!r} is neither a member of this shared folder nor invited")
    store.remove_invite(mount.ns_id, invitee.user_id)
    return _held_info(store, view, mount)


def unshare(svc: Services, principal: Principal, req: UnshareRequest) -> ShareInfo:
    """The owner removes a member (or everyone else); a member may remove themselves."""
    events: list[ChangeEvent | None] = []
    with view_transaction(svc, principal) as (store, view):
        loc = locate(store, view, path=req.path)
        if loc.row is not None or loc.mount.kind != "shared":
            raise Unprocessable(f"{req.path!r} is not a shared folder's mount point")
        mount = loc.mount
        members = store.members(mount.ns_id)
        if not members:  # the owner deleted it since the view was read
            raise Conflict(f"{req.path!r} changed during the request; retry")
        own_email = view.user.email.lower()
        if mount.access != "owner":
            if req.email is not None and req.email.lower() != own_email:
                require(mount.access, Action.SHARE, mount.mount_path)
            events.append(leave_share(store, view.user, mount))
            info = ShareInfo(
                ns_id=mount.ns_id,
                path_display=mount.mount_path,
                name=mount.name,
                access=mount.access,  # type: ignore[arg-type]
                owner_email=members[0].email,
                members=[],
            )
        elif req.email is not None and all(m.email.lower() != req.email.lower() for m in members):
            info = _withdraw_invitation(store, view, mount, req.email)
        else:
            if req.email is None:
                targets = [m for m in members if m.access != "owner"]
            else:
                targets = [m for m in members if m.email.lower() == req.email.lower()]
                if targets[0].access == "owner":
                    # (it had advised deleting the folder: everyone's files, to the trash)
                    raise Unprocessable(
                        "the owner cannot be removed; to stop sharing the folder with"
                        " everyone, unshare it without an email"
                    )
            users = [u for u in map(store.get_user, (m.user_id for m in targets)) if u]
            lock_in_order(store, mount.ns_id, *(u.root_ns_id for u in users))
            # read before the locks (they name the members' roots to take): the owner
            # deleting the folder meanwhile left no owner to answer with (a 500), and a
            # member added meanwhile was not removed with "everyone else"
            if {m.user_id for m in store.members(mount.ns_id)} != {m.user_id for m in members}:
                raise Conflict("the shared folder's members changed meanwhile; try again")
            if req.email is None:
                store.remove_invites(mount.ns_id)
            for user in users:
                removed = store.remove_member(mount.ns_id, user.user_id)
                if removed:
                    events.append(
                        _mount_journal(store, user, mount.ns_id, removed.mount_path, "delete")
                    )
            store.mark_alone(mount.ns_id)
            # their commits waiting for the namespace must not write into it now
            store.bump_seq(mount.ns_id)
            info = _held_info(store, view, mount)
    publish(svc.feed, events)
    return info


def shares(svc: Services, principal: Principal) -> SharesResponse:
    """Every shared folder in the caller's view, and the invitations waiting for them."""
    with view_transaction(svc, principal) as (store, view):
        return SharesResponse(
            shares=[
                info
                for m in view.mounts
                if m.kind == "shared" and (info := _info(store, view, m)) is not None
            ],
            invitations=_waiting(store, view.user),
        )


def account(svc: Services, principal: Principal) -> AccountResponse:
    """Usage (latest versions of live files in namespaces the caller owns) and quota."""
    with view_transaction(svc, principal) as (store, view):
        return AccountResponse(
            user_id=view.user.user_id,
            email=view.user.email,
            root_ns_id=view.user.root_ns_id,
            used_bytes=store.usage(view.user.user_id),
            quota_bytes=view.user.quota_bytes,
        )
