"""Secret files of the local cloud: created 0600, refused when readable by others."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from tessera.adapters.local import InsecureSecretFile, JwtIssuer, KeyFileKeyService
from tessera.adapters.local.secret_files import write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_is_created_0600_with_one_version(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys.json"
    keys = KeyFileKeyService(path)
    assert _mode(path) == 0o600
    assert keys.versions() == [1]
    assert keys.current_version() == 1
    state = json.loads(path.read_text())
    assert set(state) == {"current", "versions"}


def test_key_file_with_loose_permissions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    KeyFileKeyService(path)
    os.chmod(path, 0o644)
    with pytest.raises(InsecureSecretFile, match=r"mode 0644.*chmod 600"):
        KeyFileKeyService(path)


def test_key_file_loosened_while_running_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keys = KeyFileKeyService(path)
    other = KeyFileKeyService(path)
    other.rotate()  # the file changes: the first instance re-reads it, and checks it
    os.chmod(path, 0o640)
    with pytest.raises(InsecureSecretFile):
        keys.current_version()


def test_rotation_is_persisted_and_keeps_the_file_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keys = KeyFileKeyService(path)
    v1_key = keys.block_key("b3:" + "00" * 32)[1]
    assert keys.rotate() == 2
    assert _mode(path) == 0o600
    reopened = KeyFileKeyService(path)
    assert reopened.versions() == [1, 2]
    assert reopened.current_version() == 2
    assert reopened.block_key("b3:" + "00" * 32, 1)[1] == v1_key
    assert not list(tmp_path.glob(".*.tmp")), "no temp file left behind"


@pytest.mark.parametrize(
    "content",
    [b"not json", b'{"current": 2, "versions": {"1": "AAAA"}}', b'{"versions": {}}'],
)
def test_corrupt_key_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(ValueError, match=r"keys\.json"):
        KeyFileKeyService(path)


def test_jwt_signing_key_is_0600_and_refused_when_loose(tmp_path: Path) -> None:
    path = tmp_path / "jwt.pem"
    JwtIssuer(path)
    assert _mode(path) == 0o600
    os.chmod(path, 0o604)
    with pytest.raises(InsecureSecretFile):
        JwtIssuer(path)


@pytest.mark.parametrize("exclusive", [True, False], ids=["created", "replaced"])
def test_a_secret_file_is_never_left_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exclusive: bool
) -> None:
    """Created in place, a full disk (or a kill) mid-write left an empty key file, and every
    later start failed on it. Now it is whole, or not there (and no temp file stays)."""
    path = tmp_path / "keys.json"
    if not exclusive:
        write_private(path, b"the old secret", exclusive=True)

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_private(path, b"a new secret", exclusive=exclusive)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if exclusive else ["keys.json"])
    if not exclusive:
        assert path.read_bytes() == b"the old secret"
    # a temp file a kill left under this pid's name blocks nothing (a container's pid 1)
    (tmp_path / f".keys.json.{os.getpid()}.tmp").write_bytes(b"")
    write_private(path, b"a new secret", exclusive=False)
    with pytest.raises(FileExistsError):  # two processes creating it: one wins
        write_private(path, b"another", exclusive=True)
    assert path.read_bytes() == b"a new secret" and _mode(path) == 0o600
    fresh = tmp_path / "url-signing.key"
    (tmp_path / f".url-signing.key.{os.getpid()}.tmp").write_bytes(b"")
    write_private(fresh, b"x" * 32, exclusive=True)
    assert fresh.read_bytes() == b"x" * 32
