"""KeyService on a 0600 key file in the local state dir (the local stand-in for KMS)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from tessera.adapters.local.secret_files import check_private, load_or_create, write_private
from tessera.ports import KeyService

SECRET_BYTES = 32


def _encode(state: dict[str, Any]) -> bytes:
    return json.dumps(state, indent=2, sort_keys=True).encode() + b"\n"


def _new_state() -> bytes:
    return _encode({"current": 1, "versions": {"1": _new_secret()}})


def _new_secret() -> str:
    return base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


class KeyFileKeyService(KeyService):
    """Versioned 32-byte block-key secrets in a JSON key file, mode 0600.

    The file is created on first start; a file readable by group or others is refused.
    `rotate()` adds a new version that new blocks use; old versions stay readable.
    Another process's rotation is picked up the next time the file's mtime changes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime_ns = -1
        self._current = 0
        self._versions: dict[int, bytes] = {}
        self._reload(load_or_create(self.path, _new_state))

    def _reload(self, raw: bytes) -> None:
        try:
            state = json.loads(raw)
            versions = {int(v): base64.b64decode(s) for v, s in state["versions"].items()}
            current = int(state["current"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path} is not a Tessera key file: {exc}") from exc
        if current not in versions or any(len(s) != SECRET_BYTES for s in versions.values()):
            raise ValueError(f"{self.path}: every secret must be {SECRET_BYTES} bytes")
        self._versions, self._current = versions, current

    def _refresh(self) -> None:
        st = self.path.stat()
        if st.st_mtime_ns != self._mtime_ns:
            check_private(self.path)
            self._reload(self.path.read_bytes())
            self._mtime_ns = st.st_mtime_ns

    def current_version(self) -> int:
        """The version new blocks are encrypted under (the newest one)."""
        with self._lock:
            self._refresh()
            return self._current

    def _load_secret(self, version: int) -> bytes:
        with self._lock:
            if version not in self._versions:
                self._refresh()
            return self._versions[version]

    def versions(self) -> list[int]:
        """Every key version the file holds, oldest first."""
        with self._lock:
            self._refresh()
            return sorted(self._versions)

    def rotate(self) -> int:
        """Add a new secret version and make it current; returns the new version."""
        with self._lock:
            self._refresh()
            new = max(self._versions) + 1
            state = {
                "current": new,
                "versions": {
                    **{
                        str(v): base64.b64encode(s).decode("ascii")
                        for v, s in self._versions.items()
                    },
                    str(new): _new_secret(),
                },
            }
            write_private(self.path, _encode(state), exclusive=False)
            self._mtime_ns = -1
            self._refresh()
            return new
