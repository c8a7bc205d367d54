"""The local tree: walk the synced folder, trusting size + mtime + inode, hashing the rest.

A file whose size/mtime/inode match the synced base (or the scanner's cache) keeps its known
content hash; anything else is chunked and hashed. A file that changes between the two looks
around hashing (or while it is read) is still being written: it is left out of this pass and
reported as unstable, so it is never uploaded half-done. Symlinks and special files are
reported as skipped; names that clash by case or Unicode form are reported, not merged.
A download's temp file left by a client that was killed is removed once it is a day old.
"""

from __future__ import annotations

import contextlib
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from tessera.blocks import FileChangedError, FileManifest, scan_file
from tessera_client.fs import (
    TEMP_OWNER,
    TEMP_PREFIX,
    Kind,
    SafeFilesystem,
    Stat,
    racily_clean,
)
from tessera_client.ignore import IGNORE_FILE, IgnoreRules
from tessera_client.paths import ancestors, path_key, printable
from tessera_client.planner import Entry, EntryKind


@dataclass
class LocalScan:
    """The result of one pass over the folder."""

    tree: dict[str, Entry] = field(default_factory=dict)
    stats: dict[str, Stat] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unstable: list[str] = field(default_factory=list)
    #: path keys of what is there but this pass did not look at (ignored or skipped
    #: entries, folders it could not list: everything below them too). Absent from `tree`,
    #: they are not gone.
    unseen: set[str] = field(default_factory=set)
    #: path keys among `unseen` set apart for good (a symlink, a special file), not for a
    #: passing reason (unreadable, a name to change): see `set_apart_for_good`
    set_apart: set[str] = field(default_factory=set)
    #: the ignore rules this pass applied
    rules: IgnoreRules = field(default_factory=IgnoreRules)
    #: per file key in `tree`, when the content its hash names was read from the file (no
    #: later than that): what decides whether its stat may vouch for it (`racily_clean`)
    hashed_ns: dict[str, int] = field(default_factory=dict)

    def left_alone(self, key: str, path: str, *, is_dir: bool) -> bool:
        """Whether the entry at `key` (spelled `path`), missing from `tree`, is missing
        because this pass did not look at it — ignored, skipped, or inside a folder it
        could not list — rather than because it is gone. Such a path is not synced either
        way until a pass sees it: deleting it elsewhere would delete what is still here."""
        if "" in self.unseen or _at_or_below(key, self.unseen):
            return True
        return self.rules.covers(path, is_dir=is_dir)

    def set_apart_for_good(self, key: str, path: str, *, is_dir: bool) -> bool:
        """Whether the entry at `key` (spelled `path`) is out of sync until the user says
        otherwise: an ignore rule covers it, or it is (or is inside) a symlink or a special
        file. Not a passing reason such as a folder that cannot be listed right now."""
        return _at_or_below(key, self.set_apart) or self.rules.covers(path, is_dir=is_dir)


def _at_or_below(key: str, keys: set[str]) -> bool:
    """Whether `key` is one of `keys`, or lies below one of them."""
    return bool(keys) and (key in keys or any(a in keys for a in ancestors(key)))


def _is_synced(synced: Entry | None, path: str, here: Entry | Stat) -> bool:
    """Whether the entry at `path` is the synced one of its key: same spelling, or the
    same file renamed in case only (same inode)."""
    if synced is None:
        return False
    return synced.path == path or (synced.inode != 0 and synced.inode == here.inode)


def _synced_first(
    folder: str, base: dict[str, Entry]
) -> Callable[[tuple[str, Stat]], tuple[str, bool, str]]:
    """The order a folder's listing is walked in: by path key, and of two spellings of one
    key the synced one first, so it is the one kept. By name alone, a new `Docs` sorted
    before the synced `docs` and was kept in its place: its files were sent as new versions
    of the synced ones, and the synced folder was renamed on the server."""

    def order(item: tuple[str, Stat]) -> tuple[str, bool, str]:
        name, st = item
        rel = f"{folder}/{name}" if folder else name
        key = path_key(rel)
        return key, not _is_synced(base.get(key), rel, st), name

    return order


# A download killed midway leaves its temp file behind (ignored, so never synced). Like
# Syncthing's walker, a scan removes the ones another process left and nobody wrote to for
# a day: a download still running writes to its file far more often than that.
STALE_TEMP_NS = 24 * 3600 * 10**9


@dataclass
class _Cached:
    stat: Stat
    manifest: FileManifest
    hashed_ns: int  # when the file was hashed: its stat vouches for it only if not racy


#: Why a scan leaves a mount point inside the synced folder out.
MOUNT_POINT = (
    "another filesystem is mounted here: not synced (unmounted, its files would read as"
    " deleted everywhere); copy what it holds into the synced folder to sync it"
)


class Scanner:
    """Walks one synced folder; remembers manifests so unchanged files are not re-hashed."""

    def __init__(self, fs: SafeFilesystem) -> None:
        self.fs = fs
        self._cache: dict[str, _Cached] = {}

    def rules(self) -> IgnoreRules:
        """Built-in ignores plus the folder's `.tesseraignore`; OSError when it is there
        but cannot be read (a symlink, a folder, no permission)."""
        try:
            with self.fs.open_read(IGNORE_FILE) as f:
                # utf-8-sig: an editor's byte-order mark made the first rule `\ufeff*.key`,
                # which matched nothing (git skips it too)
                return IgnoreRules.from_text(f.read().decode("utf-8-sig", "replace"))
        except FileNotFoundError:
            return IgnoreRules()

    def _same_file(self, rel: str, st: Stat) -> bool:
        """Whether `rel` names the file (or folder) `st` describes: on a disk that finds a
        decomposed name by its NFC spelling too, it does; elsewhere it is absent, or
        another file."""
        try:
            return self.fs.lstat_if_any(rel) == st
        except OSError:
            return False

    def manifest(self, rel: str) -> FileManifest | None:
        """The cached manifest of a file scanned in this pass (None when unknown)."""
        cached = self._cache.get(path_key(rel))
        return cached.manifest if cached else None

    def moved(self, src: str, dst: str) -> None:
        """The file scanned at `src` was renamed `dst` (by the executor): its manifest is
        found there (an edit made here then goes up from there in this round, not the next)."""
        if (cached := self._cache.pop(path_key(src), None)) is not None:
            self._cache[path_key(dst)] = cached

    def scan(self, base: dict[str, Entry], exclude: set[str] | None = None) -> LocalScan:
        """One pass over the whole folder. `exclude`: path keys kept out (local-only copies)."""
        try:
            rules = self.rules()
        except OSError as e:
            # Without the user's rules, ignored files would be uploaded, and ignored files
            # deleted here since would be deleted on the server: this pass looks at nothing.
            out = LocalScan(unseen={""})
            reason = f"cannot read it ({e.strerror or e}); nothing syncs until it can be read"
            out.skipped.append((IGNORE_FILE, reason))
            return out
        out = LocalScan(rules=rules)
        seen: set[str] = set()
        now_ns = time.time_ns()
        home_dev = self._home_dev()
        stack = [""]
        while stack:
            folder = stack.pop()
            try:
                found, refused = self.fs.scan_folder(folder)
            except OSError as e:
                out.skipped.append((folder or ".", f"cannot list folder: {e.strerror or e}"))
                out.unseen.add(path_key(folder))
                continue
            for name, why in refused:
                rel = f"{folder}/{name}" if folder else name
                out.skipped.append((printable(rel), f"{why}; rename it to sync it"))
                # not gone: the server may hold one stored before a rule refused it
                out.unseen.add(path_key(rel))
            entries = sorted(found, key=_synced_first(folder, base))
            for name, st in entries:
                rel = f"{folder}/{name}" if folder else name
                if unicodedata.normalize("NFC", rel) != rel:
                    if not self._same_file(unicodedata.normalize("NFC", rel), st):
                        out.skipped.append((rel, "name is not in Unicode NFC form; rename it"))
                        out.unseen.add(path_key(rel))
                        continue
                    # The disk keeps names decomposed (HFS+: every name it stores, so a
                    # download written as NFC came back decomposed and was never synced
                    # again) and finds them by their NFC spelling too: the same file
                    name = unicodedata.normalize("NFC", name)
                    rel = unicodedata.normalize("NFC", rel)
                if rules.ignored(rel, is_dir=st.kind == Kind.DIR):
                    if st.kind == Kind.FILE and _stale_temp(name, st, now_ns):
                        with contextlib.suppress(OSError):  # gone, or not ours to remove
                            self.fs.remove(rel)
                    # by key: the rules match this spelling, and another device may have
                    # renamed the synced file in case only, a spelling they do not match
                    out.unseen.add(path_key(rel))
                    continue
                key = path_key(rel)
                if exclude and key in exclude:
                    continue
                if st.kind == Kind.SYMLINK:
                    out.skipped.append((rel, "symlink (never followed)"))
                    out.unseen.add(key)
                    out.set_apart.add(key)
                    continue
                if st.kind not in (Kind.FILE, Kind.DIR):
                    out.skipped.append((rel, "not a regular file or folder"))
                    out.unseen.add(key)
                    out.set_apart.add(key)
                    continue
                if st.dev and home_dev and st.dev != home_dev:
                    # A drive mounted here, once unmounted, leaves an empty folder: its
                    # files read as deleted, on the server and every device. Left alone
                    # for good, what the server holds there comes back once it is
                    # unmounted, as for a folder never synced (`set_apart_for_good`).
                    out.skipped.append((rel, MOUNT_POINT))
                    out.unseen.add(key)
                    out.set_apart.add(key)
                    continue
                if key in seen:
                    # Two spellings of one key: the one left out is not gone, nor is what
                    # is in it (a folder's synced files, deleted on the server otherwise).
                    out.unseen.add(key)
                    kept = out.tree.get(key)
                    synced = base.get(key)
                    if not (
                        kept is not None
                        and kept.is_file
                        and synced is not None
                        and not _is_synced(synced, kept.path, kept)
                    ):
                        other = kept.path if kept else key
                        out.skipped.append((rel, f"name clashes with {other!r} (case/Unicode)"))
                        continue
                    # A file that sorted first but is not the synced one would be sent as a
                    # new version of it: the synced spelling (or the renamed file, by its
                    # inode) keeps the path; with neither, both stay here, unsynced.
                    out.skipped.append((kept.path, f"name clashes with {rel!r} (case/Unicode)"))
                    del out.tree[key], out.stats[key]
                    out.hashed_ns.pop(key, None)
                    if not _is_synced(synced, rel, st):
                        out.skipped.append((rel, f"name clashes with {kept.path!r} (case/Unicode)"))
                        continue
                seen.add(key)
                if st.kind == Kind.DIR:
                    out.tree[key] = Entry(rel, EntryKind.FOLDER, inode=st.inode)
                    out.stats[key] = st
                    stack.append(rel)
                    continue
                entry = self._file_entry(rel, key, st, base.get(key), out, now_ns)
                if entry is not None:
                    out.tree[key] = entry
                    out.stats[key] = st
        self._cache = {k: v for k, v in self._cache.items() if k in out.tree}
        return out

    def _home_dev(self) -> int:
        """The filesystem the synced folder is on (0: not told)."""
        try:
            return self.fs.lstat("").dev
        except OSError:
            return 0

    def _file_entry(
        self, rel: str, key: str, st: Stat, base: Entry | None, out: LocalScan, now_ns: int
    ) -> Entry | None:
        # A stat vouches for content only when the file was not modified just before it was
        # taken (`racily_clean`): on a filesystem with 1-2 s mtimes a same-size save right
        # after hashing kept size and mtime, and the edit was never uploaded.
        cached = self._cache.get(key)
        if (
            cached is not None
            and _same(cached.stat, st)
            and not racily_clean(st.mtime_ns, cached.hashed_ns)
        ):
            m = cached.manifest
            out.hashed_ns[key] = cached.hashed_ns
            return Entry(
                rel, EntryKind.FILE, m.content_hash, m.size, mtime_ns=st.mtime_ns, inode=st.inode
            )
        if (
            base is not None
            and base.is_file
            and (base.size, base.mtime_ns, base.inode) == (st.size, st.mtime_ns, st.inode)
            and not racily_clean(st.mtime_ns, now_ns)
        ):
            # a recorded stat was vouched for when it was recorded, so it still holds now
            out.hashed_ns[key] = now_ns
            return Entry(
                rel,
                EntryKind.FILE,
                base.content_hash,
                st.size,
                mtime_ns=st.mtime_ns,
                inode=st.inode,
            )
        try:
            disk = self.fs.local_path(rel)  # checks the folders on the way again
            if disk is None:
                out.skipped.append((rel, "cannot be hashed on this filesystem"))
                out.unseen.add(key)
                return None
            manifest = scan_file(disk)
            after = self.fs.lstat(rel)
        except (FileChangedError, FileNotFoundError):
            out.unstable.append(rel)
            return None
        except OSError as e:
            out.skipped.append((rel, f"cannot read: {e.strerror or e}"))
            out.unseen.add(key)
            return None
        if not _same(after, st):
            out.unstable.append(rel)
            return None
        self._cache[key] = _Cached(st, manifest, now_ns)  # read after now_ns: no later
        out.hashed_ns[key] = now_ns
        return Entry(
            rel,
            EntryKind.FILE,
            manifest.content_hash,
            manifest.size,
            mtime_ns=st.mtime_ns,
            inode=st.inode,
        )


def _same(a: Stat, b: Stat) -> bool:
    return (a.size, a.mtime_ns, a.inode) == (b.size, b.mtime_ns, b.inode)


def _stale_temp(name: str, st: Stat, now_ns: int) -> bool:
    """Whether `name` is a download's temp file that another process (its `TEMP_OWNER` is
    in the name) left and nobody has written to for STALE_TEMP_NS."""
    if not name.startswith(TEMP_PREFIX):
        return False
    owner = name[len(TEMP_PREFIX) :].split("-", 1)[0]
    return owner != TEMP_OWNER and now_ns - st.mtime_ns > STALE_TEMP_NS
