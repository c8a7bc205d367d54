"""The planner: (local tree, remote tree, synced base) -> operations. A pure function, no I/O.

Each tree maps a path key (NFC + case fold, see `paths.path_key`) to an `Entry`. The base
is what both sides agreed on at the last sync. A side "changed" a path when it differs
from the base: locally by content hash, remotely by (file_id, rev).

Rules, per path, after move detection:

| local   | remote  | plan                                                         |
|---------|---------|--------------------------------------------------------------|
| changed | same    | upload (or delete remote when deleted locally)               |
| same    | changed | download (or delete local when deleted remotely)             |
| changed | changed | equal content: record; both edited: conflicted copy of the   |
|         |         | local edit + download; modify-vs-delete: keep the modification |

A path that is a file on one side and a folder on the other (`_resolve_kind_changes`): the
side that still has what the base has gives way (its old kind is deleted this round, the
new one travels the next); when neither does, the local one is set aside as a conflicted
copy and the server's comes down the next round.

Nothing the user wrote is ever dropped: a local version is only deleted or overwritten
when it equals the base, which the server holds in its history.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from enum import StrEnum

from tessera_client.paths import ancestors, conflicted_copy_name, is_under, parent_of, path_key


class EntryKind(StrEnum):
    """A file or a folder."""

    FILE = "file"
    FOLDER = "folder"


@dataclass(frozen=True)
class Entry:
    """One path in a tree. Remote/base entries carry file_id + rev, local ones inode + mtime."""

    path: str
    kind: EntryKind = EntryKind.FILE
    content_hash: str = ""
    size: int = 0
    file_id: str = ""
    rev: int = 0
    mtime_ns: int = 0
    inode: int = 0

    @property
    def is_file(self) -> bool:
        return self.kind == EntryKind.FILE


Tree = Mapping[str, Entry]


class OpKind(StrEnum):
    """What an operation does."""

    UPLOAD = "upload"
    DOWNLOAD = "download"
    DELETE_LOCAL = "delete_local"
    DELETE_REMOTE = "delete_remote"
    MOVE_LOCAL = "move_local"
    MOVE_REMOTE = "move_remote"
    MOVE_RECORD = "move_record"
    CREATE_FOLDER_LOCAL = "create_folder_local"
    CREATE_FOLDER_REMOTE = "create_folder_remote"
    DELETE_FOLDER_LOCAL = "delete_folder_local"
    DELETE_FOLDER_REMOTE = "delete_folder_remote"
    CONFLICT = "conflict"
    SET_ASIDE = "set_aside"
    RECORD = "record"
    FORGET = "forget"


@dataclass(frozen=True)
class Op:
    """One step of a plan.

    - `path`: the path acted on (for moves the destination; `src` is the source).
    - `local`: the local entry the step expects (the executor re-checks it before it
      touches the disk, and turns a mismatch into a conflict instead of overwriting).
    - `remote`: the remote entry the step acts on or expects (parent rev for uploads).
    - `copy_path`: for a conflict, where the local edit goes; for a set-aside, where the
      local file or folder goes.
    """

    kind: OpKind
    path: str
    src: str = ""
    local: Entry | None = None
    remote: Entry | None = None
    copy_path: str = ""
    reason: str = ""


@dataclass
class Plan:
    """The operations, in execution order, plus counts used by the mass-delete check."""

    ops: list[Op] = field(default_factory=list)

    @property
    def deletes(self) -> int:
        """How many files this plan deletes on either side."""
        kinds = (OpKind.DELETE_LOCAL, OpKind.DELETE_REMOTE)
        return sum(1 for op in self.ops if op.kind in kinds)


def _moved(entry: Entry, path: str) -> Entry:
    return replace(entry, path=path)


def _detect_remote_moves(
    local: dict[str, Entry], remote: dict[str, Entry], base: dict[str, Entry], ops: list[Op]
) -> None:
    """A base file whose file_id now sits at another remote path moved on the server.

    The local copy moves there too (no download); the per-path rules then download a newer
    rev if the move also changed the content, upload an edit made here meanwhile, or keep
    both when both sides changed it. An edit here used to keep the old path: every device
    ended with the edit under the old name and the file unedited under the new one.

    Already moved there here, as synced (the same rename made on both devices, or a move
    this device made and a crash kept from recording), only the record moves. Read as a new
    file beside a deleted one, a newer rev of the server's, or an edit made there since,
    became a conflicted copy of a file this device had not changed. Only the synced content
    shows it is the file: ext4 gives a deleted file's inode number to the next file made,
    so an unrelated file made there took the server's file over. (Renamed and edited here,
    the edit is kept as a conflicted copy, as before.)
    """
    by_id = {e.file_id: k for k, e in remote.items() if e.is_file and e.file_id}
    for old_key, b in sorted(base.items()):
        if not b.is_file or not b.file_id:
            continue
        new_key = by_id.get(b.file_id)
        if new_key is None or new_key == old_key or new_key in base:
            continue
        old_remote = remote.get(old_key)
        if old_remote is not None and old_remote.file_id == b.file_id:
            continue
        lo, there, dst = local.get(old_key), local.get(new_key), remote[new_key].path
        if there is not None:
            if lo is None and there.is_file and there.content_hash == b.content_hash:
                ops.append(Op(OpKind.MOVE_RECORD, dst, src=b.path, local=there))
                base[new_key] = _moved(base.pop(old_key), dst)
            continue
        if lo is None or not lo.is_file:
            continue
        ops.append(Op(OpKind.MOVE_LOCAL, dst, src=lo.path, local=lo, remote=remote[new_key]))
        local[new_key] = _moved(local.pop(old_key), dst)
        base[new_key] = _moved(base.pop(old_key), dst)


def _detect_local_moves(
    local: dict[str, Entry], remote: dict[str, Entry], base: dict[str, Entry], ops: list[Op]
) -> None:
    """A base file gone locally whose content (and inode) appears at a new path was moved.

    Matched by content hash + inode; when inodes differ, only a unique content match
    counts. The move is sent as a move, also when the server has a newer rev of the file,
    though then only for the same inode (a copy kept while the file was deleted, Finder's
    Duplicate then Trash, is no rename of the file another device edited): the rev this
    device moved is the one it synced (what the executor records), and the per-path rules
    then download the newer one where the file went (the executor skips that download
    when the move was refused or became an upload). Sent as an upload of the old content
    beside a download of the edit, the two had left every device with the edit under the
    old name and the file unedited under the new one.
    """
    new_local = {k: e for k, e in local.items() if e.is_file and k not in base}
    for old_key, b in sorted(base.items()):
        if not b.is_file or old_key in local:
            continue
        r = remote.get(old_key)
        if r is None or r.file_id != b.file_id or r.rev < b.rev:
            continue
        same = [
            k for k, e in new_local.items() if e.content_hash == b.content_hash and k not in remote
        ]
        exact = [k for k in same if b.inode and new_local[k].inode == b.inode]
        pick = exact[0] if exact else (same[0] if len(same) == 1 and r.rev == b.rev else None)
        if pick is None:
            continue
        dst = new_local.pop(pick).path
        synced = replace(r, content_hash=b.content_hash, size=b.size, rev=b.rev)
        ops.append(Op(OpKind.MOVE_REMOTE, dst, src=r.path, local=local[pick], remote=synced))
        remote[pick] = _moved(remote.pop(old_key), dst)
        base[pick] = _moved(base.pop(old_key), dst)


def _detect_respellings(
    local: dict[str, Entry], remote: dict[str, Entry], base: dict[str, Entry], ops: list[Op]
) -> None:
    """A name changed in case or Unicode form only keeps its path key, so no per-path rule
    sees the rename. Renamed on one side while the other still spells it as the base does,
    the other side follows with a move (remotely only when the server holds the base rev:
    the executor records that rev as what was moved). A folder's contents follow their
    folder: only an entry whose own name changed (its parent spelled as before) moves, and
    the entries below a respelled folder are spelled under its new name from then on, so
    every later step (a move, a download) names them where they will be."""
    _spell_base_under_its_folders(base)
    for key in sorted(base.keys() | (local.keys() & remote.keys())):
        b, lo, r = base.get(key), local.get(key), remote.get(key)
        if lo is None or r is None or lo.kind != r.kind or lo.path == r.path:
            continue
        apart = b is None or (
            b.path not in (lo.path, r.path) and parent_of(b.path) == parent_of(r.path)
        )
        if apart and parent_of(lo.path) == parent_of(r.path):
            # one name spelled two ways, neither as synced (never synced: a first sync, or
            # both sides renamed it): the server's spelling is kept. Left as it was, this
            # case-sensitive disk took the server's folder for another beside the local one,
            # and the clash of the two then hid the local one and every edit in it. (A
            # record whose folder is spelled otherwise is stale, not a rename: left alone.)
            ops.append(Op(OpKind.MOVE_LOCAL, r.path, src=lo.path, local=lo, remote=r))
            _respell(local, key, lo.path, r.path)
            if b is not None:
                _respell(base, key, b.path, r.path)
            continue
        if b is None or lo.kind != b.kind:
            continue
        if r.path != b.path and lo.path == b.path and parent_of(r.path) == parent_of(b.path):
            ops.append(Op(OpKind.MOVE_LOCAL, r.path, src=lo.path, local=lo, remote=r))
            _respell(local, key, lo.path, r.path)
            _respell(base, key, b.path, r.path)
        elif (
            lo.path != b.path
            and r.path == b.path
            and parent_of(lo.path) == parent_of(b.path)
            and (not r.is_file or (r.file_id, r.rev) == (b.file_id, b.rev))
        ):
            ops.append(Op(OpKind.MOVE_REMOTE, lo.path, src=r.path, local=lo, remote=r))
            _respell(remote, key, r.path, lo.path)
            _respell(base, key, b.path, lo.path)


def _spell_base_under_its_folders(base: dict[str, Entry]) -> None:
    """The synced entries below a folder respelled in an earlier round, spelled under the
    folder's name as recorded now. The executor records a respelled folder alone (its
    records are per path), so a file's record kept the old spelling of its folder, and a
    file renamed in case in it afterwards, on either side, looked unlike its record: the
    rename was never sent ("In sync")."""
    for key in sorted(base):  # a folder's key sorts before those below it
        entry = base[key]
        folder = parent_of(entry.path)
        recorded = base.get(path_key(folder)) if folder else None
        if recorded is not None and recorded.path != folder:
            base[key] = _moved(entry, f"{recorded.path}/{entry.path.rsplit('/', 1)[1]}")


def _respell(tree: dict[str, Entry], key: str, old: str, new: str) -> None:
    """The entry at `key`, spelled `old`, and every entry below it spelled under `new`
    (keys stay: a respelling changes no key)."""
    tree[key] = _moved(tree[key], new)
    for k, e in tree.items():
        if is_under(e.path, old):
            tree[k] = _moved(e, new + e.path[len(old) :])


def _conflict_path(path: str, device: str, day: date, taken: set[str]) -> str:
    attempt = 0
    while True:
        candidate = conflicted_copy_name(path, device, day, attempt)
        if path_key(candidate) not in taken:
            taken.add(path_key(candidate))
            return candidate
        attempt += 1


def _plan_file(
    key: str,
    lo: Entry | None,
    r: Entry | None,
    b: Entry | None,
    device: str,
    day: date,
    taken: set[str],
) -> Op | None:
    # A rev below the base's, of the same file: the server went back (restored from a
    # backup, or a listing that named the file twice). What the local copy holds may be
    # nowhere on the server now, so it is no longer "as synced": it is kept (a conflicted
    # copy when the contents differ), where it had been overwritten with the older rev.
    went_back = r is not None and b is not None and r.file_id == b.file_id and r.rev < b.rev
    local_changed = (lo is None) != (b is None) or (
        lo is not None and b is not None and (went_back or lo.content_hash != b.content_hash)
    )
    remote_changed = (r is None) != (b is None) or (
        r is not None and b is not None and (r.file_id, r.rev) != (b.file_id, b.rev)
    )
    path = (lo or r or b).path  # type: ignore[union-attr]
    if not local_changed and not remote_changed:
        return Op(OpKind.FORGET, path) if b is not None and lo is None and r is None else None
    if local_changed and not remote_changed:
        if lo is not None:
            return Op(OpKind.UPLOAD, path, local=lo, remote=r)
        return Op(OpKind.DELETE_REMOTE, path, remote=r) if r is not None else None
    # Steps act on the local spelling when there is a local file: one respelled here
    # (`Foo.txt` -> `foo.txt`) while another device edited it is not at the server's
    # spelling on a case-sensitive disk, and a step there found nothing, every round. The
    # next round respells it to match the server.
    if remote_changed and not local_changed:
        if r is not None:
            return Op(OpKind.DOWNLOAD, path, local=lo, remote=r)
        return Op(OpKind.DELETE_LOCAL, path, local=lo) if lo is not None else None
    # both sides changed
    if lo is not None and r is not None:
        if lo.content_hash == r.content_hash:
            return Op(OpKind.RECORD, r.path, local=lo, remote=r)
        copy = _conflict_path(lo.path, device, day, taken)
        return Op(OpKind.CONFLICT, path, local=lo, remote=r, copy_path=copy)
    if lo is not None:  # modified here, deleted there: keep the modification
        return Op(OpKind.UPLOAD, path, local=lo, remote=None, reason="modified-vs-deleted")
    if r is not None:  # deleted here, modified there: keep the modification
        return Op(OpKind.DOWNLOAD, r.path, local=None, remote=r, reason="deleted-vs-modified")
    return Op(OpKind.FORGET, path)


def _resolve_kind_changes(
    lw: dict[str, Entry],
    rw: dict[str, Entry],
    bw: dict[str, Entry],
    device: str,
    day: date,
    taken: set[str],
) -> tuple[list[Op], set[str]]:
    """Paths that are a file on one side and a folder on the other, or of another kind than
    the base: the trees are trimmed so the per-path rules act on them, and the local ones
    neither side can take are set aside (the ops returned, with the folders no deletion may
    take this round: they hold files moved into what was trimmed, which wait a round).
    Outermost first: what is trimmed takes everything below it along. Before, such a path
    was skipped for good, the new side never synced and a `--once` said "in sync".

    - Both sides hold it, as different kinds: the side whose whole subtree is as the base
      has it gives way. The local one: the server's subtree waits a round, so the local
      one is deleted as if the server had deleted it (only what the server holds in its
      history). The server's: the local subtree waits a round, so the server's is deleted
      as if deleted here. Neither: the local one is set aside under a conflicted copy's
      name and the base below it forgotten; the next round brings the server's and
      uploads the copy.
    - One side holds it as another kind than the base (the other deleted it, or made the
      same change): the base's entry is of a path that no longer exists, and is dropped,
      so the present side counts as new (the base below a folder is forgotten by the
      per-path rules: gone from both sides)."""
    ops: list[Op] = []
    clashes: list[str] = []
    trimmed: list[tuple[Tree, bool]] = []  # what was trimmed, and whether from the remote
    for key in sorted(set(lw) | set(rw), key=lambda k: (k.count("/"), k)):
        lo, r, b = lw.get(key), rw.get(key), bw.get(key)
        kinds = {e.kind for e in (lo, r) if e is not None}  # none: trimmed with a folder
        if lo is not None and r is not None and lo.kind != r.kind:
            clashes.append(key)
            if b is not None and b.kind == lo.kind and _as_in_base(lw, bw, key, _same_content):
                trimmed.append((_trim(rw, key), True))
            elif b is not None and b.kind == r.kind and _as_in_base(rw, bw, key, _same_rev):
                trimmed.append((_trim(lw, key), False))
            else:
                copy = _conflict_path(lo.path, device, day, taken)
                ops.append(Op(OpKind.SET_ASIDE, lo.path, local=lo, copy_path=copy))
                trimmed += [(_trim(rw, key), True), (_trim(lw, key), False)]
                _trim(bw, key)
        elif b is not None and kinds and b.kind not in kinds:
            del bw[key]
    # Files moved into what was trimmed wait a round (the next round's move detection
    # moves them), and the folders above them are not deleted meanwhile. Never one of
    # what a clash trimmed: two clashes each holding the other's (a swap, or two files of
    # one content) waited for each other for ever, with nothing planned.
    held = {k for entries, remote in trimmed for k in _moved_in(lw, rw, bw, entries, remote=remote)}
    held = {k for k in held if not any(k == c or is_under(k, c) for c in clashes)}
    holding = {a for k in held for a in ancestors(k)}  # a key's prefixes are keys
    for k in held:
        for tree in (lw, rw, bw):
            tree.pop(k, None)
    return ops, holding


def _as_in_base(
    tree: dict[str, Entry], base: Tree, key: str, same: Callable[[Entry, Entry], bool]
) -> bool:
    """Whether `tree` holds at `key` and below exactly what `base` does."""
    keys = {k for t in (tree, base) for k in t if k == key or is_under(k, key)}
    return all(
        k in tree and k in base and tree[k].kind == base[k].kind and same(tree[k], base[k])
        for k in keys
    )


def _same_content(local: Entry, base: Entry) -> bool:
    return not local.is_file or local.content_hash == base.content_hash


def _same_rev(remote: Entry, base: Entry) -> bool:
    return not remote.is_file or (remote.file_id, remote.rev) == (base.file_id, base.rev)


def _trim(tree: dict[str, Entry], key: str) -> dict[str, Entry]:
    """Drop the entry at `key` and everything below it; what was dropped."""
    return {k: tree.pop(k) for k in [k for k in tree if k == key or is_under(k, key)]}


def _moved_in(lw: Tree, rw: Tree, base: Tree, trimmed: Tree, *, remote: bool) -> set[str]:
    """The base files one side no longer holds where they were, and moved into a subtree
    trimmed from it (by the server: the same file_id; here: the same inode or content).
    They wait a round: taken for deleted, they were deleted on the other side and sent
    again as new files (their history lost), and a dozen paused the sync as a mass
    delete."""
    files = [e for e in trimmed.values() if e.is_file]
    ids = {e.file_id for e in files if e.file_id}
    inodes = {e.inode for e in files if e.inode}
    contents = {e.content_hash for e in files}
    side = rw if remote else lw
    return {
        k
        for k, b in base.items()
        if b.is_file
        and k not in side
        and (b.file_id in ids if remote else (b.inode in inodes or b.content_hash in contents))
    }


def _final_file_keys(ops: list[Op], local: Tree, remote: Tree) -> set[str]:
    """Which file paths exist after the plan (same on both sides once it has run)."""
    keys = {k for k, e in local.items() if e.is_file} | {k for k, e in remote.items() if e.is_file}
    for op in ops:
        if op.kind in (OpKind.DELETE_LOCAL, OpKind.DELETE_REMOTE, OpKind.FORGET):
            keys.discard(path_key(op.path))
        elif op.kind == OpKind.CONFLICT:
            keys.add(path_key(op.copy_path))
    return keys


def plan(
    local: Tree,
    remote: Tree,
    base: Tree,
    *,
    device: str,
    day: date,
) -> Plan:
    """Reconcile three trees into an ordered list of operations (no I/O).

    Order: respellings, set-asides, folder creations (outermost first), moves, file
    operations, then folder deletions (innermost first) — so a folder is only removed once
    it is empty. A set-aside names the local spelling a respelling made.
    Respellings go first: a folder created inside a respelled one (`Docs/sub` where the
    disk still has `docs`) would otherwise make the new spelling beside the old one on a
    case-sensitive disk, and the move to it then fails. A respelling keeps its parent, so
    it needs no folder created before it.
    """
    lw, rw, bw = dict(local), dict(remote), dict(base)
    respellings: list[Op] = []
    _detect_respellings(lw, rw, bw, respellings)
    # before moves: a move into a path about to change kind would find no folder there
    taken = set(lw) | set(rw)
    set_aside, holding = _resolve_kind_changes(lw, rw, bw, device, day, taken)
    moves: list[Op] = []
    _detect_remote_moves(lw, rw, bw, moves)
    _detect_local_moves(lw, rw, bw, moves)

    file_ops: list[Op] = []
    file_keys = {k for t in (lw, rw, bw) for k, e in t.items() if e.is_file}
    for key in sorted(file_keys):
        op = _plan_file(key, lw.get(key), rw.get(key), bw.get(key), device, day, taken)
        if op is not None:
            file_ops.append(op)

    final_files = _final_file_keys(file_ops, lw, rw)
    needed_folders = {path_key(a) for k in final_files for a in ancestors(k)}
    creates: list[Op] = []
    deletes: list[Op] = []
    folder_keys = {k for t in (lw, rw, bw) for k, e in t.items() if not e.is_file}
    # innermost first, so a surviving folder keeps every folder above it
    for key in sorted(folder_keys | needed_folders, key=lambda k: (-k.count("/"), k)):
        lo, r, b = lw.get(key), rw.get(key), bw.get(key)
        keep = key in needed_folders
        survives = keep or (lo is not None and (r is not None or b is None))
        survives = survives or (r is not None and lo is None and b is None)
        if not survives and key in holding:
            continue  # decided the next round, once what it holds has moved on
        if survives:
            needed_folders.update(path_key(a) for a in ancestors(key))
        if lo is not None and r is not None:
            if b is None:
                creates.append(Op(OpKind.RECORD, r.path, local=lo, remote=r))
        elif lo is not None:
            if b is not None and not keep:
                deletes.append(Op(OpKind.DELETE_FOLDER_LOCAL, lo.path, local=lo))
            else:
                creates.append(Op(OpKind.CREATE_FOLDER_REMOTE, lo.path, local=lo))
        elif r is not None:
            if b is not None and not keep:
                deletes.append(Op(OpKind.DELETE_FOLDER_REMOTE, r.path, remote=r))
            else:
                creates.append(Op(OpKind.CREATE_FOLDER_LOCAL, r.path, remote=r))
        elif keep:
            continue  # created implicitly with the files inside it
        elif b is not None:
            deletes.append(Op(OpKind.FORGET, b.path))
    creates.sort(key=lambda op: op.path.count("/"))
    deletes.sort(key=lambda op: -op.path.count("/"))
    return Plan(ops=respellings + set_aside + creates + moves + file_ops + deletes)
