"""Embedded PostgreSQL bookkeeping: holders that died without letting go are forgotten, so
the next `tessera local up` still stops the server when it exits; a crash's stale
`postmaster.pid` never makes it take another process for the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from tessera.local.postgres import (
    EmbeddedPostgres,
    _drop_stale_postmaster_pid,
    _prune_dead_holders,
)


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


def test_a_stale_postmaster_pid_naming_another_process_is_removed(tmp_path: Path) -> None:
    """Left by a crash, its pid handed since to another process: pgserver took the server
    for running, the start failed, and its cleanup killed that process."""
    marker = tmp_path / "postmaster.pid"
    marker.write_text(f"{os.getpid()}\n{tmp_path}\n")  # alive, and not a postgres
    _drop_stale_postmaster_pid(tmp_path)
    assert not marker.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for text in (f"{dead.pid}\n{tmp_path}\n", "garbage\n", "-7\n"):  # PostgreSQL's own
        marker.write_text(text)
        _drop_stale_postmaster_pid(tmp_path)
        assert marker.read_text() == text


def test_the_embedded_server_starts_over_a_stale_pid_and_kills_nobody(tmp_path: Path) -> None:
    pgdata = tmp_path / "pg"
    server = EmbeddedPostgres(pgdata)
    server.start()
    _drop_stale_postmaster_pid(pgdata)  # the running server's own: kept
    assert (pgdata / "postmaster.pid").exists()
    server.stop()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (pgdata / "postmaster.pid").write_text(f"{bystander.pid}\n{pgdata}\n")
        server = EmbeddedPostgres(pgdata)
        with psycopg.connect(server.start()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        server.stop()
        assert bystander.poll() is None  # still running
    finally:
        bystander.kill()
        bystander.wait()
