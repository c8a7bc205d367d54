"""End-to-end fixtures: the local cloud (in-process or a subprocess) and real client devices.

A `Device` is one TESSERA_HOME + one synced folder, driven through the real `tessera`
command in subprocesses (`sync --once`, or a daemon).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera_client.api import Api, RetryPolicy
from tessera_client.api import sign_in as client_sign_in
from tessera_client.config import Home
from tessera_client.engine import SyncEngine
from tessera_client.fs import FOLDER_MARKER, PARTIAL_PREFIX

PASSWORD = "correct horse battery"
_users = itertools.count(1)
REPO = Path(__file__).resolve().parents[2]


def tessera_cmd(*args: str) -> list[str]:
    """The `tessera` command line."""
    return [sys.executable, "-m", "tessera_client", *args]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under `folder`, by relative path, but the
    client's marker of a synced folder (`FOLDER_MARKER`)."""
    out: dict[str, bytes | None] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel != FOLDER_MARKER:
            out[rel] = None if p.is_dir() else p.read_bytes()
    return out


@dataclass
class Device:
    """One client device: its own home and folder, driven through the `tessera` command."""

    name: str
    root: Path
    server: str
    email: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.root / f"home-{self.name}"

    @property
    def folder(self) -> Path:
        return self.root / f"folder-{self.name}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ, TESSERA_HOME=str(self.home), TESSERA_DEVICE=self.name)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "client"), str(REPO / "layers")])
        env.pop("XDG_RUNTIME_DIR", None)
        return env

    def run(
        self,
        *args: str,
        check: int | None = 0,
        timeout: float = 120,
        prefix: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        """`tessera ARGS` on this device (behind the command `prefix`, if any)."""
        r = subprocess.run(
            [*prefix, *tessera_cmd(*args)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check is not None:
            assert r.returncode == check, (
                f"{self.name}: tessera {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
            )
        return r

    def login(self) -> None:
        self.run("login", "--server", self.server, "--email", self.email, "--password", PASSWORD)

    def sync(
        self, *extra: str, check: int | None = 0, prefix: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.run("sync", str(self.folder), "--once", *extra, check=check, prefix=prefix)

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def stats(self) -> dict[str, int]:
        return dict(json.loads((self.home / "logs" / "last-sync.json").read_text()))

    def pending_sent(self) -> int:
        """Blocks the device's uploads in flight have sent so far (0 before its state
        database has the table, or while it is locked)."""
        try:
            with contextlib.closing(sqlite3.connect(self.home / "state.db")) as db:
                return int(db.execute("SELECT count(*) FROM pending_sent").fetchone()[0])
        except sqlite3.Error:
            return 0

    def partial_bytes(self) -> int:
        """What the device's partial downloads hold so far, in bytes."""
        if not self.folder.is_dir():
            return 0
        return sum(
            p.stat().st_size for p in self.folder.iterdir() if p.name.startswith(PARTIAL_PREFIX)
        )

    def sync_killed_midway(self, sent: int = 1, *, progress: str = "pending_sent") -> int:
        """`tessera sync --once`, killed once the device's `progress` (a method: the blocks
        its uploads sent, by default, or `partial_bytes`) reached `sent` (or it ended
        first, or after 60 s); that figure by then."""
        done_so_far: Callable[[], int] = getattr(self, progress)
        self.folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            tessera_cmd("sync", str(self.folder), "--once", "-q"),
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        done = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and done < sent:
            done = done_so_far()
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        return done

    def start_daemon(self) -> subprocess.Popen[str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            tessera_cmd("sync", str(self.folder)),
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stderr:
                proc.stderr.close()
        self.procs.clear()

    def write(self, rel: str, data: bytes | str) -> Path:
        p = self.folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        p.write_bytes(data)
        return p


@dataclass
class Cloud:
    """A running local cloud: its URL and how to add users."""

    url: str
    add_user: Any
    root: Path
    conninfo: str = ""  # its metadata database (in-process clouds)

    def user(self) -> str:
        email = f"user{next(_users)}-{os.getpid()}@e2e.test"
        self.add_user(email)
        return email


@pytest.fixture(scope="session")
def inproc_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """The local cloud in this process (fast to reuse; clients are still subprocesses)."""
    from tessera.adapters.local.identity import LocalUsers
    from tessera.local.cloud import LocalCloud

    root = tmp_path_factory.mktemp("cloud")
    cloud = LocalCloud(root / "state", port=0)
    url = cloud.start()
    users = LocalUsers(cloud.conninfo)
    try:
        yield Cloud(url, lambda email: users.add(email, PASSWORD), root, cloud.conninfo)
    finally:
        cloud.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CloudProcess:
    """`tessera local up` in a subprocess, restartable on the same port and state."""

    def __init__(self, state: Path) -> None:
        self.state, self.port = state, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        env["TESSERA_DOWNLOAD_PAGE_BLOCKS"] = "2"  # a file of 3+ blocks comes in pages
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "client"), str(REPO / "layers")])
        self.state.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.state.parent / "cloud.log", "ab")  # noqa: SIM115 (handed to the child)
        self.proc = subprocess.Popen(
            tessera_cmd("local", "up", "--state", str(self.state), "--port", str(self.port)),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                log_text = (self.state.parent / "cloud.log").read_text(errors="replace")
                raise AssertionError(f"the local cloud exited:\n{log_text[-3000:]}")
            time.sleep(0.2)
        raise AssertionError("the local cloud did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def cloud_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CloudProcess, Cloud]]:
    """The local cloud as a real subprocess (restartable; embedded PostgreSQL in its state)."""
    root = tmp_path_factory.mktemp("cloudproc")
    proc = CloudProcess(root / "state")
    proc.start()

    def add_user(email: str) -> None:
        r = subprocess.run(
            tessera_cmd(
                "local", "adduser", email, "--password", PASSWORD, "--state", str(proc.state)
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr

    try:
        yield proc, Cloud(proc.url, add_user, root)
    finally:
        proc.stop()


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[list[Device]]:
    """Devices made during a test (daemons stopped at the end)."""
    made: list[Device] = []
    yield made
    for d in made:
        d.stop()


def make_device(
    devices: list[Device], tmp_path: Path, cloud: Cloud, name: str, email: str, *, cli: bool = False
) -> Device:
    """A logged-in device (through `tessera login` with `cli`, else the same steps in-process)."""
    d = Device(name, tmp_path, cloud.url, email)
    if cli:
        d.login()
    else:
        sign_in(cloud, email, Home(d.home), name)
    devices.append(d)
    return d


def sign_in(cloud: Cloud, email: str, home: Home, name: str) -> Home:
    """`tessera login` in-process: tokens and settings of device `name` in `home`."""
    client_sign_in(home, cloud.url, email, PASSWORD, name)
    return home


def synced_on_both(a: SyncEngine, b: SyncEngine, rel: str, text: str) -> None:
    """Write `rel` on device `a` and sync it to `b`: a file both devices have."""
    (a.folder / rel).write_text(text)
    a.run_once()
    b.run_once()


def kept_both(name: str, device: str, theirs: str, mine: str) -> dict[str, bytes | None]:
    """The folder after a conflict on `name`: the server's version under the name, the
    edit of `device` beside it as its conflicted copy of today."""
    stem, _, ext = name.rpartition(".")
    copy = f"{stem} ({device}'s conflicted copy {date.today()}).{ext}"
    return {name: theirs.encode(), copy: mine.encode()}


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> float:
    """Poll until `predicate()` is true; the time it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s")


@pytest.fixture
def engines(inproc_cloud: Cloud, tmp_path: Path) -> Iterator[tuple[SyncEngine, SyncEngine]]:
    """Two devices of one user, as sync engines in this process."""
    email = inproc_cloud.user()
    made = []
    for name in ("A", "B"):
        home = sign_in(inproc_cloud, email, Home(tmp_path / f"home-{name}"), name)
        folder = tmp_path / f"folder-{name}"
        folder.mkdir()
        policy = RetryPolicy(attempts=2, base=0.01, cap=0.05)
        api = Api(inproc_cloud.url, home, policy=policy)
        made.append(SyncEngine(home, home.load_settings(), folder, api))
    yield made[0], made[1]
    for engine in made:
        engine.close()
