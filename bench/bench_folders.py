"""Whole-folder operations on a large folder, through the domain service: rename (move),
delete into the trash, undelete, share (its entries move to a namespace of their own), and
a non-recursive listing of a wide folder, page by page.

Each is one transaction over every entry below the folder: on AWS it must end within API
Gateway's 29 s, so the figure that matters is seconds per operation at a size users have
(a photo library: tens of thousands of files). `TESSERA_BENCH_FOLDER_ENTRIES` (default
20,000) sets the files of the folder, spread over 100 sub-folders; the wide folder holds
as many files directly. PostgreSQL: `DATABASE_URL` when set, else an embedded pgserver.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import psycopg

from bench.bench_commits import _request, _server, _services
from bench.common import Figure, print_figures
from tessera.adapters.local import PostgresChangeFeed
from tessera.blocks import block_id
from tessera.domain import commits, files, listing, sharing
from tessera.domain.models import (
    CommitBatchRequest,
    DeleteRequest,
    MoveRequest,
    RestoreRequest,
    ShareRequest,
)
from tessera.domain.services import Services
from tessera.local.postgres import ensure_database
from tessera.metadata import migrate
from tessera.ports import Principal

ENTRIES = int(os.environ.get("TESSERA_BENCH_FOLDER_ENTRIES", "20000"))
SUBFOLDERS = 100
BATCH = 500
PAGE = 2000


def _fill(svc: Services, who: Principal, paths: list[str]) -> None:
    """One-block files at `paths`, committed in batches (their block is the seed's)."""
    from tests.integration.conftest import put_file

    seed = b"bench folder seed"
    put_file(svc, who, "/seed", seed)
    bid = block_id(seed)
    for start in range(0, len(paths), BATCH):
        entries = [_request(p, bid, len(seed)) for p in paths[start : start + BATCH]]
        commits.commit_batch(svc, who, CommitBatchRequest(entries=entries))


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _list_all(svc: Services, who: Principal, path: str) -> int:
    """Every page of a non-recursive listing of `path`; the entries seen."""
    page = listing.list_folder(svc, who, path, False, PAGE)
    seen = len(page.entries)
    while page.has_more:
        page = listing.list_folder_continue(svc, who, page.cursor, PAGE)
        seen += len(page.entries)
    return seen


def main() -> None:
    """Print the seconds of each whole-folder operation on `ENTRIES` entries."""
    who, member = Principal("folders", "folders@b"), Principal("member", "member@b")
    with (
        tempfile.TemporaryDirectory(prefix="tessera-bench-folders-") as tmp,
        _server(Path(tmp)) as server,
    ):
        url = ensure_database(server, "bench_folders", reset=True)
        migrate(url)
        svc = _services(url, Path(tmp), pool=2)
        try:
            tree = [f"/Photos/d{n % SUBFOLDERS:03d}/f{n:06d}" for n in range(ENTRIES)]
            fill = _timed(
                lambda: _fill(svc, who, tree + [f"/Wide/f{n:06d}" for n in range(ENTRIES)])
            )
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ANALYZE")
            move = _timed(
                lambda: files.move(svc, who, MoveRequest(from_path="/Photos", to_path="/Pictures"))
            )
            delete = _timed(lambda: files.delete(svc, who, DeleteRequest(path="/Pictures")))
            undelete = _timed(lambda: files.restore(svc, who, RestoreRequest(path="/Pictures")))
            sharing.account(svc, member)  # a user exists once they have made a request
            share = _timed(
                lambda: sharing.share(
                    svc, who, ShareRequest(path="/Pictures", email=member.email, access="viewer")
                )
            )
            seen: list[int] = []
            wide = _timed(lambda: seen.append(_list_all(svc, who, "/Wide")))
            assert seen == [ENTRIES], seen
        finally:
            svc.db.close()
            cast(PostgresChangeFeed, svc.feed).close()
    entries = ENTRIES + SUBFOLDERS + 1
    print_figures(
        f"whole-folder operations on {entries:,} entries (one transaction each;"
        f" filling {2 * ENTRIES:,} files took {fill:.0f} s)",
        [
            Figure("move (rename) the folder", f"{move:.2f} s", "< 29 s", move < 29),
            Figure("delete it into the trash", f"{delete:.2f} s", "< 29 s", delete < 29),
            Figure("undelete it", f"{undelete:.2f} s", "< 29 s", undelete < 29),
            Figure("share it", f"{share:.2f} s", "< 29 s", share < 29),
            Figure(
                f"list {ENTRIES:,} children, {PAGE} a page (all pages)",
                f"{wide:.2f} s ({wide / -(-ENTRIES // PAGE) * 1000:.0f} ms a page)",
            ),
        ],
    )
