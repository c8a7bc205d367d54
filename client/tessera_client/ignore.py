"""What the client never syncs: `.tesseraignore` (gitignore syntax) plus built-in rules."""

from __future__ import annotations

import fnmatch
import re

import pathspec

from tessera_client.fs import FOLDER_MARKER, TEMP_PREFIX

IGNORE_FILE = ".tesseraignore"

# What programs leave behind on their own: never synced, and removed with a folder deleted
# elsewhere. The client's own names only: `.tessera*` also held the user's `.tesseract` or
# `.tessera-notes.md`, never synced, and deleted with such a folder, the only copy.
LITTER_PATTERNS = [
    f"{TEMP_PREFIX}*",  # the executor's own temp files
    FOLDER_MARKER,
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    "~$*",  # Office lock files
    ".~lock.*#",  # LibreOffice lock files
]
# Never synced either, but written by the user (a `.tesseraignore` in a subfolder too),
# holding a device's home or a local cloud's state, or an editor's unsaved work (vim's swap
# files, which it recovers a crashed session from: removed with a folder deleted
# elsewhere, they were its only copy): kept
BUILTIN_PATTERNS = [*LITTER_PATTERNS, IGNORE_FILE, ".tessera", "*.swp", "*.swx"]


# The built-in patterns name files and folders at any depth (none holds a '/'), so one
# regex tests each name of a path against all of them. Through pathspec they cost a pattern
# match each for every file of every scan: over half of a scan of unchanged files.
_BUILTIN = re.compile("|".join(fnmatch.translate(p) for p in BUILTIN_PATTERNS))
_LITTER = re.compile("|".join(fnmatch.translate(p) for p in LITTER_PATTERNS))


class IgnoreRules:
    """Built-in ignores plus the patterns of a `.tesseraignore` file. A built-in ignore
    holds whatever the file says (`!.DS_Store` does not sync them)."""

    def __init__(self, user_patterns: list[str] | None = None) -> None:
        lines = [line for line in user_patterns or [] if line.strip()]
        self._spec = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None

    @classmethod
    def from_text(cls, text: str) -> IgnoreRules:
        """Rules from the text of a `.tesseraignore` file."""
        return cls(text.splitlines())

    def ignored(self, rel: str, *, is_dir: bool = False) -> bool:
        """True when `rel` (relative POSIX path) must not be synced."""
        if any(_BUILTIN.match(name) for name in rel.split("/")):
            return True
        return self._spec is not None and bool(self._spec.match_file(rel + "/" if is_dir else rel))

    @staticmethod
    def is_litter(name: str) -> bool:
        """Whether a file named `name` is what programs leave behind on their own (Finder's
        `.DS_Store`, Office lock files, editor swap files, a killed download's temp file):
        built-in ignores, never the user's work."""
        return _LITTER.match(name) is not None

    def covers(self, rel: str, *, is_dir: bool = False) -> bool:
        """True when `rel` or a folder above it is ignored: a scan never looks inside an
        ignored folder, so nothing below it is synced whatever the patterns say of it."""
        parts = rel.split("/")
        above = ("/".join(parts[:i]) for i in range(1, len(parts)))
        return any(self.ignored(a, is_dir=True) for a in above) or self.ignored(rel, is_dir=is_dir)
