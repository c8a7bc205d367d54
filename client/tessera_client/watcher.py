"""The watcher: OS file events (watchdog), debounced, wake the sync loop.

Events are not trusted for content — they only say "look soon"; the round that follows
scans the folder (cheaply: size + mtime + inode) and hashes only what changed. Events on
the executor's own temp files are ignored.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from tessera_client.fs import TEMP_PREFIX

MAX_SETTLE_S = 1.0


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type == "modified":
            return  # a folder's listing changed: its entries report their own events
        paths = [event.src_path, getattr(event, "dest_path", "")]
        names = [Path(str(p)).name for p in paths if p]
        if names and all(n.startswith(TEMP_PREFIX) for n in names):
            return
        self.watcher.touch()


class Watcher:
    """Watches a folder tree and sets `wake` when something changes in it."""

    def __init__(self, folder: Path, wake: threading.Event, *, debounce_s: float = 0.15) -> None:
        self.folder = folder
        self.wake = wake
        self.debounce_s = debounce_s
        self._last = 0.0
        self._observer = Observer()
        self._observer.schedule(_Handler(self), str(folder), recursive=True)

    def start(self) -> None:
        """Start watching."""
        self._observer.start()

    def stop(self) -> None:
        """Stop watching."""
        self._observer.stop()
        self._observer.join(timeout=5)

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
