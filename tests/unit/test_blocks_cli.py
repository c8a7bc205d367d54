"""`tessera blocks FILE [--json]`, run as a real subprocess."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tessera.blocks import scan_file

TESSERA = Path(sys.executable).parent / "tessera"


def run(*args: str | Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, str(TESSERA), "blocks", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cli") / "sample.bin"
    p.write_bytes(random.Random(4).randbytes(6 * 1024 * 1024) + b"tail" * 1000)
    return p


def test_json_output_is_the_manifest(sample: Path) -> None:
    r = run(sample, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == scan_file(sample).as_dict()
    assert set(out) == {"content_hash", "size", "blocks"}
    assert all(set(b) == {"id", "offset", "size"} for b in out["blocks"])
    assert len(out["blocks"]) >= 2


def test_json_of_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    r = run(tmp_path / "empty", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == scan_file(tmp_path / "empty").as_dict()
    assert json.loads(r.stdout)["blocks"] == []


def test_human_output_is_a_table_of_whole_ids(sample: Path) -> None:
    r = run(sample)
    assert r.returncode == 0, r.stderr
    m = scan_file(sample)
    assert m.content_hash in r.stdout
    for b in m.blocks:
        assert b.id in r.stdout
        assert str(b.offset) in r.stdout


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing", "no such file"), (".", "is a directory")],
)
def test_bad_paths_give_a_clear_message_and_exit_1(tmp_path: Path, name: str, message: str) -> None:
    r = run(tmp_path / name)
    assert r.returncode == 1
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stdout == ""


def test_unreadable_file_gives_a_clear_message_and_exit_1(tmp_path: Path) -> None:
    p = tmp_path / "secret.bin"
    p.write_bytes(b"secret")
    p.chmod(0)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root reads chmod-000 files unless it drops its DAC override
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and util-linux setpriv is not installed")
        prefix = (setpriv, "--bounding-set=-dac_override,-dac_read_search")
    r = run(p, prefix=prefix)
    assert r.returncode == 1, r.stderr
    assert "permission denied" in r.stderr
    assert "Traceback" not in r.stderr
