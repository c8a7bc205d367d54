"""`tessera blocks FILE [--json]`: as a real subprocess, and in-process for the error paths
(each `tessera` start imports the whole client, which is slow on a busy machine)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from blake3 import blake3
from typer.testing import CliRunner

from tessera.blocks import chunking, scan_file
from tessera_client.cli import app
from tests.permissions import permission_bound_prefix

TESSERA = Path(sys.executable).parent / "tessera"


def run(*args: str | Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, str(TESSERA), "blocks", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["blocks", *map(str, args)])
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cli") / "sample.bin"
    p.write_bytes(random.Random(4).randbytes(6 * 1024 * 1024) + b"tail" * 1000)
    return p


def test_json_output_of_the_installed_command_is_the_manifest(sample: Path) -> None:
    r = run(sample, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == scan_file(sample).as_dict()
    assert list(out) == ["content_hash", "size", "blocks"]
    assert all(list(b) == ["id", "offset", "size"] for b in out["blocks"])
    assert len(out["blocks"]) >= 2


def test_unreadable_file_gives_a_clear_message_and_exit_1(tmp_path: Path) -> None:
    p = tmp_path / "secret.bin"
    p.write_bytes(b"secret")
    p.chmod(0)
    r = run(p, prefix=permission_bound_prefix())
    assert r.returncode == 1, r.stderr
    assert "permission denied" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_json_of_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    code, out, _ = invoke(tmp_path / "empty", "--json")
    assert code == 0
    assert json.loads(out) == {
        "content_hash": "b3:" + blake3(b"").hexdigest(),
        "size": 0,
        "blocks": [],
    }


def test_human_output_is_a_table_of_whole_ids(sample: Path) -> None:
    code, out, _ = invoke(sample)
    assert code == 0
    m = scan_file(sample)
    assert f"content hash: {m.content_hash}" in out
    for b in m.blocks:
        assert b.id in out
        assert str(b.offset) in out


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing", "no such file"), (".", "is a directory"), ("fifo", "not a regular file")],
)
def test_bad_paths_give_a_clear_message_and_exit_1(tmp_path: Path, name: str, message: str) -> None:
    if name == "fifo":
        os.mkfifo(tmp_path / name)
    code, out, err = invoke(tmp_path / name)
    assert code == 1
    assert err.startswith("tessera blocks: ")
    assert message in err
    assert out == ""


def test_a_file_changing_while_read_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "busy.log"
    p.write_bytes(random.Random(5).randbytes(3 * 1024 * 1024))
    os.utime(p, ns=(10**9, 10**9))
    real = blake3

    def hash_then_write(*data: memoryview) -> object:
        if data:
            with p.open("r+b") as f:
                f.write(b"new")
        return real(*data)

    monkeypatch.setattr(chunking, "blake3", hash_then_write)
    code, out, err = invoke(p, "--json")
    assert code == 2
    assert "changed while it was being read" in err
    assert "again" in err
    assert out == ""
