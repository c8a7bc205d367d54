"""`tessera admin run ...` against a state dir, and the local in-process scheduler."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from tessera.adapters.local.key_file import KeyFileKeyService
from tessera.maintenance import scheduler
from tessera.maintenance.cli import app
from tessera.maintenance.results import StepResult
from tessera.maintenance.runner import run_workflow
from tessera.maintenance.scheduler import MaintenanceScheduler
from tessera.settings import Settings

from .test_maintenance_world import (
    ALICE,
    BLOCK,
    BOB,
    World,
)

runner = CliRunner()


@pytest.fixture
def state_dir(
    world: World, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The world's files laid out as a local cloud state dir (blocks/, keys.json)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert (tmp_path / "keys.json").is_file() and (tmp_path / "blocks").is_dir()
    return tmp_path


def test_admin_run_dedup_and_gc_print_what_they_did(world: World, state_dir: Path) -> None:
    data = secrets.token_bytes(2 * BLOCK)
    world.put(ALICE, "/a.bin", data)
    world.put(BOB, "/b.bin", data)

    out = runner.invoke(app, ["run", "dedup", "--state", str(state_dir), "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert (result["workflow"], result["promoted"], result["dropped"]) == ("dedup", 2, 2)

    world.delete(ALICE, "/a.bin")
    world.delete(BOB, "/b.bin")
    as_of = (datetime.now(UTC) + timedelta(days=31)).isoformat()
    args = ["run", "gc", "--state", str(state_dir), "--allow-future"]
    out = runner.invoke(app, [*args, "--as-of", as_of])
    assert out.exit_code == 0, out.output
    assert "trash files purged" in out.stdout and "versions purged" in out.stdout
    later = (datetime.now(UTC) + timedelta(days=33)).isoformat()
    out = runner.invoke(app, [*args, "--as-of", later, "--json"])
    assert json.loads(out.stdout)["blocks_deleted"] == 2
    assert world.keys_under("blocks/") == []
    runs = world.sql("SELECT workflow, step FROM maintenance_runs ORDER BY run_id")
    assert ("dedup", "verify") in runs and ("gc", "delete_blocks") in runs

    out = runner.invoke(
        app, ["run", "gc", "--step", "expire_uploads", "--state", str(state_dir), "--json"]
    )
    assert out.exit_code == 0 and "sessions_expired" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "compact"], "unknown workflow 'compact'"),
        (["run", "gc", "--as-of", "yesterday"], "not an ISO-8601"),
        (["run", "gc", "--as-of", (datetime.now(UTC) + timedelta(days=31)).isoformat()], "future"),
        (["run", "gc", "--step", "nope"], "has no step 'nope'"),
    ],
)
def test_admin_run_refuses_bad_input(state_dir: Path, args: list[str], message: str) -> None:
    out = runner.invoke(app, [*args, "--state", str(state_dir)])
    assert out.exit_code == 2
    assert message in out.output


def test_admin_run_refuses_a_dir_that_is_not_a_state_dir(tmp_path: Path) -> None:
    out = runner.invoke(app, ["run", "gc", "--state", str(tmp_path / "nothing")])
    assert out.exit_code == 2 and "not a local cloud state dir" in out.output


def test_admin_run_refuses_a_key_file_that_is_not_the_databases(
    world: World, state_dir: Path
) -> None:
    """Under another state dir's `keys.json`, `admin run scrub` judged every block it
    read damaged, and quarantined it for good."""
    world.put(ALICE, "/a.bin", secrets.token_bytes(2 * BLOCK))
    world.run("dedup")
    args = ["run", "scrub", "--state", str(state_dir), "--json"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output  # the first run records the keys' fingerprints
    (state_dir / "keys.json").unlink()
    KeyFileKeyService(state_dir / "keys.json")  # another secret under version 1
    out = runner.invoke(app, args)
    assert out.exit_code == 2 and "key version 1's secret is not the one" in out.output
    assert world.sql("SELECT DISTINCT state FROM blocks") == [("live",)]


def test_admin_workflows_lists_steps_and_prints_asl() -> None:
    out = runner.invoke(app, ["workflows"])
    assert out.exit_code == 0 and "delete_blocks" in out.stdout
    out = runner.invoke(
        app, ["workflows", "--asl", "arn:aws:lambda:x:1:function:gc", "--name", "gc"]
    )
    assert json.loads(out.stdout)["StartAt"] == "purge_trash"
    assert runner.invoke(app, ["workflows", "--asl", "arn", "--name", "nope"]).exit_code == 2


def _unverified(world: World) -> int:
    """Staged copies dedup has not settled yet (settled ones keep their objects a while)."""
    return int(str(world.sql("SELECT count(*) FROM upload_blocks WHERE state = 'staged'")[0][0]))


def _run_until_verified(
    world: World, start: Callable[[], object], stop: Callable[[], object]
) -> None:
    """Start a scheduler, wait (20 s at most) until dedup settled every staged copy, stop it."""
    start()
    try:
        deadline = time.monotonic() + 20
        while _unverified(world) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop()
    assert _unverified(world) == 0


def test_scheduler_runs_workflows_until_stopped(world: World) -> None:
    data = secrets.token_bytes(BLOCK)
    world.put(ALICE, "/a.bin", data)
    sched = MaintenanceScheduler(world.ctx, {"dedup": 0.1, "gc": 0.0})
    _run_until_verified(world, sched.start, sched.stop)
    assert sched.runs["dedup"] >= 1 and "gc" not in sched.runs  # 0 disables
    assert world.ctx.stopping.is_set()  # a step still running would end after its batch


def test_a_failed_run_leaves_the_scheduler_running(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One store (or database) hiccup raised out of a run: the scheduler thread must log it
    and try again at the next interval, not end (dedup, gc and scrub would never run again
    until the local cloud restarted)."""
    world.put(ALICE, "/a.bin", secrets.token_bytes(BLOCK))
    failures: list[str] = []
    get = world.store.get

    def get_failing_once(key: str) -> bytes:
        if not failures:
            failures.append(key)
            raise RuntimeError("the block store hiccuped")
        return get(key)

    monkeypatch.setattr(world.store, "get", get_failing_once)
    sched = MaintenanceScheduler(world.ctx, {"dedup": 0.1})
    _run_until_verified(world, sched.start, sched.stop)
    assert failures and sched.runs["dedup"] >= 2  # the failed run, then one that verified


def test_a_run_that_lost_a_deadlock_is_a_warning_not_a_traceback(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A deadlock with a commit (PostgreSQL picks one side) is what the state machine
    retries on AWS; the local cloud's log showed a traceback of it, as of a bug."""
    world.put(ALICE, "/a.bin", secrets.token_bytes(BLOCK))
    sched = MaintenanceScheduler(world.ctx, {"dedup": 0.1})
    run = sched._run
    lost: list[str] = []

    def deadlocked_once(job: str) -> StepResult:
        if not lost:
            lost.append(job)
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return run(job)

    monkeypatch.setattr(sched, "_run", deadlocked_once)
    caplog.set_level(logging.INFO, logger="tessera.maintenance")
    _run_until_verified(world, sched.start, sched.stop)
    [said] = [r for r in caplog.records if "deadlock" in r.getMessage()]
    assert said.levelno == logging.WARNING and said.exc_info is None
    assert "retried at its next run" in said.getMessage()
    assert sched.runs["dedup"] >= 2  # and it went on


def test_a_stopping_context_ends_a_run_after_its_batch_and_leaves_the_rest(
    world: World,
) -> None:
    for i in range(3):
        world.put(ALICE, f"/s{i}.bin", secrets.token_bytes(BLOCK))
    before = _unverified(world)
    world.ctx.stopping.set()
    result = run_workflow(world.ctx, "dedup")  # returns at once, instead of looping
    assert result.more and _unverified(world) == before
    sched = MaintenanceScheduler(world.ctx, {"dedup": 0.1})
    _run_until_verified(world, sched.start, sched.stop)  # a new start clears the flag


def test_scheduler_start_takes_the_local_clouds_services(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GC", "COLD", "SCRUB"):
        monkeypatch.setenv(f"TESSERA_{name}_INTERVAL_S", "0")
    monkeypatch.setenv("TESSERA_DEDUP_INTERVAL_S", "0.1")
    world.put(ALICE, "/a.bin", secrets.token_bytes(BLOCK))
    # the local cloud hands over plain server Settings: the intervals come from the env
    stops: list[Callable[[], None]] = []
    _run_until_verified(
        world,
        lambda: stops.append(scheduler.start(replace(world.svc, settings=Settings()))),
        lambda: stops.pop()(),
    )
