"""The sync loop: pull remote changes, scan the folder, plan, execute; once or as a daemon.

A round: bring the remote mirror current from the cursor (`list_folder/continue`), scan
the folder, plan against the synced base, check the mass-delete threshold, and execute.
`run_once` repeats rounds until both sides are quiescent; `run_daemon` runs a round
whenever the watcher or the long-poll says something changed, plus a periodic full scan.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shlex
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from datetime import date
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from tessera.api.models import FileEntry, LongpollResponse, RevisionsResponse
from tessera.blocks import FileManifest
from tessera_client import invitations
from tessera_client.api import (
    Api,
    ApiError,
    NotLoggedIn,
    ServerUnreachable,
    list_pages,
    parse,
)
from tessera_client.config import Home, Settings, hold_device_lock
from tessera_client.fs import (
    FOLDER_MARKER,
    DiskFullError,
    Filesystem,
    Kind,
    RealFilesystem,
    SafeFilesystem,
    Stat,
    SymlinkError,
    out_of_room,
)
from tessera_client.ignore import IgnoreRules
from tessera_client.memory import tune_allocator
from tessera_client.paths import (
    UnsafePathError,
    ancestors,
    canonical_rel,
    conflicted_copy_name,
    is_under,
    parent_of,
    path_key,
    server_path,
)
from tessera_client.planner import Entry, EntryKind, Op, OpKind, Plan, plan
from tessera_client.reporting import Reporter, RoundResult, SyncError
from tessera_client.scanner import LocalScan, Scanner
from tessera_client.state import MARKED_META, StateDB
from tessera_client.transfer import (
    BlockReportedError,
    DownloadStopped,
    IntegrityError,
    LocalChangedError,
    RestoringError,
    Transfers,
    UploadItem,
    UploadResult,
    download_each,
    rename_unless_taken,
    same_stat,
)

if TYPE_CHECKING:
    from tessera_client.watcher import Watcher

LARGE_FILE = 8 * 1024 * 1024
DISK_FULL_WAIT_S = 30.0  # the daemon's pause when its state database cannot be written
FOLDER_ERROR_WAIT_S = 10.0  # the daemon's pause when the synced folder's disk fails
# Seconds a long-poll's answer may take beyond the wait it asked for (the network, the
# server reading the request and its cursor)
LONGPOLL_GRACE_S = 30.0
# The longest a long-poll's `backoff` is waited out: a server asking for years (or more
# than a timestamp holds, which raised in the wait, every 2 s) left the daemon deaf to it
MAX_LONGPOLL_BACKOFF_S = 300.0
Fetched = tuple[FileEntry, Stat, list[str]]
# What each step does, as a problem names it ("could not delete here a.txt: ..."): its
# kind's name ("delete_local a.txt: Read-only file system") told the user nothing
DOING = {
    OpKind.UPLOAD: "upload",
    OpKind.DOWNLOAD: "download",
    OpKind.DELETE_LOCAL: "delete here",
    OpKind.DELETE_REMOTE: "delete on the server",
    OpKind.MOVE_LOCAL: "move here",
    OpKind.MOVE_REMOTE: "move on the server",
    OpKind.MOVE_RECORD: "record the move of",
    OpKind.CREATE_FOLDER_LOCAL: "create here the folder",
    OpKind.CREATE_FOLDER_REMOTE: "create on the server the folder",
    OpKind.DELETE_FOLDER_LOCAL: "delete here the folder",
    OpKind.DELETE_FOLDER_REMOTE: "delete on the server the folder",
    OpKind.CONFLICT: "keep both versions of",
    OpKind.SET_ASIDE: "set aside",
    OpKind.RECORD: "record",
    OpKind.FORGET: "forget",
}


class SyncEngine:
    """Keeps one folder in sync with the user's Tessera tree."""

    def __init__(
        self,
        home: Home,
        settings: Settings,
        folder: Path,
        api: Api,
        *,
        allow_mass_delete: bool = False,
        reporter: Reporter | None = None,
        filesystem: Filesystem | None = None,
        instead: bool = False,
    ) -> None:
        """`instead`: sync `folder` in place of the one this device synced until now, which
        is left as it is, no longer synced (what the device knew of it is forgotten, and
        `folder` starts as at a first sync: nothing in either is taken for deleted)."""
        tune_allocator()
        self.home, self.settings, self.api = home, settings, api
        self.folder = folder.resolve()
        self.fs = SafeFilesystem(filesystem or RealFilesystem(self.folder))
        self.reporter = reporter or Reporter()
        self._lock = hold_device_lock(home)
        self.state = StateDB(home.state_file)
        bound = self.state.get_meta("folder")
        if bound and bound != str(self.folder):
            if not instead:
                self._refuse(
                    f"this device ({home.path}) already syncs {bound}. To sync {self.folder}"
                    f" instead (the other is left as it is, no longer synced), run `tessera"
                    f" sync {self.folder} --instead`; to sync both, use another TESSERA_HOME"
                )
            self.state.forget_folder()
            self.reporter.event(f"no longer syncing {bound}: it is left as it is")
        self.state.set_meta("folder", str(self.folder))
        # The base is what this folder and one account on one server agreed on: against
        # another's listing its files would all read as deleted there, and be deleted here.
        account = f"{settings.server_url} {settings.email.casefold()}"
        recorded = self.state.get_meta("account")
        if recorded not in (None, account):
            synced_for = recorded.rpartition(" ")[2]  # ("": a client's before it was kept)
            if synced_for not in ("", settings.email.casefold()) and self.state.has_base():
                # another user's: their files would all go up into this account, unasked
                self._refuse(
                    f"{self.folder} holds files synced for {synced_for}, and this device is"
                    f" now logged in as {settings.email}: syncing it would put those files in"
                    f" {settings.email}'s account. Log in as {synced_for} again, or sync"
                    " another folder with another TESSERA_HOME for this account"
                )
            self.state.forget_sync()  # (another server: the same account, listed afresh)
        self.state.set_meta("account", account)
        if filesystem is None and not self.folder.is_dir():
            self._missing_folder()
        self.scanner = Scanner(self.fs)
        self.allow_mass_delete = allow_mass_delete
        self._progress: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        # a move across a shared folder's edge, by the destination's path key: the source
        # (path here, server entry) to delete once the destination's upload has landed
        self._moved_from: dict[str, tuple[str, Entry]] = {}
        # files (path keys) this round meant to move on the server and did not (refused,
        # failed, or sent as an upload): a download planned where they were to go is left
        # to the next round, which plans it from what the server holds (done now, it
        # recorded there a file the server does not have, over the file renamed here)
        self._unmoved: set[str] = set()
        self._kept_told: set[str] = set()  # kept folders (path keys) the user was told of
        # Folders (path keys) that hold, on the server, what the last scan left alone
        self._holding_unseen: set[str] = set()
        # The files this round deleted, on either side (the mass-delete gate's window), and
        # whether the gate let a mass delete through this round
        self._deleted = 0
        self._approved = False
        self.transfers = Transfers(
            api,
            self.fs,
            self.state,
            device=settings.device_name,
            threads=settings.transfer_threads,
            batch_files=settings.batch_files,
            batch_blocks=settings.batch_blocks,
            progress=self._on_progress,
        )
        self._wake = threading.Event()
        self._remote_changed = threading.Event()  # set by the long-poll: pull before planning
        self._remote_changed.set()
        self._pulled = threading.Event()  # set by each pull: the long-poll may ask again
        self._stop = threading.Event()
        self._reported_skips: set[tuple[str, str]] = set()
        self._rules = IgnoreRules()  # the last scan's, for the daemon's watcher
        self._invitations_told: set[int] = set()  # their ns_ids

    def close(self) -> None:
        """Stop transfers, close the state database and let another sync of this device run."""
        self._stop.set()
        self._wake.set()
        self.transfers.close()
        self.state.close()
        self._lock.close()

    def _on_progress(self, path: str, nbytes: int) -> None:
        total = self._sizes.get(path, 0)
        if total >= LARGE_FILE:
            self._progress[path] = self._progress.get(path, 0) + nbytes
            self.reporter.transfer(path, self._progress[path], total)

    def _end_progress(self, path: str) -> None:
        """A file's transfer is over (done, failed, or left for the next round): its bar
        ends, whatever it reached (an upload sends only the blocks the server lacks), and
        its counters go: kept, a daemon held one of each for every file it ever sent."""
        total = self._sizes.pop(path, 0)
        if self._progress.pop(path, None) is not None:
            self.reporter.transfer(path, total, total)

    # -- remote -------------------------------------------------------------------------

    def pull(self) -> int:
        """Bring the remote mirror current; how many entries changed."""
        cursor = self.state.cursor
        try:
            if cursor is None:
                answer = self.api.call("/v1/list_folder", {"path": "", "recursive": True})
                self.state.clear_remote()
            else:
                answer = self.api.call("/v1/list_folder/continue", {"cursor": cursor})
        except ApiError as e:
            if e.code == "invalid_cursor" and cursor is not None:
                # The server does not know where this device was (new keys, a restore, another
                # account): listed afresh, the tree is compared with the disk as at a first
                # sync. Against the old base, every file the new listing lacks would have been
                # taken for deleted on the server, and deleted here.
                self.reporter.event("the server reset this device's place: comparing afresh")
                self.state.forget_sync()
                return self.pull()
            raise
        changed = 0
        # a page that does not fit (not an object, no cursor) is the server's malformed
        # answer (ApiError): it had raised KeyError out of the round
        for page in list_pages(self.api, answer):
            with self.state.transaction():
                for raw in page.entries:
                    changed += self._apply_remote(raw)
                self.state.set_meta("cursor", page.cursor)
        self._pulled.set()
        return changed

    def _apply_remote(self, raw: Any) -> int:
        if not isinstance(raw, dict):  # that entry alone: the listing goes on
            self._skip("", f"an entry of the server's listing is not an object: {raw!r:.40}")
            return 0
        tag = raw.get(".tag")
        try:
            rel = canonical_rel(str(raw.get("path_display", "")))
        except UnsafePathError as e:
            self._skip(str(raw.get("path_display")), f"unsafe path from the server ignored: {e}")
            return 0
        if tag == "deleted":
            self.state.delete_remote(rel)
        elif tag == "file":
            try:
                entry = parse(FileEntry, raw)
            except ApiError as e:  # that entry alone: the listing goes on
                self._skip(rel, f"{e.message}; left out")
                return 0
            self.state.put_remote(
                Entry(rel, EntryKind.FILE, entry.content_hash, entry.size, entry.file_id, entry.rev)
            )
        elif tag == "folder":
            access = raw.get("access")
            if (
                access
                and self.state.has_remote(rel)
                and path_key(rel) not in self.state.shared_mounts()
            ):
                # A folder of the caller's own shared since this device's cursor: the server
                # sends the mount point and all it holds now, but no deletion of what the
                # folder held before (moved into the share, then deleted or renamed there).
                # Kept in the mirror, such a file was never deleted here.
                self.state.delete_remote(rel)
            self.state.put_remote(
                Entry(rel, EntryKind.FOLDER, file_id=str(raw.get("file_id", ""))),
                access=str(access) if access else None,
            )
        else:
            return 0
        return 1

    def longpoll(self) -> bool:
        """Wait for remote changes after the cursor; True when there are some."""
        cursor = self.state.cursor
        if cursor is None:
            return True
        # the server holds the call for the whole `timeout` once it has read it: with the
        # client's usual read timeout (60 s, as the long-poll's) every idle poll timed out
        answer = self.api.call(
            "/v1/list_folder/longpoll",
            # a whole number: the server takes no other (`90.0` in a hand-edited config was
            # refused on every long-poll)
            {"cursor": cursor, "timeout": int(self.settings.longpoll_timeout_s)},
            timeout=self.settings.longpoll_timeout_s + LONGPOLL_GRACE_S,
        )
        polled = parse(LongpollResponse, answer)
        if polled.backoff:
            self._stop.wait(min(max(polled.backoff, 0), MAX_LONGPOLL_BACKOFF_S))
        return polled.changes

    def _missing_folder(self) -> None:
        """Create a folder never synced; refuse to when this device synced files from it:
        created empty, every one of them would read as deleted here, and be deleted on the
        server and on every other device."""
        if not self.state.has_base():
            self.folder.mkdir(parents=True, exist_ok=True)
            self.reporter.event(f"created {self.folder}: it did not exist")
            return
        self._refuse(
            f"{self.folder} is missing, but this device synced files from it: if it is on a "
            "drive, mount it; if you moved or renamed it, put it back. Nothing was changed."
        )

    def _refuse(self, message: str) -> NoReturn:
        """Give up starting: let go of the state database and the device lock, then raise."""
        self.state.close()
        self._lock.close()
        raise SyncError(message)

    # -- one round ----------------------------------------------------------------------

    def _skip(self, path: str, reason: str) -> None:
        if (path, reason) not in self._reported_skips:
            self._reported_skips.add((path, reason))
            self.reporter.problem(f"skipped {path}: {reason}")

    def round(self, pull: bool = True) -> RoundResult:
        """Pull (unless the caller knows nothing changed remotely), scan, plan, execute."""
        result = RoundResult()
        self._deleted, self._approved = 0, False
        if pull:
            self.pull()
        self._adopt_commits()
        base = self.state.base_tree()
        for c in self.state.conflicts():  # the user dealt with it: forget it
            if not self.fs.exists(c.path):
                self.state.drop_conflict(c.path)
        scan = self.scanner.scan(base, exclude=self._kept_local_only())
        self._rules = scan.rules
        for path, reason in scan.skipped:
            self._skip(path, reason)
        result.skipped = len(scan.skipped)
        if "" in scan.unseen:  # the folder itself, or its rules, could not be read
            why = "; ".join(f"{path}: {reason}" for path, reason in scan.skipped)
            result.problems.append(f"nothing here was synced this round ({why})")
        result.unstable = len(scan.unstable)
        self._vouch_for_rehashed(scan, base)
        unstable = {path_key(p) for p in scan.unstable}
        local = dict(scan.tree)
        for key in unstable:  # being written: act as if unchanged until it settles
            if key in base:
                local[key] = base[key]
        remote = self.state.remote_tree()
        # A path the scan left out (ignored, skipped, in a folder it could not list) is not
        # deleted on either side, nor downloaded: the planner would take its absence from
        # the local tree for a local delete. One set apart for good (ignored, a symlink) is
        # no longer synced here: its record is forgotten, so that once it is back in view,
        # its absence reads as never synced (downloaded), not as deleted here. Its record
        # kept, `rm -rf` of an ignored folder, then the rule removed, deleted the folder on
        # the server and on every device.
        self._holding_unseen = set()
        forgotten = []
        for key in (remote.keys() | base.keys()) - local.keys():
            known = remote.get(key) or base[key]
            if scan.left_alone(key, known.path, is_dir=not known.is_file):
                remote.pop(key, None)
                synced = base.pop(key, None)
                self._holding_unseen.update(path_key(a) for a in ancestors(known.path))
                if synced and scan.set_apart_for_good(key, synced.path, is_dir=not synced.is_file):
                    forgotten.append(synced.path)
        if forgotten:
            with self.state.transaction():
                for path in forgotten:
                    self.state.delete_base(path)
        leaving = self._shares_removed_here(local, remote, base)
        set_apart = self._shares_mounted_over_own_folders(local, remote, base)
        the_plan = plan(local, remote, base, device=self.settings.device_name, day=date.today())
        the_plan.ops[:0] = set_apart
        marked = self.fs.exists(FOLDER_MARKER)
        noted = bool(self.state.get_meta(MARKED_META))
        if marked and not noted:  # left by a client from before the note was kept
            self.state.set_meta(MARKED_META, "1")
        # not the folder this device synced: the marker it left there is gone, or (a state
        # from before the marker was recorded) the folder is empty
        foreign = not marked and (noted or not scan.tree)
        ops = self._mass_delete_gate(
            the_plan, base, result, foreign=foreign, leaving_files=sum(leaving.values())
        )
        if not result.paused_deletes and scan.tree and not marked:
            self._mark_folder()
        # a folder that is not the one synced (a drive not mounted) leaves none, nor does a
        # round whose deletions are paused: the files of the shares it would leave count
        if not foreign and not result.paused_deletes:
            for path, files in leaving.items():
                left = self._guarded(
                    Op(OpKind.DELETE_FOLDER_REMOTE, path), result, partial(self._leave_share, path)
                )
                result.ops += int(left)
                self._deleted += files if left else 0  # (gone from here: the gate's count)
        elif leaving:
            # what is at a share's path here waits with its leaving: a file made there went
            # up each round and was refused (422), the share still mounted there
            held = [path_key(p) for p in leaving]
            ops = [
                op
                for op in ops
                if not any(path_key(op.path) == k or is_under(path_key(op.path), k) for k in held)
            ]
        try:
            self._execute(ops, scan, result)
        finally:
            self._note_deletes()
        self.state.set_meta("last_sync", str(time.time()))
        return result

    def _kept_local_only(self) -> set[str]:
        """Path keys of the local-only conflicted copies (a viewer's refused edits) still in
        a folder shared read-only with this user: the scan leaves them out. The others are
        let go, to sync like any file of the user's: once they left the share (it is their
        own folder now), or were made an editor, the copies stayed here unsynced for good,
        and the folder that held them was "kept here, deleted elsewhere" every round."""
        read_only = [
            k for k, (_path, access) in self.state.shared_mounts().items() if access == "viewer"
        ]
        kept = set()
        for c in self.state.conflicts():
            if not c.local_only:
                continue
            key = path_key(c.path)
            if any(key.startswith(mount + "/") for mount in read_only):
                kept.add(key)
            else:
                self.state.let_conflict_sync(c.path)
        return kept

    def _shares_removed_here(
        self, local: dict[str, Entry], remote: dict[str, Entry], base: dict[str, Entry]
    ) -> dict[str, int]:
        """The shared folders that were synced and are gone from here (deleted, or renamed:
        a mount point moves nowhere on the server), taken with all they hold out of
        `remote` and `base`: planned as the deletion (or the move) of each file, an
        editor's `rm -rf Team` emptied the folder for every member (a rename: each file
        uploaded into their own space, then deleted from the share), and so did the
        owner's, before the server refused the folder's own delete while others are in it.
        Removing one leaves the share instead, or deletes the owner's when nobody else is in
        it (`_leave_share`); a renamed one's files go up as this user's own. So does
        replacing one with a file: planned as a folder turned into a file, it had deleted
        every file of the share for every member. Their paths, each with how many synced
        files it held."""
        gone = [
            (key, path)
            for key, (path, _access) in self.state.shared_mounts().items()
            if key in base and (key not in local or local[key].is_file)
        ]
        leaving = {}
        for key, path in gone:
            leaving[path] = sum(1 for k, e in base.items() if e.is_file and k.startswith(key + "/"))
            for tree in (remote, base):
                for below in [k for k in tree if k == key or k.startswith(key + "/")]:
                    del tree[below]
        return leaving

    def _shares_mounted_over_own_folders(
        self, local: dict[str, Entry], remote: dict[str, Entry], base: dict[str, Entry]
    ) -> list[Op]:
        """A folder shared with this user, new here, whose path holds a folder of this
        user's that was never synced (made while the device was off, before the share
        came): the local folder is set aside under a conflicted copy's name (the next round
        uploads it as the user's own, and brings the share), and both are left out of this
        round. Merged, its files went up into the owner's folder, for every member to read.
        Only when it holds something the share does not account for (`_the_shares`): a
        folder holding only the share's entries, each the same or an earlier rev of the
        share's file, is the share's (a copy of the synced folder, or this device's own
        from before its record was forgotten: a reset cursor, an ignore rule lifted), and
        meets it file by file. A lifted rule had set aside a whole share over one file the
        owner had edited since; a private file named as one of the share's had gone up as
        its conflicted copy."""
        ops = []
        for key, (path, access) in self.state.shared_mounts().items():
            mine = local.get(key)
            if access == "owner" or key in base or mine is None or mine.is_file:
                continue
            if not any(
                k.startswith(key + "/") and not self._the_shares(e, remote.get(k))
                for k, e in local.items()
            ):
                continue
            reason = f"the folder {path} shared with you took its name"
            copy = self._free_copy_name(mine.path)
            ops.append(Op(OpKind.SET_ASIDE, mine.path, local=mine, copy_path=copy, reason=reason))
            for tree in (local, remote):
                for k in [k for k in tree if k == key or k.startswith(key + "/")]:
                    del tree[k]
        return ops

    def _the_shares(self, mine: Entry, theirs: Entry | None) -> bool:
        """Whether the share's entry `theirs` accounts for `mine` (in a folder of this user's
        where a share is mounted): the same kind, and for a file the same content or a rev
        of it the server holds."""
        if theirs is None or theirs.kind != mine.kind:
            return False
        return (
            not mine.is_file
            or mine.content_hash == theirs.content_hash
            or bool(self._held_revs(mine.path, mine, theirs))
        )

    def _leave_share(self, path: str) -> bool:
        """Leave the shared folder mounted at `path` (its files stay for the others), or,
        the user's own, delete it (nobody else in it: to the trash, whole), and forget what
        this device knew of it. The owner's, with others in it, is refused (422: unshare
        first): it stays on the server, and comes back here as a folder never synced."""
        mount = self.state.shared_mounts().get(path_key(path))
        owned = mount is not None and mount[1] == "owner"
        try:
            self.api.call("/v1/delete", {"path": server_path(path)})
        except ApiError as e:
            if e.status != 422:
                raise
            self.state.delete_base(path, recursive=True)
            self.reporter.problem(
                f"{path} stays shared, and comes back here: {e.message}"
                f" (`tessera unshare {shlex.quote(path)}`)"
            )
            return True
        self.state.delete_base(path, recursive=True)
        self.state.delete_remote(path)
        if owned:
            self.reporter.event(f"deleted {path}, shared with nobody else (to the trash)")
        else:
            self.reporter.event(f"left the shared folder {path} (its files stay for the others)")
        return True

    def _adopt_commits(self) -> None:
        """Record the uploads whose commit landed though this device never recorded its
        answer (lost on the way, or the process killed first). Left to the planner, an edit
        made since read as changed on both sides, and went up as a conflicted copy of the
        device's own upload. Only a commit this device sent, in a session still alive, for
        a file still here, and only what it would have made: at the path, its content at
        the rev after the one it was sent on, of the file it was sent for, which the base
        knows under no other path. Any session whose content the server's file held was
        adopted before: a stale one, its file renamed meanwhile and renamed back elsewhere,
        took the file for deleted here, and deleted it everywhere. Recorded with no stat,
        so the next scan hashes the file."""
        pending = self.state.list_pending("upload")
        if not pending:
            return
        remote, base, now = self.state.remote_tree(), self.state.base_tree(), time.time()
        elsewhere = {e.file_id: k for k, e in base.items() if e.file_id}
        for _kind, key, session in pending:
            sent, r = session.get("commit"), remote.get(key)
            if not sent or r is None or not r.is_file:
                continue
            made = (
                r.content_hash == session.get("content_hash")
                and r.rev == (sent["parent_rev"] or 0) + 1
                and sent["file_id"] in (None, r.file_id)
                and elsewhere.get(r.file_id, key) == key
            )
            # a file deleted here since gains nothing (the planner brings it back), and
            # another device's new file of that content at the path was deleted for it
            if not made or self.fs.lstat_if_any(r.path) is None:
                continue
            if self.state.session_expiry(session) <= now:
                continue
            b = base.get(key)
            with self.state.transaction():
                if b is None or (b.file_id, b.rev) != (r.file_id, r.rev):
                    self.state.put_base(replace(r, mtime_ns=0, inode=0))
                self.state.drop_pending("upload", key)

    def _vouch_for_rehashed(self, scan: LocalScan, base: dict[str, Entry]) -> None:
        """Files recorded racily clean (mtime 0 in the base: hashed at every scan) that this
        scan found unchanged get their stat recorded, so the next scan trusts it (one
        transaction: after an upload of freshly written files that is every one of them)."""
        with self.state.transaction():
            for key, synced in base.items():
                here = scan.tree.get(key)
                if (
                    synced.is_file
                    and not synced.mtime_ns
                    and here is not None
                    and here.mtime_ns
                    and here.content_hash == synced.content_hash
                ):
                    self.state.put_base(
                        replace(synced, mtime_ns=here.mtime_ns, inode=here.inode),
                        self.state.base_blocks(synced.path),
                        seen_ns=scan.hashed_ns[key],
                    )

    def _mass_delete_gate(
        self,
        the_plan: Plan,
        base: dict[str, Entry],
        result: RoundResult,
        *,
        foreign: bool,
        leaving_files: int = 0,
    ) -> list[Op]:
        """The plan's operations, less its deletions when they are too many to be sure of
        (paused until `--allow-mass-delete`). `foreign`: the folder lacks the marker
        (`FOLDER_MARKER`) a round leaves in it. With deletions planned, that pauses every
        operation, however few files: it is what a drive not mounted under the synced folder
        looks like (its empty mount point, or another drive), and below the thresholds it
        deleted every file on the server and the other devices. Only the deletions paused,
        the server's new files came down into the mount point, and the next round, finding
        a folder no longer empty, deleted the rest. A folder the user emptied keeps the
        hidden marker, so its deletions go as usual. `leaving_files`: the files of the shared
        folders the round would leave (taken out of `base`): gone from here, they count as
        deletions (an `rm -rf ~/Tessera/*` left every share at once, unasked)."""
        s = self.settings
        earlier = sum(n for _, n in self._recent_deletes(time.time()))
        round_deletes = the_plan.deletes + leaving_files
        # with the deletions of the last `mass_delete_window_s`: a slow `rm -rf` (a network
        # drive, a tool deleting file by file) went out a few files a round, each round
        # below the thresholds, and every file went, with no pause
        deletes = round_deletes + earlier
        files = sum(1 for e in base.values() if e.is_file) + leaving_files + earlier
        mass = round_deletes > 0 and (
            deletes > s.mass_delete_files
            or (deletes >= s.mass_delete_min and deletes > s.mass_delete_fraction * max(files, 1))
        )
        held = (
            OpKind.DELETE_LOCAL,
            OpKind.DELETE_REMOTE,
            OpKind.DELETE_FOLDER_LOCAL,
            OpKind.DELETE_FOLDER_REMOTE,
        )
        # folders too: a base of folders alone plans no file deletion (but not one kept for
        # what it holds unsynced: its delete, planned each round, deletes nothing)
        foreign = foreign and any(
            op.kind in held
            and not (op.kind == OpKind.DELETE_FOLDER_LOCAL and self._holds_unsynced(op.path))
            for op in the_plan.ops
        )
        mass = mass or foreign
        if not mass or self.allow_mass_delete:
            if mass:  # approved once, for this deletion: a daemon's next one pauses again
                self.allow_mass_delete = False
                self._approved = True
            if self.state.get_meta("paused_deletes"):
                self.state.set_meta("paused_deletes", None)
            return the_plan.ops
        if foreign:
            result.problems.append(
                f"paused: {self.folder} does not look like the folder this device synced"
                f" (its hidden {FOLDER_MARKER} is gone, and what it held with it: is the"
                " drive holding it mounted?); nothing syncs until it is back. If this is the"
                f" folder, put the marker back (`touch {self.folder / FOLDER_MARKER}`); if"
                " deleting what is gone everywhere is intended, run"
                " `tessera sync --allow-mass-delete`"
            )
        else:
            within = (
                f" ({round_deletes} now, {earlier} in the last"
                f" {s.mass_delete_window_s / 60:g} minutes)"
                if earlier
                else ""
            )
            here = sum(1 for op in the_plan.ops if op.kind == OpKind.DELETE_LOCAL)
            result.problems.append(
                f"paused: this would delete {deletes} of {files} files{within}"
                f" ({_deleted_where(the_plan.deletes - here, leaving_files, here)}); if that is"
                " intended, run"
                " `tessera sync --allow-mass-delete`"
            )
        result.paused_deletes = max(round_deletes, 1)  # (what is held: the earlier ones went)
        self.state.set_meta("paused_deletes", str(result.paused_deletes))
        if foreign:
            return []
        return [op for op in the_plan.ops if op.kind not in held]

    def _note_deletes(self) -> None:
        """Add the round's deletions to the gate's window (`_recent_deletes`), counted as
        they were done: a deletion that failed, planned again next round, had been counted
        each time, and a few deletes the server refused for a while paused the sync. An
        approved mass delete empties the window: it and what came before it were let
        through."""
        if not (self._deleted or self._approved):
            return  # (nothing new: what aged out is left out when read)
        now = time.time()
        recent = [] if self._approved else [*self._recent_deletes(now), (now, self._deleted)]
        self.state.set_meta("recent_deletes", json.dumps(recent) if recent else None)

    def _recent_deletes(self, now: float) -> list[tuple[float, int]]:
        """(when, how many) of the deletions done within `mass_delete_window_s`."""
        try:
            noted = json.loads(self.state.get_meta("recent_deletes") or "[]")
            recent = [(float(t), int(n)) for t, n in noted]
        except (ValueError, TypeError):  # (a note this client cannot read: none)
            return []
        return [(t, n) for t, n in recent if now - self.settings.mass_delete_window_s < t <= now]

    def _mark_folder(self) -> None:
        """Leave `FOLDER_MARKER` in the folder (ignored, never synced: built in), and note in
        the state that it is there: from then on a folder without it is not this one. Best
        effort: without it, only an empty folder is taken for another (a read-only folder,
        a full disk)."""
        with contextlib.suppress(OSError):
            temp, handle = self.fs.create_temp("")
            handle.close()
            self.fs.rename(temp, FOLDER_MARKER)
            self.state.set_meta(MARKED_META, "1")

    def _execute(self, ops: list[Op], scan: LocalScan, result: RoundResult) -> None:
        uploads: list[tuple[UploadItem, Entry | None]] = []
        downloads: list[Op] = []
        stats = dict(scan.stats)
        hashed = scan.hashed_ns
        implied = _implied_folders(ops)
        self._moved_from.clear()
        self._unmoved.clear()
        for op in ops:
            if result.disk_full and op.kind in (OpKind.DOWNLOAD, OpKind.CONFLICT):
                continue
            if op.kind == OpKind.CREATE_FOLDER_REMOTE and path_key(op.path) in implied:
                continue  # the commits below create it
            step = partial(self._run_op, op, stats, hashed, uploads, downloads)
            result.ops += int(self._guarded(op, result, step))
        if downloads:
            self._download_all(downloads, stats, result)
        committed: set[str] = set()
        if uploads:  # each file counts as work done in `_after_upload` (or not)
            committed = self._upload(uploads, result)
        created = {a for key in committed for a in ancestors(key)}
        for op in ops:
            if op.kind == OpKind.CREATE_FOLDER_REMOTE and path_key(op.path) in implied:
                if path_key(op.path) in created:
                    self.state.put_base(Entry(op.path, EntryKind.FOLDER))
                    self.state.put_remote(Entry(op.path, EntryKind.FOLDER))
                    result.ops += 1
                else:  # no commit landed inside it: create it on its own
                    step = partial(self._run_op, op, stats, hashed, uploads, downloads)
                    result.ops += int(self._guarded(op, result, step))

    def _guarded(self, op: Op, result: RoundResult, step: Callable[[], bool]) -> bool:
        """Run one step; an expected failure becomes a problem (or a retry), never a crash."""
        try:
            return step()
        except DiskFullError:
            if not result.disk_full:
                result.problems.append(
                    "the disk is full: downloads stopped (nothing was corrupted); free some "
                    "space and sync again"
                )
            result.disk_full = True
        except RestoringError as e:
            result.retry_after = max(result.retry_after, e.retry_after)
            self.reporter.event(f"{e.path}: restoring from cold storage, will retry")
        except BlockReportedError as e:  # a problem only if the server's check cannot mend it
            result.retry_after = max(result.retry_after, e.retry_after)
            self.reporter.event(f"{op.path}: {e}; will retry")
        except (IntegrityError, UnsafePathError, SymlinkError) as e:
            result.problems.append(f"refused {op.path}: {e}")
        except LocalChangedError:
            return True  # re-planned next round
        except DownloadStopped:
            pass  # the daemon stops: the partial download is resumed at its next start
        except ApiError as e:
            result.problems.append(
                f"could not {DOING[op.kind]} {op.path}: {e.message} ({e.status})"
            )
        except OSError as e:
            if out_of_room(e):
                result.disk_full = True
            unwritable = e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
            hint = "; make it writable, then sync again" if unwritable else ""
            result.problems.append(f"could not {DOING[op.kind]} {op.path}: {e.strerror or e}{hint}")
        return False

    def _download_all(self, ops: list[Op], stats: dict[str, Stat], result: RoundResult) -> None:
        """Download many files at once (`download_each`).

        The server out of reach stops the rest, and the downloads that finished are still
        recorded before the outage is raised: left unrecorded, a file the server changed
        again meanwhile came back as a conflict with itself."""
        outage: ServerUnreachable | None = None

        def fetch(op: Op, stopping: Callable[[], bool]) -> Fetched:
            assert op.remote is not None
            expect = stats.get(path_key(op.path)) if op.local else None
            self._sizes[op.path] = op.remote.size
            r = op.remote
            return self.transfers.download(
                op.path, r.file_id, r.rev, r.content_hash, expect, stopping=stopping
            )

        def finished(op: Op, fut: Future[Fetched]) -> None:
            nonlocal outage
            try:
                result.ops += int(self._guarded(op, result, partial(self._recorded, op, fut)))
            except ServerUnreachable as e:
                outage = outage or e
            finally:
                self._end_progress(op.path)

        download_each(ops, fetch, finished, stop=self._stop)  # (a daemon told to stop)
        if outage is not None:
            raise outage

    def _recorded(self, op: Op, fut: Future[Fetched]) -> bool:
        """Record a finished download in the state database (main thread only)."""
        assert op.remote is not None
        self._record_download(op.path, op.remote, fut.result())
        return True

    def _move_record(self, src: str, dst: str, seen: Entry | None = None) -> None:
        """The synced record of the file at `src`, and its blocks, now of `dst`. Its stat
        stays the synced file's (the next scan hashes the file at `dst` unless it is that
        file as synced, untouched), or is `seen`'s: the scan found the synced content there
        with that stat (left the old one, a file of another inode was hashed anew by every
        process)."""
        old = self.state.base_entry(src)  # one row: a renamed folder moves each file
        blocks = self.state.base_blocks(src)
        self.state.delete_base(src)
        if old is not None:
            moved = replace(old, path=dst)
            if seen is not None:
                moved = replace(moved, mtime_ns=seen.mtime_ns, inode=seen.inode)
            self.state.put_base(moved, blocks)

    def _taken(self, path: str, src: str) -> bool:
        """Whether something other than `src` is at `path`. On a disk that ignores case, a
        rename in case only finds `src` itself there (same inode): not taken."""
        there = self.fs.lstat_if_any(path)
        if there is None:
            return False
        mine = self.fs.lstat_if_any(src)
        return not (mine is not None and there.inode and there.inode == mine.inode)

    def _unchanged(self, rel: str, stats: dict[str, Stat]) -> bool:
        before = stats.get(path_key(rel))
        now = self.fs.lstat_if_any(rel)
        return before is not None and now is not None and same_stat(before, now)

    def _run_op(
        self,
        op: Op,
        stats: dict[str, Stat],
        hashed: dict[str, int],
        uploads: list[tuple[UploadItem, Entry | None]],
        downloads: list[Op],
    ) -> bool:
        """Run one planned operation (`stats` and `hashed`: the scan's, by path key); True
        when it was work done. Uploads and downloads are only queued, for the caller."""
        k = op.kind
        if k == OpKind.SET_ASIDE:
            return self._set_aside(op, stats)
        if k == OpKind.UPLOAD:
            assert op.local is not None
            manifest = self.scanner.manifest(op.path)
            st = stats.get(path_key(op.path))
            if manifest is None or st is None:
                return True  # not hashed this pass (trusted from base): nothing new to send
            parent = op.remote.rev if op.remote is not None else None
            item = UploadItem(
                op.path,
                manifest,
                st,
                parent,
                hashed[path_key(op.path)],
                (op.remote.file_id or None) if op.remote is not None else None,
            )
            uploads.append((item, op.remote))
            self._sizes[op.path] = manifest.size
            return False
        if k == OpKind.DOWNLOAD:
            if path_key(op.path) in self._unmoved:
                return True  # (the next round looks again)
            downloads.append(op)
            return False
        if k == OpKind.CONFLICT:
            assert op.local is not None and op.remote is not None
            if not self._unchanged(op.path, stats):
                return True
            if self._an_earlier_server_version(op.path, op.local, op.remote):
                downloads.append(replace(op, kind=OpKind.DOWNLOAD, copy_path=""))
                return False
            copy = self._planned_copy_name(op)
            rename_unless_taken(self.fs, op.path, copy)
            stats[path_key(copy)] = stats.pop(path_key(op.path))
            self.state.add_conflict(copy, op.path, "edited on two devices", local_only=False)
            self.reporter.event(f"conflict: your edit of {op.path} kept as {copy}")
            manifest = self.scanner.manifest(op.path)
            if manifest is not None:
                seen = hashed[path_key(op.path)]
                uploads.append(
                    (UploadItem(copy, manifest, stats[path_key(copy)], None, seen), None)
                )
            # the server's file takes the permissions of the one moved aside (a private
            # file stays private; a script stays executable), and its blocks in common
            self._download(op.path, op.remote, None, mode_from=copy, manifest=manifest)
            return True
        if k == OpKind.DELETE_LOCAL:
            if self._unchanged(op.path, stats):
                self.fs.remove(op.path)
                self.state.delete_base(op.path)
                self.reporter.event(f"deleted {op.path} (deleted on the server)")
                self._deleted += 1
            return True
        if k == OpKind.DELETE_REMOTE:
            return self._delete_remote(op)
        if k == OpKind.MOVE_LOCAL:
            assert op.remote is not None
            if not self._unchanged(op.src, stats) or self._taken(op.path, op.src):
                return True
            if parent_of(op.path):
                self.fs.makedirs(parent_of(op.path))
            rename_unless_taken(self.fs, op.src, op.path)
            self._move_record(op.src, op.path)
            stats[path_key(op.path)] = stats.pop(path_key(op.src))
            if path_key(op.src) in hashed:  # an edit made here goes up from there this round
                hashed[path_key(op.path)] = hashed.pop(path_key(op.src))
            self.scanner.moved(op.src, op.path)
            self.reporter.event(f"moved {op.src} -> {op.path}")
            return True
        if k == OpKind.MOVE_RECORD:  # (planned for the synced content only)
            self._move_record(op.src, op.path, seen=op.local)
            return True
        if k == OpKind.MOVE_REMOTE:
            run = partial(
                self._run_op, stats=stats, hashed=hashed, uploads=uploads, downloads=downloads
            )
            return self._move_remote(op, stats, hashed, run)
        if k == OpKind.CREATE_FOLDER_LOCAL:
            self.fs.makedirs(op.path)
            st = self.fs.lstat(op.path)
            self.state.put_base(Entry(op.path, EntryKind.FOLDER, inode=st.inode))
            return True
        if k == OpKind.CREATE_FOLDER_REMOTE:
            try:
                self.api.call("/v1/create_folder", {"path": server_path(op.path)})
            except ApiError as e:
                if e.status != 409:
                    raise
            self.state.put_base(Entry(op.path, EntryKind.FOLDER))
            self.state.put_remote(Entry(op.path, EntryKind.FOLDER))
            return True
        if k == OpKind.DELETE_FOLDER_LOCAL:
            if self._holds_unsynced(op.path) and not self.state.has_remote(op.path):
                # kept for what is never synced (an editor's swap file, an ignored file):
                # its record stays, so no round takes it for a new folder to create on the
                # server again, where every device got it back, empty. Each round plans
                # this again, no work while so. (Something the server has there now, a
                # file of that name: the record goes, and the next round sets it aside.)
                if path_key(op.path) not in self._kept_told:
                    self._kept_told.add(path_key(op.path))
                    self.reporter.event(
                        f"kept {op.path} here, deleted elsewhere: it holds files not synced"
                        " (ignored, or an editor's unsaved work)"
                    )
                return False
            with contextlib.suppress(FileNotFoundError):
                # Finder's .DS_Store and the like would keep every deleted folder here, and
                # the next round would create it on the server again
                left = self.fs.listdir(op.path)
                if all(IgnoreRules.is_litter(name) for name in left):
                    for name in left:
                        self.fs.remove(f"{op.path}/{name}")
                    self.fs.rmdir(op.path)
            self.state.delete_base(op.path)
            return True
        if k == OpKind.DELETE_FOLDER_REMOTE:
            return self._delete_remote_folder(op)
        if k == OpKind.RECORD:
            assert op.remote is not None
            key = path_key(op.path)
            st = stats.get(key)
            self.state.put_base(
                replace(op.remote, mtime_ns=st.mtime_ns if st else 0, inode=st.inode if st else 0),
                seen_ns=hashed.get(key, 0),
            )
            return False
        if k == OpKind.FORGET:
            self.state.delete_base(op.path)
            return False
        raise AssertionError(f"unknown operation {op}")

    def _holds_unsynced(self, rel: str) -> bool:
        """Whether folder `rel` holds what is never synced and is no litter (an ignored
        file, an editor's swap file): a delete from elsewhere leaves it here."""
        try:
            return not all(IgnoreRules.is_litter(name) for name in self.fs.listdir(rel))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:  # cannot tell (a folder it may not list): kept, it deletes nothing
            return True

    def _set_aside(self, op: Op, stats: dict[str, Stat]) -> bool:
        """Move a local file or folder that is the other kind on the server, where neither
        side kept what the base has, to a conflicted copy's name, and forget the base at and
        below its path: the next round uploads the copy and brings the server's."""
        assert op.local is not None
        if op.local.is_file:
            unchanged = self._unchanged(op.path, stats)
        else:
            now = self.fs.lstat_if_any(op.path)
            unchanged = now is not None and now.kind == Kind.DIR
        if not unchanged:
            return True  # changed since the scan: the next round looks again
        copy = self._planned_copy_name(op)
        # the base first: killed between the two, the next round sets the path aside again
        # (nothing in the base), where a rename left first read as the server's files there
        # deleted here, and deleted them on the server
        self.state.delete_base(op.path, recursive=True)
        rename_unless_taken(self.fs, op.path, copy)
        what, other = ("file", "folder") if op.local.is_file else ("folder", "file")
        reason = op.reason or f"a {other} of this name on the server"
        self.state.add_conflict(copy, op.path, reason, local_only=False)
        self.reporter.event(f"conflict: your {what} {op.path} kept as {copy} ({reason})")
        return True

    def _download(
        self,
        path: str,
        remote: Entry,
        expect: Stat | None,
        *,
        mode_from: str | None = None,
        manifest: FileManifest | None = None,
    ) -> None:
        self._sizes[path] = remote.size
        try:
            fetched = self.transfers.download(
                path,
                remote.file_id,
                remote.rev,
                remote.content_hash,
                expect,
                mode_from=mode_from,
                local_manifest=manifest,
            )
        finally:
            self._end_progress(path)
        self._record_download(path, remote, fetched)

    def _record_download(self, path: str, remote: Entry, fetched: Fetched) -> None:
        """Record `remote`, downloaded into `path`, under the server's spelling: a file
        respelled here then has its respelling sent as a move next round
        (`planner._detect_respellings`)."""
        entry, st, blocks = fetched
        self._record_file(remote.path, entry, st, blocks)
        self.reporter.event(f"downloaded {path}")

    def _record_file(
        self,
        path: str,
        entry: FileEntry,
        st: Stat,
        blocks: list[str],
        seen_ns: int | None = None,
    ) -> None:
        """Record a file both sides now hold (`seen_ns`: as for `StateDB.put_base`)."""
        e = Entry(
            path,
            EntryKind.FILE,
            entry.content_hash,
            entry.size,
            entry.file_id,
            entry.rev,
            st.mtime_ns,
            st.inode,
        )
        self.state.put_base(e, blocks, seen_ns=seen_ns)
        self.state.put_remote(replace(e, mtime_ns=0, inode=0))

    def _delete_remote(self, op: Op) -> bool:
        assert op.remote is not None
        if self._made_again(op.path):
            # a save that deletes, then writes: the next round sends it as an edit, where
            # the delete sent it to the trash, its history with it, and the file came back
            # as a new one. (A folder there is the planned kind change: the file it
            # replaced goes.)
            return True
        return self._delete_remote_file(op.path, op.remote, planned=True)

    def _made_again(self, path: str) -> bool:
        """Whether a file is at `path` again, made since the scan saw it gone."""
        there = self.fs.lstat_if_any(path)
        return there is not None and there.kind == Kind.FILE

    def _delete_remote_file(self, path: str, remote: Entry, *, planned: bool = False) -> bool:
        """Delete the server's file `remote`, synced here at `path`, if it is still the
        rev this device saw. `planned`: a deletion of the plan, which the mass-delete
        gate counts (a move's source deleted after its upload, across a share's edge, is
        none)."""
        try:
            self.api.call(
                "/v1/delete",
                {
                    "path": server_path(remote.path),
                    "parent_rev": remote.rev,
                    "parent_file_id": remote.file_id or None,
                },
            )
        except ApiError as e:
            if _read_only(e):  # put the server's file back
                self.state.delete_base(path)
                self.reporter.problem(f"{path} is read-only for you; restored it")
                return True
            if e.status == 409:  # changed on the server meanwhile: re-plan
                return True
            if e.status != 404:
                raise
        self.state.delete_base(path)
        self.state.delete_remote(remote.path)
        self.reporter.event(f"deleted {path} on the server")
        self._deleted += int(planned)
        return True

    def _delete_remote_folder(self, op: Op) -> bool:
        """Delete a folder on the server only while it is empty there (`if_empty`, checked
        under the server's lock). The files this device deleted in it went first (folder
        deletions come last in a plan), so anything still in it was added elsewhere since
        the last pull: a folder delete takes its contents along, and that work would leave
        every device. Then the folder stays, and the next pull brings what is in it. When it
        holds what this device leaves alone (ignores, or cannot name), no pull ever brings
        that: the base is forgotten, so the next round makes the folder here as the server
        has it (it was deleted again every round, without end). So with any 409 once none
        of its synced contents is left to delete (what it holds may be nothing a pull brings,
        a name this device refuses, or a file in its place now); one whose file deletes
        did not all go through (a 5xx) keeps its base, and the next round finishes them."""
        try:
            self.api.call("/v1/delete", {"path": server_path(op.path), "if_empty": True})
        except ApiError as e:
            if e.status == 409:
                if not self.state.has_base_below(op.path):
                    self.state.delete_base(op.path)
                if path_key(op.path) in self._holding_unseen:
                    self.reporter.problem(
                        f"kept {op.path}: on the server it holds files this device ignores"
                    )
                else:
                    self.reporter.problem(
                        f"kept {op.path} on the server: it holds what another device put there"
                    )
                return True
            if _read_only(e):  # as for its files: the server's listing brings it back
                self.state.delete_base(op.path)
                self.reporter.problem(f"{op.path} is read-only for you; restored it")
                return True
            if e.status != 404:
                raise
        self.state.delete_base(op.path)
        self.state.delete_remote(op.path)
        return True

    def _move_remote(
        self, op: Op, stats: dict[str, Stat], hashed: dict[str, int], run: Callable[[Op], bool]
    ) -> bool:
        """`/v1/move` of a file moved here; `run` runs another operation in this round (the
        upload a move across a shared folder's edge turns into)."""
        assert op.remote is not None
        if op.remote.kind == EntryKind.FILE and self._made_again(op.src):
            # an editor's save that renames the file to its backup, then writes it anew
            # (emacs's `file~`), across the scan: moved, the file's id and history went to
            # the backup, and the saved file came back as a new one. The next round sends
            # the save as an edit and the backup as a new file, as when the scan sees both.
            return True
        body = {"from_path": server_path(op.src), "to_path": server_path(op.path)}
        if op.remote.file_id:  # only the file this device saw there (else 409: replanned)
            body["parent_file_id"] = op.remote.file_id
        # until it lands, a download planned where it goes waits a round (any failure: the
        # file there is not the one the server moves)
        self._unmoved.add(path_key(op.path))
        try:
            # a server from before the guard refuses it: every rename became a copy
            raw = self.api.call("/v1/move", body, optional=("parent_file_id",))
        except ApiError as e:
            if e.status == 422 and e.details.get("reason") == "across_namespaces":
                # into or out of a shared folder: the destination is uploaded as a new file,
                # and the source deleted (if still the rev moved) only once that landed
                # (`_after_upload`). Deleted first, an upload then refused (a read-only
                # share, the quota) left the file on no server and no other device.
                self.reporter.event(f"{op.src} -> {op.path} crosses a shared folder")
                self._moved_from[path_key(op.path)] = (op.src, op.remote)
                return run(Op(OpKind.UPLOAD, op.path, local=op.local))
            if e.status in (409, 422, 404) or _read_only(e):
                # cannot move there: forget the old pairing; the next round restores or
                # uploads each side on its own (nothing is lost)
                self.state.delete_base(op.src)
                self.reporter.problem(f"could not move {op.src} on the server: {e.message}")
                return True
            raise
        self._unmoved.discard(path_key(op.path))
        st = stats.get(path_key(op.path)) or self.fs.lstat(op.path)
        blocks = self.state.base_blocks(op.src)
        self.state.delete_base(op.src)
        self.state.delete_remote(op.src)
        # A folder's children just left the mirror, and come back only with a pull: the next
        # round must pull before it plans, or it reads them as deleted on the server (a
        # case-only rename: same keys) and deletes them here. The long-poll may be slower.
        self._remote_changed.set()
        if raw.get(".tag") == "folder":
            # its record, respelled (the files below keep theirs: the planner spells them
            # under it). Without it, a rename in case made in it before the next round
            # found neither spelling synced, and was undone to the server's.
            self.state.put_base(Entry(op.path, EntryKind.FOLDER, inode=st.inode))
        if raw.get(".tag") == "file":
            now = parse(FileEntry, raw)
            assert op.remote is not None
            # The move answers the file as it is now, which may be a rev another device
            # committed after the planner looked (a move takes no parent rev). What is here
            # is the rev that was moved: recorded as synced, a newer one then arrives as a
            # remote change (downloaded, or a conflict if edited here too), never taken for
            # what this disk holds.
            here = Entry(
                op.path,
                EntryKind.FILE,
                op.remote.content_hash,
                op.remote.size,
                now.file_id,
                op.remote.rev,
                st.mtime_ns,
                st.inode,
            )
            # The stat vouches for the moved content only if the file holds it: a rename that
            # came with an edit (sent by the UPLOAD that follows, which may not land) is
            # recorded unvouched, so the next scan reads the file again.
            held = op.local is not None and op.local.content_hash == op.remote.content_hash
            seen = hashed.get(path_key(op.path), 0) if held else 0
            self.state.put_base(here, blocks, seen_ns=seen)
            self.state.put_remote(
                Entry(op.path, EntryKind.FILE, now.content_hash, now.size, now.file_id, now.rev)
            )
        self.reporter.event(f"moved {op.src} -> {op.path} on the server")
        return True

    def _upload(
        self, uploads: list[tuple[UploadItem, Entry | None]], result: RoundResult
    ) -> set[str]:
        """Upload, recording each file as its commit comes back; the path keys of the
        files committed. An upload the server stops is a problem naming the files it
        left (not those already committed and recorded)."""
        remote_of = {item.path: remote for item, remote in uploads}
        handled: list[UploadResult] = []

        def after(r: UploadResult) -> None:
            handled.append(r)
            self._after_upload(r, remote_of.get(r.item.path), result)

        try:
            self.transfers.upload([item for item, _ in uploads], on_result=after)
        except ApiError as e:
            left = len(uploads) - len(handled)
            result.problems.append(f"upload of {left} file(s): {e.message} ({e.status})")
        finally:
            for item, _ in uploads:
                self._end_progress(item.path)
        return {path_key(r.item.path) for r in handled if r.entry is not None}

    def _after_upload(self, r: UploadResult, remote: Entry | None, result: RoundResult) -> None:
        """Record an upload's outcome. A refusal that the next round would meet again (quota,
        size, a bad request) is a problem, not work done: counted as work, it made every
        round start the next at once, for ever."""
        path = r.item.path
        self._end_progress(path)
        source = self._moved_from.pop(path_key(path), None)
        if r.entry is not None:
            ids = [b.id for b in r.item.manifest.blocks]
            self._record_file(path, r.entry, r.item.stat, ids, r.item.hashed_ns)
            self.reporter.event(f"uploaded {path}")
            result.ops += 1
            if source is not None:  # the moved file is safe at its destination
                delete = Op(OpKind.DELETE_REMOTE, source[0], remote=source[1])
                self._guarded(delete, result, lambda: self._delete_remote_file(*source))
            return
        if r.error is None:
            result.ops += 1  # the file changed while uploading: the next round sends it
            return
        if source is not None:
            # the move did not land: the source stays on the server, and the next round
            # brings it back here rather than read it as deleted
            self.state.delete_base(source[0])
            self.reporter.event(f"kept {source[0]} on the server: its move to {path} was refused")
        if r.status == 409 or _read_only(r.error):
            result.ops += 1
            # guarded like any step: runs from the upload's callback, where an error would end
            # the round (and the daemon) instead of this file's conflict
            self._guarded(
                Op(OpKind.UPLOAD, path), result, lambda: self._keep_refused_edit(r, remote)
            )
            return
        result.problems.append(f"could not upload {path}: {r.error.message} ({r.status})")

    def _keep_refused_edit(self, r: UploadResult, remote: Entry | None) -> bool:
        """An edit the server refused (409: changed on another device; 403: a read-only
        share) moves to a conflicted copy, so the server's version can take its place;
        unless the server holds what this file holds, which is then synced."""
        path = r.item.path
        viewer = r.error is not None and _read_only(r.error)
        if not viewer and self._same_on_server(r):
            return True
        copy = self._free_copy_name(path)
        now = self.fs.lstat_if_any(path)
        if now is not None and same_stat(now, r.item.stat):
            rename_unless_taken(self.fs, path, copy)
            reason = "read-only shared folder" if viewer else "changed on another device"
            self.state.add_conflict(copy, path, reason, local_only=viewer)
            self.reporter.event(f"conflict: your edit of {path} kept as {copy}")
            if viewer:
                self.reporter.problem(
                    f"{path} is in a folder shared with you read-only: your change is "
                    f"kept locally as {copy} (see `tessera conflicts`)"
                )
                if remote is not None:
                    with contextlib.suppress(ApiError, LocalChangedError):
                        self._download(path, remote, None, mode_from=copy, manifest=r.item.manifest)
        return True

    def _an_earlier_server_version(self, path: str, local: Entry, remote: Entry) -> bool:
        """Whether the local file is a version of the server's file that this device never
        recorded (a rev after the recorded one): a download renamed into place, then the
        process killed before it recorded it, and the server's file changed again before
        the restart. Both sides looked changed, and a file nobody edited here became a
        conflicted copy. The server holds that content in the file's history, so the
        server's newer version may replace it; an edit made here is in no such rev."""
        held = self._held_revs(path, local, remote)
        if held:
            self.reporter.event(
                f"{path}: this device holds rev {held[0]} of it (not recorded here); taking"
                f" rev {remote.rev}"
            )
        return bool(held)

    def _held_revs(self, path: str, local: Entry, remote: Entry) -> list[int]:
        """The revs of the server's file `remote` after the one recorded at `path` (any,
        with none recorded) and before its latest that hold `local`'s content."""
        synced = self.state.base_entry(path)
        since = synced.rev if synced is not None and synced.file_id == remote.file_id else 0
        if remote.rev - since < 2:
            return []  # no rev between the recorded one and the server's
        try:
            history = parse(
                RevisionsResponse,
                self.api.call(  # newest first: the server's rev back to the recorded one
                    "/v1/revisions",
                    {"file_id": remote.file_id, "limit": min(remote.rev - since, 1000)},
                ),
            )
        except ApiError:
            return []  # (the conflicted copy keeps both, as ever)
        return [
            e.rev
            for e in history.entries
            if since < e.rev < remote.rev and e.content_hash == local.content_hash
        ]

    def _same_on_server(self, r: UploadResult) -> bool:
        """Whether the server's file at `r`'s path now holds `r`'s content (another device
        committed the same: two devices' first sync of one folder's copies, the same edit
        made on each); if so it is recorded as synced. Each such 409 had made a conflicted
        copy, byte for byte the file, of every file the two had in common."""
        try:
            raw = self.api.call("/v1/metadata", {"path": server_path(r.item.path)})
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        if raw.get(".tag") != "file":
            return False
        entry = parse(FileEntry, raw)
        if entry.content_hash != r.item.manifest.content_hash:
            return False
        now = self.fs.lstat_if_any(r.item.path)
        if now is None or not same_stat(now, r.item.stat):
            return False  # changed again here: the next round compares it anew
        ids = [b.id for b in r.item.manifest.blocks]
        self._record_file(r.item.path, entry, r.item.stat, ids, r.item.hashed_ns)
        self.reporter.event(f"{r.item.path}: the server already holds it")
        return True

    def _planned_copy_name(self, op: Op) -> str:
        """The conflicted copy's name the plan chose, or a free one: the planner saw neither
        the local-only copies (kept out of the scan) nor anything created since, and a
        rename to its name would replace whatever holds it; nor this filesystem's longest
        name, which its name may pass."""
        name_max = self.fs.name_max()
        fits = name_max is None or len(op.copy_path.rpartition("/")[2].encode()) <= name_max
        if fits and not self.fs.exists(op.copy_path):
            return op.copy_path
        return self._free_copy_name(op.path)

    def _free_copy_name(self, path: str) -> str:
        taken = set(self.state.remote_tree())
        name_max = self.fs.name_max()
        attempt = 0
        while True:
            name = conflicted_copy_name(
                path, self.settings.device_name, date.today(), attempt, name_max=name_max
            )
            if path_key(name) not in taken and not self.fs.exists(name):
                return name
            attempt += 1

    # -- drivers ------------------------------------------------------------------------

    def tell_invitations(self) -> None:
        """Say, once each, the invitations to shared folders waiting for this user: a share
        reaches the devices only once accepted, and nothing else tells them of it. One
        attempt, never an error: a notice can wait for the next full scan."""
        try:
            answer = self.api.call("/v1/shares/invitations", {}, retry=False)
        except (ApiError, ServerUnreachable, NotLoggedIn):
            return  # the round tells what is wrong with the server or the session
        waiting = invitations.well_formed(answer)
        for invitation in waiting:
            if invitation["ns_id"] in self._invitations_told:
                continue
            self._invitations_told.add(invitation["ns_id"])
            self.reporter.event(invitations.notice(invitation, waiting))

    def run_once(self, max_rounds: int = 30) -> RoundResult:
        """Sync until both sides are quiescent (or a problem stops it)."""
        total = RoundResult()
        outage_since: float | None = None
        for _ in range(max_rounds):
            try:
                r = self.round()
            except ServerUnreachable as e:
                # the server is down or restarting: wait for it (uploads resume where they were)
                now = time.monotonic()
                outage_since = outage_since or now
                if now - outage_since > self.settings.outage_wait_s:
                    raise
                self.reporter.problem(f"{e}; retrying")
                time.sleep(min(5.0, 0.5 + (now - outage_since) / 4))
                continue
            except DiskFullError as e:  # the state database: nothing more can be recorded
                total.disk_full = True
                total.problems.append(_disk_full_problem(e))
                break
            outage_since = None
            total.ops += r.ops
            total.problems += [p for p in r.problems if p not in total.problems]
            total.paused_deletes = max(total.paused_deletes, r.paused_deletes)
            total.disk_full = total.disk_full or r.disk_full
            total.skipped = r.skipped  # what is still left out at the end
            if r.disk_full or (r.quiescent and r.ops == 0):
                break
            if r.ops == 0 and r.unstable:
                time.sleep(self.settings.debounce_ms / 1000)
            if r.ops == 0 and r.retry_after:
                self.reporter.event(f"waiting {r.retry_after:.0f}s to try again")
                time.sleep(min(r.retry_after, 60))
            if r.ops == 0 and r.problems and not r.unstable and not r.retry_after:
                break
        else:
            total.problems.append(f"still not quiescent after {max_rounds} rounds")
        self._write_stats()
        return total

    def _write_stats(self) -> None:
        """Leave the transfer figures of this run in `logs/last-sync.json` (tests, benchmarks)."""
        self.home.ensure()
        try:
            (self.home.log_dir / "last-sync.json").write_text(
                json.dumps(asdict(self.transfers.stats))
            )
        except OSError as e:
            if not out_of_room(e):  # figures are not worth failing a sync over
                raise

    def stop(self) -> None:
        """Ask the daemon to stop: calls waiting to retry (an outage), and block transfers
        in flight, give up at once."""
        self._stop.set()
        self.api.stop()
        self._wake.set()

    def _longpoll_loop(self) -> None:
        """Wake a pulling round whenever the server has news after the stored cursor.

        After news (or with no cursor yet) it waits for that round's pull: asked again
        with the same cursor, the server answers at once, and the thread sent hundreds of
        requests a second while a long round uploaded. Whatever goes wrong is reported
        and retried: a thread that ended here left the daemon deaf to the server."""
        while not self._stop.is_set():
            try:
                self._pulled.clear()
                news = self.longpoll()
            except Exception as e:
                if self._stop.is_set():
                    break  # (its call gave up its retries: the daemon stops)
                self.reporter.problem(f"waiting for the server: {e}")
                self._remote_changed.set()
                self._wake.set()
                self._stop.wait(2.0)
                continue
            if news:
                self._remote_changed.set()
                self._wake.set()
                deadline = time.monotonic() + self.settings.scan_interval_s
                while not (self._stop.is_set() or self._pulled.wait(0.5)):
                    if time.monotonic() >= deadline:
                        break

    def _watch(self, watcher: Watcher, said: _WatchNotes) -> bool:
        """(Re)start the watcher; whether it watches. The daemon calls it again at each full
        scan while the watch is gone (the folder deleted, replaced or unmounted: no event
        came again; a limit raised since), and says each problem once while it lasts, and
        when watching works again."""

        def once(last: str | None, problem: str) -> str:
            if problem != last:
                self.reporter.problem(problem)
            return problem

        every = f"every {self.settings.scan_interval_s:g} s"
        try:
            watcher.start()
        except OSError as e:  # inotify's limits, a folder gone or that cannot be watched
            limit = {errno.ENOSPC: "max_user_watches", errno.EMFILE: "max_user_instances"}
            hint = f" (on Linux, raise fs.inotify.{limit[e.errno]})" if e.errno in limit else ""
            said.failure = once(
                said.failure,
                f"cannot watch {self.folder} for changes ({e.strerror or e}){hint}; local"
                f" changes are found by the full scan {every}, which tries to watch again",
            )
            return False
        if said.failure is not None:
            said.failure = None
            self.reporter.event(f"watching {self.folder} for changes again")
        # counted twice: a folder made while the first count walked may not be watched yet
        if watcher.unwatched_folders() and (missed := watcher.unwatched_folders()):
            said.unwatched = once(
                said.unwatched,
                f"{missed} folder(s) in {self.folder} cannot be watched for changes (inotify's"
                f" limit: raise fs.inotify.max_user_watches, then restart the sync); changes"
                f" there are found by the full scan {every}",
            )
        return True

    def run_daemon(self, on_round: Callable[[RoundResult], None] | None = None) -> None:
        """Sync continuously: watcher events and long-poll wake a round; full scans regularly."""
        from tessera_client.watcher import Watcher

        watcher = Watcher(
            self.folder,
            self._wake,
            debounce_s=self.settings.debounce_ms / 1000,
            rules=lambda: self._rules,
        )
        said = _WatchNotes()
        watching = self._watch(watcher, said)
        poller = threading.Thread(target=self._longpoll_loop, name="tessera-longpoll", daemon=True)
        poller.start()
        next_scan = 0.0
        try:
            while not self._stop.is_set():
                timeout = max(0.0, next_scan - time.monotonic())
                if self._wake.wait(timeout):
                    self._wake.clear()
                    if watching:
                        watcher.settle()
                if self._stop.is_set():
                    break
                # a round woken only by local events skips the pull: the long-poll says when
                # the server has news (and a stale parent rev is a 409, never a lost edit)
                full = time.monotonic() >= next_scan
                if full and not watcher.alive():
                    watching = self._watch(watcher, said)
                if full:
                    self.tell_invitations()
                pull = full
                # cleared only when seen set: news arriving between a check and a clear was
                # dropped, and the long-poll thread then waited a whole scan interval for a
                # pull that never came
                if self._remote_changed.is_set():
                    self._remote_changed.clear()
                    pull = True
                try:
                    r = self.round(pull=pull)
                    for p in r.problems:
                        self.reporter.problem(p)
                    if on_round:  # (it may record a status in the state database)
                        on_round(r)
                except (ApiError, ServerUnreachable) as e:
                    if self._stop.is_set():
                        break  # (a call that gave up its retries to let the daemon stop)
                    self._remote_changed.set()
                    self.reporter.problem(f"sync paused: {e}; retrying")
                    self._stop.wait(2.0)
                    continue
                except DiskFullError as e:
                    # the state database cannot be written; the disk may be freed any time
                    self._remote_changed.set()
                    self.reporter.problem(f"sync paused: {_disk_full_problem(e)}")
                    self._stop.wait(DISK_FULL_WAIT_S)
                    continue
                except OSError as e:
                    # the folder's disk failing (EIO: a drive pulled, a stale network mount)
                    # beyond what the scan takes as unseen: it ended the daemon
                    self._remote_changed.set()
                    self.reporter.problem(
                        f"sync paused: cannot use {self.folder} ({e.strerror or e}); retrying"
                    )
                    self._stop.wait(FOLDER_ERROR_WAIT_S)
                    continue
                if r.ops or r.unstable:
                    self._wake.set()  # follow-up round: confirm quiescence
                    if not r.ops:
                        time.sleep(self.settings.debounce_ms / 1000)
                if r.retry_after:
                    next_scan = time.monotonic() + r.retry_after
                elif full:  # a folder busier than the interval still gets its full rounds
                    next_scan = time.monotonic() + self.settings.scan_interval_s
        finally:
            watcher.stop()
            self._stop.set()


@dataclass
class _WatchNotes:
    """What the daemon last said of its watcher, so each problem is said once while it
    lasts (and its end once)."""

    failure: str | None = None  # the watch could not start
    unwatched: str | None = None  # folders watchdog left without a watch


def _deleted_where(there: int, leaving: int, here: int) -> str:
    """Where a round's deletions would go: `there`, files gone here, from the server and
    every device; `leaving`, files of shared folders left, from the user's other devices;
    `here`, files gone from the server, from this device. (A member leaving a share was
    paused "if deleting them everywhere is intended", where nothing went but from their own
    devices.)"""
    parts = (
        (there, "gone here, to go from the server and every device"),
        (leaving, "in shared folders left, to go from your other devices"),
        (here, "gone from the server, to go from this device"),
    )
    return "; ".join(f"{n} {what}" for n, what in parts if n)


def _disk_full_problem(error: DiskFullError) -> str:
    return f"{error.strerror}; free some space and sync again (nothing was lost)"


def _implied_folders(ops: list[Op]) -> set[str]:
    """Path keys of the new remote folders that a commit in this round creates anyway (a
    commit creates missing parents): folders with an upload inside and nothing else but
    uploads and new folders, so no move or delete there waits for them. Creating them one
    request each cost a round trip per folder before the first byte was sent."""
    keys = [(path_key(op.path), op.kind) for op in ops]
    uploaded = {a for k, kind in keys if kind == OpKind.UPLOAD for a in ancestors(k)}
    blocked = {a for k, kind in keys if kind not in _FOLDER_SAFE for a in [k, *ancestors(k)]}
    return {
        k
        for k, kind in keys
        if kind == OpKind.CREATE_FOLDER_REMOTE and k in uploaded and k not in blocked
    }


_FOLDER_SAFE = frozenset({OpKind.UPLOAD, OpKind.CREATE_FOLDER_REMOTE})


def _read_only(error: ApiError) -> bool:
    """Whether the server refused a change as a viewer's (`forbidden`): only then is the
    edit kept aside and the server's file put back. Another 403 (a firewall's rate rule, a
    proxy) is a problem for this round, retried by the next, never a reason to undo work."""
    return error.status == 403 and error.code == "forbidden"
