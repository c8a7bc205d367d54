"""Sync client benchmarks against the local cloud (issue 4 targets).

- propagation latency with two daemons: a new 1 MiB file closed on A is complete on B
  (p50 ≤ 0.5 s, p95 ≤ 1.0 s);
- a one-byte edit in the middle of a 256 MiB synced file uploads ≤ 8 MiB of blocks, another
  device downloads ≤ 8 MiB of them (the rest read from its copy), and a rename uploads none;
- initial sync of 1,000 x 150 KiB files + one 1 GiB file: wall time and bytes sent;
- peak client RSS while `tessera sync --once` uploads a 4 GiB file (≤ 200 MB).

`TESSERA_BENCH_SCALE` shrinks the data (e.g. 0.05 for a quick run).
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    Figure,
    GiB,
    MiB,
    human_bytes,
    peak_rss,
    print_figures,
    random_file,
    run_quiet,
    scale,
    scaled,
)

PASSWORD = "bench password 1"
REPO = Path(__file__).resolve().parents[1]


def _env(home: Path, device: str) -> dict[str, str]:
    env = dict(os.environ, TESSERA_HOME=str(home), TESSERA_DEVICE=device)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "client"), str(REPO / "layers")])
    return env


def _login(url: str, home: Path, email: str, device: str) -> None:
    from tessera_client.api import sign_in
    from tessera_client.config import Home

    sign_in(Home(home), url, email, PASSWORD, device)


def _engine(url: str, home: Path, folder: Path, device: str) -> Any:
    from tessera_client.api import Api
    from tessera_client.config import Home
    from tessera_client.engine import SyncEngine

    h = Home(home)
    settings = h.load_settings()
    return SyncEngine(h, settings, folder, Api(url, h), allow_mass_delete=True)


def latency(url: str, work: Path, email: str, samples: int) -> list[Figure]:
    """Two daemons; new 1 MiB files on A, time until complete on B."""
    homes = {d: work / f"lat-home-{d}" for d in "AB"}
    folders = {d: work / f"lat-folder-{d}" for d in "AB"}
    procs = []
    for d in "AB":
        _login(url, homes[d], email, d)
        folders[d].mkdir(parents=True)
        procs.append(
            subprocess.Popen(
                _tessera("sync", folders[d], "-q"),
                env=_env(homes[d], d),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    times: list[float] = []
    try:
        time.sleep(3.0)  # both daemons up, first round done, long-polling
        for i in range(samples):
            payload = os.urandom(MiB)
            src = folders["A"] / f"lat-{i}.bin"
            with src.open("wb") as f:
                f.write(payload)
            start = time.perf_counter()
            dst = folders["B"] / src.name
            deadline = start + 30
            while time.perf_counter() < deadline:
                try:
                    if dst.stat().st_size == MiB and dst.read_bytes() == payload:
                        break
                except FileNotFoundError:
                    pass
                time.sleep(0.002)
            times.append(time.perf_counter() - start)
            time.sleep(0.3)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    times.sort()
    p50 = statistics.median(times)
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return [
        Figure(
            f"propagation 1 MiB A→B p50 (n={len(times)})", f"{p50:.3f} s", "≤ 0.5 s", p50 <= 0.5
        ),
        Figure("propagation 1 MiB A→B p95", f"{p95:.3f} s", "≤ 1.0 s", p95 <= 1.0),
    ]


def edit_and_rename(url: str, work: Path, email: str) -> list[Figure]:
    """One byte changed in the middle of a big synced file, followed by another device;
    then a rename."""
    size = scaled(256 * MiB)
    home, folder = work / "edit-home", work / "edit-folder"
    other_home, other_folder = work / "follow-home", work / "follow-folder"
    _login(url, home, email, "E")
    _login(url, other_home, email, "F")
    folder.mkdir()
    other_folder.mkdir()
    shutil.copyfile(random_file(f"sync-edit-{size}.bin", size), folder / "big.bin")
    engine = _engine(url, home, folder, "E")
    other = _engine(url, other_home, other_folder, "F")
    try:
        engine.run_once()
        started = time.perf_counter()
        other.run_once()
        whole_s = time.perf_counter() - started
        before = engine.transfers.stats.block_bytes_up
        with (folder / "big.bin").open("r+b") as f:
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0xFF]))
        engine.run_once()
        edit = engine.transfers.stats.block_bytes_up - before
        down_before = other.transfers.stats.block_bytes_down
        started = time.perf_counter()
        other.run_once()
        follow_s = time.perf_counter() - started
        down = other.transfers.stats.block_bytes_down - down_before
        before = engine.transfers.stats.block_bytes_up
        (folder / "big.bin").rename(folder / "renamed.bin")
        engine.run_once()
        rename = engine.transfers.stats.block_bytes_up - before
    finally:
        engine.close()
        other.close()
    return [
        Figure(
            f"1-byte edit in {human_bytes(size)}: block bytes uploaded",
            human_bytes(edit),
            "≤ 8 MiB",
            edit <= 8 * MiB,
        ),
        Figure(
            "the edit on another device: block bytes downloaded",
            human_bytes(down),
            "≤ 8 MiB",
            down <= 8 * MiB,
        ),
        Figure(
            "the edit on another device: sync time / the whole file's first sync",
            f"{follow_s:.2f} s / {whole_s:.2f} s",
        ),
        Figure("rename: block bytes uploaded", human_bytes(rename), "0", rename == 0),
    ]


def initial_sync(url: str, work: Path, email: str) -> list[Figure]:
    """1,000 x 150 KiB + one 1 GiB file, from an empty account."""
    count = max(50, int(1000 * scale()))
    big = scaled(GiB)
    home, folder = work / "init-home", work / "init-folder"
    _login(url, home, email, "I")
    (folder / "small").mkdir(parents=True)
    for i in range(count):
        (folder / "small" / f"f{i:04}.bin").write_bytes(os.urandom(150 * 1024))
    shutil.copyfile(random_file(f"sync-init-{big}.bin", big), folder / "big.bin")
    data = count * 150 * 1024 + big
    engine = _engine(url, home, folder, "I")
    try:
        start = time.perf_counter()
        engine.run_once()
        wall = time.perf_counter() - start
        sent = engine.transfers.stats.block_bytes_up
    finally:
        engine.close()
    saved = work / "init-get"
    saved.mkdir()
    start = time.perf_counter()
    run_quiet(_tessera("get", "small", "--to", saved), _env(home, "I"))
    got = time.perf_counter() - start
    return [
        Figure(
            f"initial sync {count} x 150 KiB + {human_bytes(big)}: wall",
            f"{wall:.1f} s ({human_bytes(data / wall)}/s)",
        ),
        Figure("initial sync: block bytes sent", f"{human_bytes(sent)} of {human_bytes(data)}"),
        Figure(f"`tessera get` of the {count} x 150 KiB folder: wall", f"{got:.1f} s"),
    ]


def _tessera(*args: str | Path) -> list[str | Path]:
    """The command line running the client's CLI with this interpreter."""
    return [sys.executable, "-m", "tessera_client", *args]


def memory(url: str, work: Path, email: str) -> list[Figure]:
    """Peak RSS of `tessera sync --once` uploading one huge file."""
    size = scaled(4 * GiB)
    home, folder = work / "mem-home", work / "mem-folder"
    _login(url, home, email, "M")
    folder.mkdir()
    source = random_file(f"sync-mem-{size}.bin", size)
    try:
        os.link(source, folder / "huge.bin")
    except OSError:
        shutil.copyfile(source, folder / "huge.bin")
    env = _env(home, "M")
    cmd: list[str | Path] = ["env"]
    cmd += [f"{k}={v}" for k, v in env.items() if k.startswith(("TESSERA", "PYTHON"))]
    cmd += _tessera("sync", folder, "--once", "-q")
    peak = peak_rss(cmd)
    return [
        Figure(
            f"peak client RSS syncing {human_bytes(size)}",
            human_bytes(peak),
            "≤ 200 MB",
            peak <= 200 * 1000 * 1000,
        )
    ]


def main() -> None:
    """Run every sync benchmark against a fresh in-process local cloud and print figures."""
    from tessera.adapters.local.identity import LocalUsers
    from tessera.local.cloud import LocalCloud

    work = Path(tempfile.mkdtemp(prefix="tessera-bench-sync-"))
    cloud = LocalCloud(work / "cloud", port=0)
    url = cloud.start()
    users = LocalUsers(cloud.conninfo)
    figures: list[Figure] = []
    try:
        samples = max(10, int(40 * min(1.0, scale() * 4)))
        steps: list[Callable[[str, Path, str], list[Figure]]] = [
            lambda u, w, e: latency(u, w, e, samples),
            edit_and_rename,
            initial_sync,
            memory,
        ]
        for n, step in enumerate(steps):
            email = f"bench{n}@bench.test"
            users.add(email, PASSWORD)
            figures += step(url, work, email)
            print_figures("sync client (so far)", figures)
    finally:
        cloud.stop()
        shutil.rmtree(work, ignore_errors=True)
    print_figures("sync client", figures)


if __name__ == "__main__":
    main()
