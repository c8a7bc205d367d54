"""What the client never syncs: `.tesseraignore` (gitignore syntax) plus built-in rules."""

from __future__ import annotations

import pathspec

from tessera_client.fs import TEMP_PREFIX

IGNORE_FILE = ".tesseraignore"

BUILTIN_PATTERNS = [
    f"{TEMP_PREFIX}*",  # the executor's own temp files
    ".tessera*",  # .tesseraignore itself and any client bookkeeping
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    "~$*",  # Office lock files
    "*.swp",
    "*.swx",
    ".~lock.*#",  # LibreOffice lock files
]


class IgnoreRules:
    """Built-in ignores plus the patterns of a `.tesseraignore` file."""

    def __init__(self, user_patterns: list[str] | None = None) -> None:
        self._spec = pathspec.GitIgnoreSpec.from_lines([*BUILTIN_PATTERNS, *(user_patterns or [])])

    @classmethod
    def from_text(cls, text: str) -> IgnoreRules:
        """Rules from the text of a `.tesseraignore` file."""
        return cls(text.splitlines())

    def ignored(self, rel: str, *, is_dir: bool = False) -> bool:
        """True when `rel` (relative POSIX path) must not be synced."""
        return bool(self._spec.match_file(rel + "/" if is_dir else rel))
