"""Commits per second through the domain service (tessera.domain.commits.commit) with 1 and
8 concurrent writers, beside pgbench's TPC-B on the same PostgreSQL with the same client
count. Target (issue 3): >= 0.5 x pgbench's TPS at 8 writers.

Each writer is its own user (own root namespace, as real clients are) committing new small
files whose one block it can already read, so the figure is the metadata path: view, block
check, file row lock, version + block list, refcounts, journal, outbox, NOTIFY — and the
change-feed publish after commit. A second 8-writer figure has every writer in ONE
namespace (they serialise on its journal seq, like TPC-B's single branch row at scale 1).

PostgreSQL: `DATABASE_URL` when set, else an embedded pgserver started here (stopped after).
`TESSERA_BENCH_SECONDS` (default 5) sets each run's length.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.common import Figure, print_figures
from tessera.adapters.local import FilesystemBlockStore, KeyFileKeyService, PostgresChangeFeed
from tessera.blocks import block_id, content_hash
from tessera.domain import commits
from tessera.domain.models import BlockSpec, CommitRequest
from tessera.domain.services import Services
from tessera.metadata import Database, migrate
from tessera.ports import ChangeEvent, ChangeFeed, Principal
from tessera.settings import Settings

PGBENCH = "/usr/bin/pgbench"
SECONDS = float(os.environ.get("TESSERA_BENCH_SECONDS", "5"))


class _NoPublish(ChangeFeed):
    """A feed whose publish does nothing (to show what the fast-path publish costs)."""

    def publish(self, event: ChangeEvent) -> None:
        return None

    def wait(self, cursors: Mapping[int, int], timeout: float) -> bool:
        time.sleep(timeout)  # nothing is ever published here
        return False


@contextmanager
def _server(workdir: Path) -> Iterator[str]:
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    import pgserver

    server = pgserver.get_server(workdir / "pg", cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _database(url: str, name: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo("", **params)


def _seed(svc: Services, who: Principal) -> tuple[str, int]:
    """Give `who` one readable block (uploaded through the real flow); its id and size."""
    from tests.integration.conftest import put_file

    data = f"bench seed of {who.user_id}".encode()
    put_file(svc, who, "/seed", data)
    return block_id(data), len(data)


def _commits_per_second(svc: Services, writers: list[Principal], seconds: float) -> float:
    seeds = {uid: _seed(svc, w) for uid, w in {w.user_id: w for w in writers}.items()}
    stop = time.monotonic() + seconds
    counts = [0] * len(writers)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(writers))

    def run(i: int, who: Principal) -> None:
        bid, size = seeds[who.user_id]
        prefix = f"/w{i}-{uuid.uuid4().hex[:6]}"
        barrier.wait()
        n = 0
        try:
            while time.monotonic() < stop:
                req = CommitRequest(
                    path=f"{prefix}/f{n}",
                    blocks=[BlockSpec(id=bid, size=size)],
                    size=size,
                    content_hash=content_hash([bid]),
                )
                commits.commit(svc, who, req)
                n += 1
        except BaseException as exc:
            errors.append(exc)
        counts[i] = n

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(writers)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(counts) / (time.monotonic() - start)


def _pgbench_tps(url: str, clients: int, seconds: float) -> float:
    params = conninfo_to_dict(url)
    conn = [
        "-h",
        str(params.get("host", "localhost")),
        "-p",
        str(params.get("port", 5432)),
        "-U",
        str(params.get("user", "postgres")),
    ]
    env = {**os.environ, "PGPASSWORD": str(params.get("password") or "")}
    db = str(params["dbname"])
    subprocess.run(
        [PGBENCH, "-i", "-q", "-s", "1", *conn, db], check=True, env=env, capture_output=True
    )
    out = subprocess.run(
        [PGBENCH, "-n", "-c", str(clients), "-j", str(clients), "-T", str(int(seconds)), *conn, db],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"tps = ([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"cannot read pgbench output:\n{out}")
    return float(m.group(1))


def main() -> None:
    """Print commits/s (1 and 8 writers) beside pgbench TPC-B TPS on the same server."""
    with (
        tempfile.TemporaryDirectory(prefix="tessera-bench-commits-") as tmp,
        _server(Path(tmp)) as server,
    ):
        meta_url = _database(server, "bench_commits")
        migrate(meta_url)
        feed = PostgresChangeFeed(meta_url)
        db = Database(meta_url, min_size=8, max_size=10)
        svc = Services(
            db=db,
            block_store=FilesystemBlockStore(Path(tmp) / "blocks", "http://bench", b"b" * 32),
            keys=KeyFileKeyService(Path(tmp) / "keys.json"),
            feed=feed,
            settings=Settings(database_url=meta_url),
        )
        try:
            one = _commits_per_second(svc, [Principal("bench-solo", "solo@bench")], SECONDS)
            users = [Principal(f"bench-{i}", f"w{i}@bench") for i in range(8)]
            eight = _commits_per_second(svc, users, SECONDS)
            shared = Principal("bench-shared", "shared@bench")
            eight_one_ns = _commits_per_second(svc, [shared] * 8, SECONDS)
            # The same without the fast-path publish (the local feed's publish is a second
            # transaction; the commit's own NOTIFY already woke the long-polls).
            svc.feed = _NoPublish()
            quiet = [Principal(f"bench-q{i}", f"q{i}@bench") for i in range(8)]
            eight_no_publish = _commits_per_second(svc, quiet, SECONDS)
        finally:
            db.close()
            feed.close()
        pg_url = _database(server, "bench_pgbench")
        pg1 = _pgbench_tps(pg_url, 1, SECONDS)
        pg8 = _pgbench_tps(pg_url, 8, SECONDS)
    ratio = eight / pg8 if pg8 else 0.0
    print_figures(
        "commits through the domain service vs pgbench TPC-B (same server)",
        [
            Figure("commits/s, 1 writer", f"{one:,.0f}"),
            Figure("pgbench TPS, 1 client", f"{pg1:,.0f}"),
            Figure("commits/s, 8 writers (8 users)", f"{eight:,.0f}"),
            Figure("commits/s, 8 writers (one namespace)", f"{eight_one_ns:,.0f}"),
            Figure("commits/s, 8 writers, no feed publish", f"{eight_no_publish:,.0f}"),
            Figure("pgbench TPS, 8 clients", f"{pg8:,.0f}"),
            Figure("8 writers / pgbench 8 clients", f"{ratio:.2f}x", ">= 0.50x", ratio >= 0.5),
        ],
    )


if __name__ == "__main__":
    main()
