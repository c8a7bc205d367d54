"""Commits per second through the domain service (tessera.domain.commits.commit) with 1 and
8 concurrent writers, beside pgbench's TPC-B on the same PostgreSQL with the same client
count. Target (issue 3): >= 0.5 x pgbench's TPS at 8 writers.

Each writer is a thread (the local gateway serves requests on threads of one process; on
this 2-core machine processes would only take CPU from PostgreSQL), committing as its own
user (own root namespace, as real clients are) new small files whose one block it can
already read, so the figure is the metadata path: view, block check, file row lock, version
+ block list, refcounts, journal, outbox, NOTIFY — and the change-feed publish after commit.
A second 8-writer figure has every writer in ONE namespace (they serialise on its journal
seq, like TPC-B's single branch row at scale 1).

PostgreSQL: `DATABASE_URL` when set, else an embedded pgserver started here (stopped after).
`TESSERA_BENCH_SECONDS` (default 4) sets each run's length, `TESSERA_BENCH_ROUNDS`
(default 3) the number of alternating rounds.
"""

from __future__ import annotations

import dataclasses
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from psycopg.conninfo import conninfo_to_dict

from bench.common import Figure, print_figures
from tessera.adapters.local import FilesystemBlockStore, KeyFileKeyService, PostgresChangeFeed
from tessera.blocks import block_id, content_hash
from tessera.domain import commits
from tessera.domain.models import BlockSpec, CommitRequest
from tessera.domain.services import Services
from tessera.local.postgres import ensure_database
from tessera.metadata import Database, migrate
from tessera.ports import ChangeEvent, ChangeFeed, Principal
from tessera.settings import Settings

PGBENCH = "/usr/bin/pgbench"
SECONDS = float(os.environ.get("TESSERA_BENCH_SECONDS", "4"))
ROUNDS = int(os.environ.get("TESSERA_BENCH_ROUNDS", "3"))


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


def _seed(svc: Services, who: Principal) -> tuple[str, int]:
    """Give `who` one readable block (uploaded through the real flow); its id and size."""
    from tests.integration.conftest import put_file

    data = f"bench seed of {who.user_id}".encode()
    put_file(svc, who, "/seed", data)
    return block_id(data), len(data)


def _services(meta_url: str, root: Path, *, pool: int) -> Services:
    """The domain's ports on the local adapters, as the local cloud wires them."""
    return Services(
        db=Database(meta_url, min_size=1, max_size=pool),
        block_store=FilesystemBlockStore(root / "blocks", "http://bench", b"b" * 32),
        keys=KeyFileKeyService(root / "keys.json"),
        feed=PostgresChangeFeed(meta_url),
        settings=Settings(database_url=meta_url),
    )


def _rate(
    svc: Services, seeds: list[tuple[Principal, str, int]], seconds: float, *, publish: bool = True
) -> float:
    """Commits per second of len(seeds) writer threads (writer i commits as seeds[i]'s user).

    Threads in one process, as the local gateway serves requests; the feed's publish on or off.
    """
    feed = svc.feed if publish else _NoPublish()
    run_svc = dataclasses.replace(svc, feed=feed)
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
                commits.commit(
                    run_svc,
                    who,
                    CommitRequest(
                        path=f"{prefix}/f{n}",
                        blocks=[BlockSpec(id=bid, size=size)],
                        size=size,
                        content_hash=content_hash([bid]),
                    ),
                )
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

        def seeds(users: list[Principal]) -> list[tuple[Principal, str, int]]:
            made = {u.user_id: _seed(svc, u) for u in users}
            return [(u, *made[u.user_id]) for u in users]

        try:
            for r in range(ROUNDS):
                record("one", _rate(svc, seeds([Principal(f"s{r}", f"s{r}@b")]), SECONDS))
                record("pg1", _pgbench_tps(pg_url, 1, SECONDS))
                users = [Principal(f"u{r}-{i}", f"u{r}-{i}@b") for i in range(8)]
                record("eight", _rate(svc, seeds(users), SECONDS))
                record("pg8", _pgbench_tps(pg_url, 8, SECONDS))
                shared = seeds([Principal(f"shared{r}", f"shared{r}@b")]) * 8
                record("one_ns", _rate(svc, shared, SECONDS))
                # The local feed's publish is a second transaction per commit (the commit's
                # own NOTIFY already woke the long-polls): what it costs.
                quiet = [Principal(f"q{r}-{i}", f"q{r}-{i}@b") for i in range(8)]
                record("no_publish", _rate(svc, seeds(quiet), SECONDS, publish=False))
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
            fig("commits/s, 8 writers (8 users), no feed publish", "no_publish"),
            Figure("8 writers / pgbench 8 clients", f"{ratio:.2f}x", ">= 0.50x", ratio >= 0.5),
        ],
    )


if __name__ == "__main__":
    main()
