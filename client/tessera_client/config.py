"""Everything a device keeps lives under `TESSERA_HOME` (default `~/.tessera`).

Layout of a home:

    config.json   server URL, device name, synced folder, tunables (read once into `Settings`)
    tokens.json   refresh + access token, mode 0600
    state.db      the SQLite state database (see `state.py`)
    logs/         the client's log files

The home is outside the synced folder, so several devices can run on one machine with
different homes.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from tessera_client.reporting import SyncError

DEFAULT_HOME = "~/.tessera"


def home_dir() -> Path:
    """The device's home: `$TESSERA_HOME` or `~/.tessera`."""
    return Path(os.environ.get("TESSERA_HOME") or DEFAULT_HOME).expanduser().resolve()


@dataclass
class Settings:
    """The device's settings, read once from `config.json` (every field has a default)."""

    server_url: str = ""
    email: str = ""
    device_name: str = field(default_factory=socket.gethostname)
    folder: str = ""
    debounce_ms: int = 100
    scan_interval_s: float = 60.0
    mass_delete_files: int = 50
    mass_delete_fraction: float = 0.25
    mass_delete_min: int = 10
    mass_delete_window_s: float = 600.0  # deletions this recent count together
    transfer_threads: int = 8
    longpoll_timeout_s: int = 60
    batch_files: int = 1000  # files per upload session: the server's max_files_per_upload
    batch_blocks: int = 10_000  # blocks per request: the server's max_blocks_per_request
    outage_wait_s: float = 120.0
    retry_attempts: int = 8

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settings:
        """Build settings from a parsed config, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Tokens:
    """The credentials the device holds."""

    refresh_token: str
    access_token: str = ""
    expires_at: float = 0.0


class Home:
    """One device's home directory: settings, tokens, state database and logs."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = (path or home_dir()).resolve()

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def tokens_file(self) -> Path:
        return self.path / "tokens.json"

    @property
    def state_file(self) -> Path:
        return self.path / "state.db"

    @property
    def log_dir(self) -> Path:
        return self.path / "logs"

    def ensure(self) -> None:
        """Create the home (mode 0700) and its log folder."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_dir.mkdir(exist_ok=True)

    def load_settings(self) -> Settings:
        """Read `config.json` (defaults when absent); `TESSERA_DEVICE` overrides the name.
        `DamagedFileError` when it cannot be read as one."""
        data: dict[str, Any] = {}
        if self.config_file.exists():
            data = _read_json(self.config_file, "fix it or delete it, then `tessera login`")
        try:
            settings = Settings.from_json(data)
        except (TypeError, ValueError) as e:
            raise DamagedFileError(
                f"{self.config_file} is damaged ({e}); fix it or delete it, then `tessera login`"
            ) from None
        if os.environ.get("TESSERA_DEVICE"):
            settings.device_name = os.environ["TESSERA_DEVICE"]
        return settings

    def save_settings(self, settings: Settings) -> None:
        """Write `config.json` atomically."""
        self.ensure()
        _write_private(self.config_file, json.dumps(asdict(settings), indent=2))

    def load_tokens(self) -> Tokens | None:
        """The stored tokens, or None when logged out; `DamagedFileError` when they cannot
        be read."""
        if not self.tokens_file.exists():
            return None
        todo = "delete it and run `tessera login`"
        data = _read_json(self.tokens_file, todo)
        try:
            return Tokens(**data)
        except TypeError as e:
            raise DamagedFileError(f"{self.tokens_file} is damaged ({e}); {todo}") from None

    def save_tokens(self, tokens: Tokens) -> None:
        """Store tokens with mode 0600 (written to a 0600 temp file, then renamed)."""
        self.ensure()
        _write_private(self.tokens_file, json.dumps(asdict(tokens)))

    def clear_tokens(self) -> bool:
        """Forget the tokens; True when there were any."""
        try:
            self.tokens_file.unlink()
        except FileNotFoundError:
            return False
        return True


class DamagedFileError(Exception):
    """A file of the client's home that cannot be read as what it should hold: the message
    names it and says what to do."""


def _read_json(path: Path, todo: str) -> dict[str, Any]:
    """The JSON object in `path`; `DamagedFileError` (saying `todo`) for anything else."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFileError(f"{path} is damaged ({e}); {todo}") from None
    if not isinstance(data, dict):
        raise DamagedFileError(f"{path} is damaged (not a JSON object); {todo}")
    return data


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def hold_device_lock(home: Home) -> IO[str]:
    """Lock this device's state for as long as the returned file is open, or raise SyncError.

    Two syncs of one device (the daemon and a `tessera sync --once` beside it) both uploaded
    the same edit: the second got a 409 and renamed the file to a conflicted copy, and the
    next round took that rename for the user's and renamed the file on every device. POSIX
    only: elsewhere the lock is advisory and not taken. `tessera logout` takes it too: a
    running sync would write back the tokens it holds at its next refresh.
    """
    home.ensure()
    handle = open(home.path / "sync.lock", "a+", encoding="utf-8")  # noqa: SIM115 (held open)
    try:
        import fcntl
    except ImportError:  # Windows
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip()
        handle.close()
        holder = f"pid {pid}" if pid else "another process"
        raise SyncError(
            f"this device ({home.path}) is already syncing ({holder}); stop that sync "
            "first, or use another TESSERA_HOME"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
