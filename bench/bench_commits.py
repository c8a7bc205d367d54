"""Commits per second through the domain service (tessera.domain.commits.commit) with 1 and
8 concurrent writers, beside pgbench's TPC-B on the same PostgreSQL with the same client
count. Target (issue 3): >= 0.5 x pgbench's TPS at 8 writers.

Each writer is a thread (the local gateway serves requests on threads of one process; on
this 2-core machine 8 processes measured 20-35 % slower: they take CPU from PostgreSQL),
committing as its own user (own root namespace, as real clients are) new small files whose
one block it can already read, so the figure is the metadata path: view, block check,
parent folders, file row, version + block list, refcounts, journal, outbox, NOTIFY — and
the change-feed publish after commit.

Like `pgbench -i`, the set-up gives the tables content and statistics before the runs:
each user's namespace holds `PREFILL` files, the seed blocks are settled by dedup-verify (as
the maintenance schedule does minutes after an upload; a block still read through its
unverified staged copy costs one more round trip, `_settled` in tessera.domain.commits),
and the database is analyzed. The same users commit in every round.
A second 8-writer figure has every writer in ONE namespace (they serialise on its journal
seq, like TPC-B's single branch row at scale 1).

PostgreSQL: `DATABASE_URL` when set, else an embedded pgserver started here (stopped after).
`TESSERA_BENCH_SECONDS` (default 4) sets each run's length, `TESSERA_BENCH_ROUNDS`
(default 5: a checkpoint or autovacuum during a 4 s run moves it by up to a third) the
number of alternating rounds.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.common import Figure, print_figures
from tessera.adapters.local import FilesystemBlockStore, KeyFileKeyService, PostgresChangeFeed
from tessera.blocks import block_id, content_hash
from tessera.domain import commits
from tessera.domain.models import BlockSpec, CommitBatchRequest, CommitRequest
from tessera.domain.services import Services
from tessera.local.postgres import ensure_database
from tessera.maintenance import MaintenanceContext
from tessera.maintenance.dedup import verify_staged
from tessera.metadata import Database, migrate
from tessera.ports import Principal
from tessera.settings import Settings

PGBENCH = "/usr/bin/pgbench"
SECONDS = float(os.environ.get("TESSERA_BENCH_SECONDS", "4"))
ROUNDS = int(os.environ.get("TESSERA_BENCH_ROUNDS", "5"))
PREFILL = 1_000  # files in each writer's namespace before the runs


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


def _prepare(
    svc: Services, meta_url: str, users: list[Principal]
) -> dict[Principal, tuple[Principal, str, int]]:
    """Each user with a seed block and `PREFILL` files, as an account in use has; the seeds
    settled by dedup-verify and the tables analyzed, as `pgbench -i` vacuums its own."""
    from tests.integration.conftest import put_file

    seeds = {}
    for who in users:
        data = f"bench seed of {who.user_id}".encode()
        put_file(svc, who, "/seed", data)
        seeds[who] = (who, block_id(data), len(data))
    verify_staged(
        MaintenanceContext.build(db=svc.db, store=svc.block_store, keys=svc.keys, feed=None),
        datetime.now(UTC),
    )
    for who, bid, size in seeds.values():
        for start in range(0, PREFILL, 500):
            entries = [_request(f"/prefill/f{n}", bid, size) for n in range(start, start + 500)]
            commits.commit_batch(svc, who, CommitBatchRequest(entries=entries))
    with psycopg.connect(meta_url, autocommit=True) as conn:
        conn.execute("ANALYZE")
    return seeds


def _request(path: str, bid: str, size: int) -> CommitRequest:
    """A new one-block file at `path`."""
    return CommitRequest(
        path=path,
        blocks=[BlockSpec(id=bid, size=size)],
        size=size,
        content_hash=content_hash([bid]),
    )


def _services(meta_url: str, root: Path, *, pool: int) -> Services:
    """The domain's ports on the local adapters, as the local cloud wires them."""
    return Services(
        db=Database(meta_url, min_size=1, max_size=pool),
        block_store=FilesystemBlockStore(root / "blocks", "http://bench", b"b" * 32),
        keys=KeyFileKeyService(root / "keys.json"),
        feed=PostgresChangeFeed(meta_url),
        settings=Settings(database_url=meta_url),
    )


def _rate(svc: Services, seeds: list[tuple[Principal, str, int]], seconds: float) -> float:
    """Commits per second of len(seeds) writer threads (writer i commits as seeds[i]'s user),
    in one process, as the local gateway serves requests."""
    counts = [0] * len(seeds)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(seeds) + 1)
    stop = [0.0]

    def run(i: int, who: Principal, bid: str, size: int) -> None:
        prefix = f"/w-{uuid.uuid4().hex[:8]}"
        barrier.wait()
        n = 0
        try:
            while time.monotonic() < stop[0]:
                commits.commit(svc, who, _request(f"{prefix}/f{n}", bid, size))
                n += 1
        except BaseException as exc:
            errors.append(exc)
        counts[i] = n

    threads = [threading.Thread(target=run, args=(i, *seed)) for i, seed in enumerate(seeds)]
    for t in threads:
        t.start()
    stop[0] = time.monotonic() + seconds
    barrier.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(counts) / seconds


def _pgbench(url: str, *args: str) -> str:
    """Run pgbench against the database at `url`; its stdout."""
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
    return subprocess.run(
        [PGBENCH, *args, *conn, str(params["dbname"])],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout


def _pgbench_tps(url: str, clients: int, seconds: float) -> float:
    """TPC-B transactions per second with `clients` clients (tables from `pgbench -i`)."""
    out = _pgbench(url, "-n", "-c", str(clients), "-j", str(clients), "-T", str(int(seconds)))
    m = re.search(r"tps = ([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"cannot read pgbench output:\n{out}")
    return float(m.group(1))


def main() -> None:
    """Print commits/s (1 and 8 writers) beside pgbench TPC-B TPS on the same server.

    The contenders alternate in `ROUNDS` rounds and the medians are compared, so a load
    change on a shared machine does not favour whoever ran first.
    """
    with (
        tempfile.TemporaryDirectory(prefix="tessera-bench-commits-") as tmp,
        _server(Path(tmp)) as server,
    ):
        meta_url = ensure_database(server, "bench_commits", reset=True)
        migrate(meta_url)
        pg_url = ensure_database(server, "bench_pgbench", reset=True)
        _pgbench(pg_url, "-i", "-q", "-s", "1")
        svc = _services(meta_url, Path(tmp), pool=8)
        runs: dict[str, list[float]] = {}

        def record(name: str, value: float) -> None:
            runs.setdefault(name, []).append(value)

        users = [Principal(f"u{i}", f"u{i}@b") for i in range(8)]
        alone, shared = Principal("alone", "alone@b"), Principal("shared", "shared@b")
        seeds = _prepare(svc, meta_url, [*users, alone, shared])
        try:
            for _ in range(ROUNDS):
                record("one", _rate(svc, [seeds[alone]], SECONDS))
                record("pg1", _pgbench_tps(pg_url, 1, SECONDS))
                record("eight", _rate(svc, [seeds[u] for u in users], SECONDS))
                record("pg8", _pgbench_tps(pg_url, 8, SECONDS))
                record("one_ns", _rate(svc, [seeds[shared]] * 8, SECONDS))
        finally:
            svc.db.close()
            cast(PostgresChangeFeed, svc.feed).close()
    med = {name: statistics.median(values) for name, values in runs.items()}
    ratio = med["eight"] / med["pg8"] if med["pg8"] else 0.0

    def fig(name: str, key: str) -> Figure:
        spread = "/".join(f"{v:.0f}" for v in runs[key])
        return Figure(name, f"{med[key]:,.0f}  ({spread})")

    print_figures(
        f"commits through the domain service vs pgbench TPC-B (same server; median of "
        f"{ROUNDS} alternating rounds of {SECONDS:.0f} s)",
        [
            fig("commits/s, 1 writer", "one"),
            fig("pgbench TPS, 1 client", "pg1"),
            fig("commits/s, 8 writers (8 users)", "eight"),
            fig("pgbench TPS, 8 clients", "pg8"),
            fig("commits/s, 8 writers (one namespace)", "one_ns"),
            Figure("8 writers / pgbench 8 clients", f"{ratio:.2f}x", ">= 0.50x", ratio >= 0.5),
        ],
    )


if __name__ == "__main__":
    main()
