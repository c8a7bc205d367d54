"""The local cloud as a subprocess (restarted mid-sync), and two sync daemons side by side."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Cloud,
    CloudProcess,
    Device,
    make_device,
    snapshot,
    tessera_cmd,
    wait_for,
)

pytestmark = pytest.mark.e2e


def test_server_restarted_mid_sync(
    cloud_process: tuple[CloudProcess, Cloud], devices: list[Device], tmp_path: Path
) -> None:
    proc, cloud = cloud_process
    email = cloud.user()
    a = make_device(devices, tmp_path, cloud, "A", email, cli=True)
    b = make_device(devices, tmp_path, cloud, "B", email)
    data = os.urandom(32 * 1024 * 1024)
    a.write("media/big.bin", data)
    a.write("notes/ß.txt", "small")
    sync = subprocess.Popen(
        tessera_cmd("sync", str(a.folder), "--once", "-q"),
        env=a.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sent_before = 10  # blocks recorded sent when the server goes away, at least
    wait_for(
        lambda: a.pending_sent() >= sent_before or sync.poll() is not None,
        timeout=60,
        interval=0.01,
    )
    assert sync.poll() is None, "the sync was over before the server could go away"
    proc.stop()  # the server goes away mid-upload...
    time.sleep(1.0)
    proc.start()  # ...and comes back on the same port with the same state
    _out, err = sync.communicate(timeout=180)
    assert sync.returncode == 0, err
    blocks = len(a.json("blocks", str(a.folder / "media" / "big.bin"))["blocks"])
    # resumed where it was (the PUTs in flight, 8 at most, sent again), not sent again whole
    assert a.stats()["blocks_up"] < blocks + sent_before
    b.sync()
    assert snapshot(b.folder) == snapshot(a.folder)
    assert (b.folder / "media" / "big.bin").read_bytes() == data


def test_two_daemons_follow_each_other(
    inproc_cloud: Cloud, devices: list[Device], tmp_path: Path
) -> None:
    email = inproc_cloud.user()
    a = make_device(devices, tmp_path, inproc_cloud, "A", email)
    b = make_device(devices, tmp_path, inproc_cloud, "B", email)
    a.start_daemon()
    b.start_daemon()
    time.sleep(2.0)  # both daemons up and long-polling
    payload = os.urandom(1024 * 1024)
    a.write("from-a.bin", payload)
    target = b.folder / "from-a.bin"
    wait_for(lambda: target.exists() and target.read_bytes() == payload, timeout=30)

    b.write("sub/from-b.txt", "hi from b")
    wait_for(lambda: (a.folder / "sub" / "from-b.txt").exists(), timeout=30)
    (b.folder / "from-a.bin").rename(b.folder / "sub" / "renamed.bin")
    wait_for(lambda: (a.folder / "sub" / "renamed.bin").exists(), timeout=30)
    wait_for(lambda: not (a.folder / "from-a.bin").exists(), timeout=30)
    (a.folder / "sub" / "from-b.txt").unlink()
    wait_for(lambda: not (b.folder / "sub" / "from-b.txt").exists(), timeout=30)
    a.stop()
    b.stop()
    assert snapshot(a.folder) == snapshot(b.folder)
