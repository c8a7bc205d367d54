"""Maintenance figures (issue 6).

1. Dedup: 100 users upload the same 50 MiB file through the real flow (start upload, PUT
   every block to its staging key — none of them may read another's copy — commit);
   dedup-verify runs every 10 users, as the scheduler would. Target: what stays stored
   afterwards (once gc has deleted the settled staged copies) is <= 1.05 x 50 MiB. (Each
   block is encoded once and the same bytes PUT by every user — the server cannot tell,
   and it still decrypts and re-hashes every copy.)
2. gc over 1,000,000 blocks of synthetic metadata, bulk-loaded with COPY: 166k files of 5
   blocks (a tenth of them in the trash for 60 days, a twentieth with a superseded
   90-day-old version of 5 more blocks) and 125k blocks unreferenced for 2 days (12.5%
   garbage). Target: the whole gc workflow in <= 60 s, while a concurrent committer bumping
   refcounts of random blocks (the row locks a commit takes) never waits more than 100 ms.

PostgreSQL: `DATABASE_URL` when set, else an embedded pgserver started here (stopped after).
`TESSERA_BENCH_SCALE` scales the file size and the block count.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import secrets
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg

from bench.bench_commits import _server
from bench.common import Figure, MiB, human_bytes, print_figures, random_file, scale, scaled
from tessera.adapters.local import FilesystemBlockStore, KeyFileKeyService, PostgresChangeFeed
from tessera.blocks import encode_file, scan_file
from tessera.domain import commits, uploads
from tessera.domain.models import CommitRequest, UploadStartRequest, UploadUrlsRequest
from tessera.domain.services import Services
from tessera.local.postgres import ensure_database
from tessera.maintenance import MaintenanceContext, MaintenanceSettings, run_workflow
from tessera.metadata import Database, migrate
from tessera.ports import Principal

USERS = 100
DEDUP_EVERY = 10


def bench_dedup(url: str, work: Path) -> list[Figure]:
    size = scaled(50 * MiB)
    path = random_file(f"dedup-{size}.bin", size)
    manifest = scan_file(path)
    db = Database(url, min_size=1, max_size=4)
    feed = PostgresChangeFeed(url)
    store = FilesystemBlockStore(work / "blocks", "http://127.0.0.1:9", secrets.token_bytes(32))
    keys = KeyFileKeyService(work / "keys.json")
    settings = MaintenanceSettings()
    svc = Services(db=db, block_store=store, keys=keys, feed=feed, settings=settings)
    ctx = MaintenanceContext.build(db=db, store=store, keys=keys, feed=feed, settings=settings)
    kv, _ = keys.block_key(manifest.blocks[0].id)
    encoded = {ref.id: stored for ref, stored in encode_file(path, lambda b: keys.block_key(b, kv))}
    spec = [{"id": b.id, "size": b.size} for b in manifest.blocks]
    upload_s = dedup_s = 0.0
    verified = 0
    try:
        for i in range(USERS):
            who = Principal(f"bench-user-{i}", f"user{i}@bench.example")
            started = time.perf_counter()
            begun = uploads.start_upload(
                svc,
                who,
                UploadStartRequest.model_validate(
                    {
                        "files": [
                            {
                                "path": "/big.bin",
                                "size": manifest.size,
                                "content_hash": manifest.content_hash,
                                "blocks": spec,
                            }
                        ]
                    }
                ),
            )
            blocks = [
                {
                    "id": n.id,
                    "size": len(encoded[n.id]),
                    "sha256": base64.b64encode(hashlib.sha256(encoded[n.id]).digest()).decode(),
                }
                for n in begun.needed
            ]
            uploads.upload_urls(
                svc,
                who,
                UploadUrlsRequest.model_validate({"upload_id": begun.upload_id, "blocks": blocks}),
            )
            for i, n in enumerate(begun.needed):
                store.put(uploads.staging_key(begun.upload_id, n.id, i), encoded[n.id])
            commits.commit(
                svc,
                who,
                CommitRequest.model_validate(
                    {
                        "path": "/big.bin",
                        "blocks": spec,
                        "size": manifest.size,
                        "content_hash": manifest.content_hash,
                        "upload_id": begun.upload_id,
                    }
                ),
            )
            upload_s += time.perf_counter() - started
            if (i + 1) % DEDUP_EVERY == 0:
                started = time.perf_counter()
                verified += run_workflow(ctx, "dedup").to_dict()["verified"]
                dedup_s += time.perf_counter() - started
        # settled staged copies stay until gc, past the grace (issued URLs may use them):
        # measure the steady state after that gc
        grace = timedelta(seconds=ctx.settings.settled_copy_grace_s + 60)
        run_workflow(ctx, "gc", as_of=datetime.now(UTC) + grace)
        stored = sum(h.size for k in store.list_keys("") if (h := store.head(k)) is not None)
    finally:
        feed.close()
        db.close()
    ratio = stored / size
    block_mib = size / len(spec) / MiB
    return [
        Figure(f"{USERS} users x {human_bytes(size)}: stored after dedup", human_bytes(stored)),
        Figure("  stored / file size", f"{ratio:.3f}", "<= 1.05", ratio <= 1.05),
        Figure(
            "  dedup-verify throughput",
            f"{verified} copies, {verified * block_mib / max(dedup_s, 1e-9):.0f} MiB/s",
        ),
        Figure("  client upload path (100 users)", f"{upload_s:.1f} s"),
    ]


def _load(url: str, n_blocks: int) -> dict[str, int]:
    """Bulk-load synthetic metadata with COPY; returns what was loaded."""
    files = n_blocks // 6
    trashed, versioned = files // 10, files // 20
    unreferenced = n_blocks - files * 5 - versioned * 5
    now = datetime.now(UTC)
    ids = iter(f"b3:{i:064x}" for i in range(n_blocks))
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = off")
        with cur.copy(
            "COPY files (ns_id, file_id, path_key, parent_key, path_display, kind, latest_rev,"
            " is_deleted, deleted_at) FROM STDIN"
        ) as cp:
            for f in range(files):
                rev = 2 if f < versioned else 1
                gone = f >= files - trashed
                cp.write_row(
                    (
                        1,
                        f"id:{f}",
                        f"/f{f}",
                        "/",
                        f"/f{f}",
                        "file",
                        rev,
                        gone,
                        now - timedelta(days=60) if gone else None,
                    )
                )
        with cur.copy(
            "COPY file_versions (ns_id, file_id, rev, size, content_hash, author_id, journal_seq,"
            " path_display, server_time) FROM STDIN"
        ) as cp:
            for f in range(files):
                if f < versioned:
                    cp.write_row(
                        (1, f"id:{f}", 1, 5, "b3:0", "u", 0, f"/f{f}", now - timedelta(days=90))
                    )
                cp.write_row(
                    (
                        1,
                        f"id:{f}",
                        2 if f < versioned else 1,
                        5,
                        "b3:0",
                        "u",
                        0,
                        f"/f{f}",
                        now - timedelta(days=60),
                    )
                )
        refs: list[str] = []
        with cur.copy(
            "COPY version_blocks (ns_id, file_id, rev, ordinal, block_id, size) FROM STDIN"
        ) as cp:
            for f in range(files):
                revs = (1, 2) if f < versioned else (1,)
                for rev in revs:
                    for o in range(5):
                        bid = next(ids)
                        refs.append(bid)
                        cp.write_row((1, f"id:{f}", rev, o, bid, 1))
        with cur.copy(
            "COPY blocks (block_id, size, stored_size, key_version, refcount, state, zero_since,"
            " created_at, updated_at) FROM STDIN"
        ) as cp:
            old = now - timedelta(days=2)
            for bid in refs:
                cp.write_row((bid, 1, 40, 1, 1, "live", None, old, old))
            for _ in range(unreferenced):
                cp.write_row((next(ids), 1, 40, 1, 0, "live", old, old, old))
        conn.commit()
        conn.execute("ANALYZE")
    return {
        "files": files,
        "trashed": trashed,
        "versioned": versioned,
        "unreferenced": unreferenced,
        "blocks": n_blocks,
    }


def _postgres_processes(db: Database) -> list[psutil.Process]:
    """The server's postmaster and backends (to account their CPU)."""
    with db.pool.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    postmaster = psutil.Process(int(row[0])).parent()
    assert postmaster is not None
    return [postmaster, *postmaster.children()]


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def bench_gc(url: str, work: Path) -> list[Figure]:
    n_blocks = max(10_000, int(1_000_000 * scale()) // 10 * 10)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    loaded = _load(url, n_blocks)
    load_s = time.perf_counter() - started
    db = Database(url, min_size=1, max_size=4)
    store = FilesystemBlockStore(work / "gc-blocks", "http://127.0.0.1:9", secrets.token_bytes(32))
    ctx = MaintenanceContext.build(
        db=db, store=store, keys=KeyFileKeyService(work / "keys.json"), feed=None
    )
    waits: list[float] = []  # statement latencies (lock waits plus a busy machine's noise)
    blocked = [0]  # bumps that waited more than 100 ms for a row lock (lock_timeout)
    stop = threading.Event()

    def committer() -> None:
        rng = random.Random(7)
        bump = (
            "UPDATE blocks SET refcount = refcount + 1, zero_since = NULL WHERE block_id = ANY(%s)"
        )
        with psycopg.connect(url) as conn:
            while not stop.is_set():
                ids = sorted(f"b3:{rng.randrange(n_blocks):064x}" for _ in range(5))
                conn.execute("SET LOCAL lock_timeout = '100ms'")
                t0 = time.perf_counter()
                try:
                    conn.execute(bump, (ids,))
                except psycopg.errors.LockNotAvailable:
                    blocked[0] += 1
                    conn.rollback()
                    conn.execute(bump, (ids,))
                waits.append(time.perf_counter() - t0)
                conn.rollback()  # measure the waits without changing gc's work
                time.sleep(0.01)

    thread = threading.Thread(target=committer, daemon=True)
    thread.start()
    try:
        postgres = _postgres_processes(db)
        pg_cpu = _cpu(postgres)
        cpu = time.process_time()
        started = time.perf_counter()
        result = run_workflow(ctx, "gc").to_dict()
        gc_s = time.perf_counter() - started
        cpu = time.process_time() - cpu
        pg_cpu = _cpu(postgres) - pg_cpu
    finally:
        stop.set()
        thread.join()
        db.close()
    longest = max(waits) * 1000
    return [
        Figure(
            f"gc over {n_blocks:,} blocks (loaded by COPY in {load_s:.0f} s)",
            f"{gc_s:.1f} s",
            "<= 60 s",
            gc_s <= 60,
        ),
        Figure(
            "  CPU used: gc process / PostgreSQL (load average at start)",
            f"{cpu:.0f} s / {pg_cpu:.0f} s ({load:.1f})",
        ),
        Figure(
            "  purged: trash files / versions",
            f"{result['trash_files_purged']:,} / {result['versions_purged']:,}",
            f"{loaded['trashed']:,} / {loaded['trashed'] + loaded['versioned']:,}",
            result["trash_files_purged"] == loaded["trashed"]
            and result["versions_purged"] == loaded["trashed"] + loaded["versioned"],
        ),
        Figure(
            "  blocks deleted",
            f"{result['blocks_deleted']:,}",
            f"{loaded['unreferenced']:,}",
            result["blocks_deleted"] == loaded["unreferenced"],
        ),
        Figure(
            f"  concurrent committer: bumps that waited > 100 ms for a lock (of {len(waits):,})",
            f"{blocked[0]}",
            "0",
            blocked[0] == 0,
        ),
        Figure("  concurrent committer: slowest bump, lock wait + CPU", f"{longest:.1f} ms"),
    ]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-maint-") as tmp:
        work = Path(tmp)
        with _server(work) as server:
            url = ensure_database(server, "bench_maintenance", reset=True)
            migrate(url)
            figures = bench_dedup(url, work)
            url = ensure_database(server, "bench_maintenance_gc", reset=True)
            migrate(url)
            figures += bench_gc(url, work)
    print_figures("maintenance (issue 6)", figures)


if __name__ == "__main__":
    main()
