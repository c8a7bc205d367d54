"""Embedded PostgreSQL bookkeeping: holders that died without letting go are forgotten, so
the next `tessera local up` still stops the server when it exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tessera.local.postgres import _prune_dead_holders


def test_dead_holders_are_pruned(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holders = tmp_path / ".handle_pids.json"
    holders.write_text(json.dumps([os.getpid(), dead.pid]))
    _prune_dead_holders(tmp_path)
    assert json.loads(holders.read_text()) == [os.getpid()]


def test_pruning_tolerates_a_missing_or_corrupt_list(tmp_path: Path) -> None:
    _prune_dead_holders(tmp_path)  # no list yet: nothing to do
    assert not (tmp_path / ".handle_pids.json").exists()
    (tmp_path / ".handle_pids.json").write_text("not json")
    _prune_dead_holders(tmp_path)
    assert json.loads((tmp_path / ".handle_pids.json").read_text()) == []
