"""`tessera get`'s target: where a file is saved, and what is never written over."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest

from tessera_client.api import Api
from tessera_client.getfile import TargetExistsError, download_to, target
from tessera_client.paths import UnsafePathError


class _NoApi:
    """An API no refused download may reach."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the API was used ({name}) for a refused download")


NO_API = cast(Api, _NoApi())


def test_a_file_goes_into_a_folder_by_its_name_or_to_the_file_named(tmp_path: Path) -> None:
    assert target(tmp_path, "report.pdf") == tmp_path / "report.pdf"
    assert target(tmp_path / "old.pdf", "report.pdf") == tmp_path / "old.pdf"


def test_the_current_folder_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert target(None, "a.txt") == tmp_path / "a.txt"


@pytest.mark.parametrize("name", ["../escape.txt", "a/b.txt", "..", "", "bad\x00name", "e\u0301"])
def test_a_server_name_that_is_not_one_plain_name_goes_nowhere(tmp_path: Path, name: str) -> None:
    """A hostile server's `../x` joined to the folder would save the file outside it."""
    with pytest.raises(UnsafePathError, match="give --to FILE"):
        target(tmp_path, name)


def test_nothing_is_written_over_a_file_or_through_a_symlink(tmp_path: Path) -> None:
    mine = tmp_path / "mine.txt"
    mine.write_text("my work")
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    for dest in (mine, tmp_path / "link"):
        with pytest.raises(TargetExistsError, match="exists"):
            download_to(NO_API, dest, "id", 1)
    assert mine.read_text() == "my work"
    assert not (tmp_path / "elsewhere").exists()


def test_a_missing_folder_or_a_name_the_server_would_not_give_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        download_to(NO_API, tmp_path / "no such folder" / "a.txt", "id", 1)
    with pytest.raises(UnsafePathError, match="choose another name"):
        download_to(NO_API, tmp_path / "e\u0301.txt", "id", 1)  # NFD
