"""The watcher: OS file events (watchdog), debounced, wake the sync loop.

Events are not trusted for content — they only say "look soon"; the round that follows
scans the folder (cheaply: size + mtime + inode) and hashes only what changed. Events on
the executor's own temp files, and on what the ignore rules cover, are ignored. A watch can
fail or go away without a word (inotify's limits, the folder deleted or unmounted): the
daemon asks `Watcher.alive` and `Watcher.unwatched_folders`, and its full scans stand in.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from tessera_client.fs import TEMP_PREFIX
from tessera_client.ignore import IGNORE_FILE, IgnoreRules

MAX_SETTLE_S = 1.0

# watchdog's warnings ("Inotify queue overflowed" under a burst of changes) went to stderr
# through logging's last resort, across the daemon's status display. Nothing is lost when
# they are true: the events before them still wake a round, and each round scans the tree.
logging.getLogger("watchdog").addHandler(logging.NullHandler())


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.event_type in ("deleted", "moved") and event.src_path == str(self.watcher.folder):
            self.watcher.lost = True  # its watch went with it
        if event.is_directory and event.event_type == "modified":
            return  # a folder's listing changed: its entries report their own events
        paths = [str(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
        if paths and all(self.watcher.unseen(p, is_dir=event.is_directory) for p in paths):
            return
        self.watcher.touch()


class Watcher:
    """Watches a folder tree and sets `wake` when something changes in it."""

    def __init__(
        self,
        folder: Path,
        wake: threading.Event,
        *,
        debounce_s: float = 0.15,
        rules: Callable[[], IgnoreRules] = IgnoreRules,
    ) -> None:
        self.folder = folder
        self.wake = wake
        self.debounce_s = debounce_s
        #: the ignore rules the scan applies now (the engine's, set as each scan reads
        #: them): a busy ignored folder (a build's output) had woken a round of the whole
        #: tree each second
        self.rules = rules
        self._last = 0.0
        self._observer: BaseObserver | None = None
        self._watched: tuple[int, int] | None = None  # the folder's (device, inode)
        #: the watched folder itself was deleted or moved away (a folder made at its path
        #: may take its inode number again, so the identity alone does not tell)
        self.lost = False

    def unseen(self, path: str, *, is_dir: bool) -> bool:
        """Whether a change at `path` is one no scan would see: the executor's temp files,
        and what the ignore rules cover (but the rules' own file, and anything outside)."""
        name = Path(path).name
        if name.startswith(TEMP_PREFIX):
            return True
        try:
            rel = Path(path).relative_to(self.folder).as_posix()
        except ValueError:
            return False
        return rel not in (".", IGNORE_FILE) and self.rules().covers(rel, is_dir=is_dir)

    def start(self) -> None:
        """Start watching. OSError when the OS will not watch the folder (inotify's
        instance limit, met as the observer is made; its watch limit, met on the folder),
        with nothing left open."""
        self.stop()
        identity = _identity(self.folder)
        if identity is None:  # gone: nothing to make an inotify instance for
            raise FileNotFoundError(errno.ENOENT, "no such folder", str(self.folder))
        observer = Observer()  # an inotify instance: made here, so a failure is start's
        try:
            observer.schedule(_Handler(self), str(self.folder), recursive=True)
            observer.start()
        except BaseException:
            observer.stop()  # the instance counts against the user's 128 until closed
            raise
        self._observer, self._watched, self.lost = observer, identity, False

    def alive(self) -> bool:
        """Whether the watch still covers the folder: watchdog ends its thread when the
        folder is deleted, and an unmounted or replaced folder keeps a thread watching
        what is gone. Either way no event would ever come again."""
        observer = self._observer
        if observer is None or self.lost or not observer.is_alive():
            return False
        if not all(emitter.is_alive() for emitter in observer.emitters):
            return False
        return _identity(self.folder) == self._watched

    def unwatched_folders(self) -> int | None:
        """How many folders of the tree have no watch (Linux; None elsewhere or unknown).
        watchdog skips a subfolder it cannot watch without a word (inotify's watch limit,
        per user): a change in one woke nothing until the next full scan."""
        held = inotify_watches()
        if held is None or self._observer is None:
            return None
        folders = 1 + sum(
            1
            for root, dirs, _ in os.walk(self.folder)
            for d in dirs
            # watchdog follows no symlink, and no limit keeps it from a folder it may not
            # read: neither is one a raised limit would let it watch
            if not os.path.islink(path := os.path.join(root, d)) and os.access(path, os.R_OK)
        )
        return max(0, folders - held)

    def stop(self) -> None:
        """Stop watching."""
        observer, self._observer, self._watched = self._observer, None, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    def touch(self) -> None:
        """An event arrived."""
        self._last = time.monotonic()
        self.wake.set()

    def settle(self) -> None:
        """Wait until no event arrived for `debounce_s` (at most MAX_SETTLE_S in total)."""
        deadline = time.monotonic() + MAX_SETTLE_S
        while True:
            quiet_for = time.monotonic() - self._last
            if quiet_for >= self.debounce_s or time.monotonic() >= deadline:
                return
            time.sleep(min(self.debounce_s - quiet_for, deadline - time.monotonic()))


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def inotify_watches() -> int | None:
    """The inotify watches this process holds (Linux's /proc/self/fdinfo: a line per
    watch), or None where that cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        held = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                    continue
                with open(f"/proc/self/fdinfo/{fd}") as info:
                    held += sum(line.startswith("inotify wd:") for line in info)
            except OSError:
                continue  # closed meanwhile
        return held
    except OSError:
        return None
