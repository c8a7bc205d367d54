"""Files, or one file's earlier version, downloaded outside any synced folder (`tessera get`).

The same download as a sync's (`Transfers.download`: verified block by block, resumable
from its partial download, renamed into place only once whole, never over a file), into a
folder of the user's choosing, with a state database of its own in memory: there is no
synced version here to take blocks from, and nothing of the sync's state is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.blocks import scan_file
from tessera_client.api import Api, ApiError
from tessera_client.fs import DiskFullError, Kind, RealFilesystem, SafeFilesystem
from tessera_client.paths import UnsafePathError, canonical_rel
from tessera_client.state import StateDB
from tessera_client.transfer import (
    IntegrityError,
    LocalChangedError,
    Progress,
    RestoringError,
    Transfers,
    download_each,
)


class TargetExistsError(FileExistsError):
    """The download's target is taken: nothing is ever written over a file here."""


def target(to: Path | None, server_name: str) -> Path:
    """Where a file the server names `server_name` is saved: at `to`, or in it when it is
    a folder (by default the current folder). The server's name must be one plain name:
    a hostile or broken server's `../x` or `a/b` would put the file elsewhere."""
    dest = (to or Path.cwd()).expanduser().absolute()
    if not dest.is_dir():
        return dest
    try:
        plain = canonical_rel(server_name) == server_name and "/" not in server_name
    except UnsafePathError:
        plain = False
    if not plain:
        raise UnsafePathError(f"the server named the file {server_name!r}; give --to FILE")
    return dest / server_name


@dataclass(frozen=True)
class RemoteFile:
    """A file below the folder `get` saves: its path under that folder, and its version."""

    rel: str
    file_id: str
    rev: int
    content_hash: str
    size: int


def folder_contents(
    folder: Mapping[str, Any], entries: Iterable[Mapping[str, Any]]
) -> tuple[list[str], list[RemoteFile]]:
    """The folders and files of a recursive listing below `folder` (entries of the API),
    by their paths under it: what is not below it is left out."""
    inside = folder["path_lower"] + "/"
    cut = len(folder["path_display"]) + 1
    folders, files = [], []
    for e in entries:
        if not e["path_lower"].startswith(inside):
            continue
        rel = e["path_display"][cut:]
        if e[".tag"] == "folder":
            folders.append(rel)
        elif e[".tag"] == "file":
            files.append(RemoteFile(rel, e["file_id"], e["rev"], e["content_hash"], e["size"]))
    return folders, files


@dataclass
class FolderResult:
    """What `download_folder` did."""

    saved: int = 0  # files downloaded
    kept: int = 0  # files there already with the same content (an earlier run's)
    problems: list[str] = field(default_factory=list)  # files left, and why
    restore_wait_s: float = 0.0  # > 0: files in cold storage are being restored


def download_folder(
    api: Api,
    dest: Path,
    folders: Iterable[str],
    files: Iterable[RemoteFile],
    *,
    device: str = "",
    progress: Progress | None = None,
) -> FolderResult:
    """Download `files` (and make `folders`) under `dest`, a folder made if it is not there.

    Several files at once, as a sync downloads them (`download_each`). Never over a file:
    one there already with the same content counts as `kept` (so a run cut off, or waiting
    on cold storage, is taken up by running it again), anything else there is left alone
    and reported. Each path goes through the safe filesystem layer (a server's `../x` or a
    symlink on the way is refused). A full disk or the server out of reach stops it."""
    dest.mkdir(exist_ok=True)
    result = FolderResult()
    with _transfers_into(api, dest, device, progress) as transfers:
        fs = transfers.fs
        for rel in folders:
            try:
                fs.makedirs(rel)
            except (UnsafePathError, OSError) as e:
                result.problems.append(f"{rel}: {e}")

        def fetch(f: RemoteFile, stopping: Callable[[], bool]) -> bool:
            """Whether `f` was downloaded (False: it was there already)."""
            if _already_here(fs, f):
                if progress is not None:  # (its bytes count as done)
                    progress(f.rel, f.size)
                return False
            transfers.download(f.rel, f.file_id, f.rev, f.content_hash, None, stopping=stopping)
            return True

        def finished(f: RemoteFile, fut: Future[bool]) -> None:
            try:
                if fut.result():
                    result.saved += 1
                else:
                    result.kept += 1
            except RestoringError as e:
                result.restore_wait_s = max(result.restore_wait_s, e.retry_after)
            except DiskFullError:
                raise
            except (ApiError, IntegrityError, LocalChangedError, UnsafePathError, OSError) as e:
                # (ApiError: e.g. deleted on the server since the listing)
                result.problems.append(f"{f.rel}: {e}")

        download_each(files, fetch, finished)
    return result


@contextmanager
def _transfers_into(
    api: Api, folder: Path, device: str, progress: Progress | None
) -> Iterator[Transfers]:
    """Transfers into `folder` through the safe filesystem layer, with a state database of
    their own, in memory; closed after."""
    state = StateDB(":memory:")
    transfers = Transfers(
        api, SafeFilesystem(RealFilesystem(folder)), state, device=device, progress=progress
    )
    try:
        yield transfers
    finally:
        transfers.close()
        state.close()


def _already_here(fs: SafeFilesystem, f: RemoteFile) -> bool:
    """Whether `f` is in place already; `LocalChangedError` when something else is."""
    here = fs.lstat_if_any(f.rel)
    if here is None:
        return False
    disk = fs.local_path(f.rel)
    if (
        here.kind == Kind.FILE
        and here.size == f.size
        and disk is not None
        and scan_file(disk).content_hash == f.content_hash
    ):
        return True
    raise LocalChangedError("something else is there; left alone")


def download_to(
    api: Api,
    dest: Path,
    file_id: str,
    rev: int,
    *,
    content_hash: str = "",
    device: str = "",
    progress: Progress | None = None,
    include_deleted: bool = False,
) -> None:
    """Download `rev` of file `file_id` to `dest`, a new file in an existing folder.

    `content_hash`, when given, is the version's as listed: another is refused.
    `include_deleted`: the file may be in the trash. A file
    made at `dest` meanwhile is left alone (`LocalChangedError`); a failed download keeps
    its partial download beside `dest`, and the next one takes up what it holds."""
    name = dest.name
    try:
        if canonical_rel(name) != name:
            raise UnsafePathError("not in the form the server names files (NFC)")
    except UnsafePathError as e:
        raise UnsafePathError(f"cannot save as {name!r}: {e}; choose another name") from None
    if not dest.parent.is_dir():
        raise FileNotFoundError(f"{dest.parent} is not a folder")
    if dest.is_symlink() or dest.exists():
        raise TargetExistsError(f"{dest} exists; choose another name, or move it aside")
    with _transfers_into(api, dest.parent, device, progress) as transfers:
        transfers.download(name, file_id, rev, content_hash, None, include_deleted=include_deleted)
