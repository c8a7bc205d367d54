"""One file, or one of its versions, downloaded outside any synced folder (`tessera get`).

The same download as a sync's (`Transfers.download`: verified block by block, resumable
from its partial download, renamed into place only once whole), into a folder of the
user's choosing, with a state database of its own in memory: there is no synced version
here to take blocks from, and nothing of the sync's state is touched.
"""

from __future__ import annotations

from pathlib import Path

from tessera_client.api import Api
from tessera_client.fs import RealFilesystem, SafeFilesystem
from tessera_client.paths import UnsafePathError, canonical_rel
from tessera_client.state import StateDB
from tessera_client.transfer import Progress, Transfers


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


def download_to(
    api: Api,
    dest: Path,
    file_id: str,
    rev: int,
    *,
    content_hash: str = "",
    device: str = "",
    progress: Progress | None = None,
) -> None:
    """Download `rev` of file `file_id` to `dest`, a new file in an existing folder.

    `content_hash`, when given, is the version's as listed: another is refused. A file
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
    state = StateDB(":memory:")
    transfers = Transfers(
        api, SafeFilesystem(RealFilesystem(dest.parent)), state, device=device, progress=progress
    )
    try:
        transfers.download(name, file_id, rev, content_hash, None)
    finally:
        transfers.close()
        state.close()
