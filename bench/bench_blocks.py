"""Block pipeline benchmarks (issue 2): scan vs sha256sum, encode vs restic, codec throughput,
pipeline overhead over its native parts, delta efficiency, peak memory of chunking.

Default sizes are the issue's (1 GiB, 256 MiB, 4 GiB); `TESSERA_BENCH_SCALE=0.1` shrinks them.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import zstandard
from blake3 import blake3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyfastcdc import FastCDC

from bench.common import (
    DATA_DIR,
    VENV_BIN,
    Figure,
    GiB,
    MiB,
    best_of,
    best_of_each,
    children_cpu,
    have,
    human_bytes,
    peak_rss,
    print_figures,
    random_file,
    rounds_of_each,
    run_quiet,
    scale,
    scaled,
    sparse_file,
    text_file,
    warm,
)
from tessera.blocks import (
    AVG_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    codec,
    decode_many,
    default_workers,
    derive_block_key,
    encode_file,
    encode_many,
    iter_chunks,
    scan_file,
)

SECRET = bytes(range(32))
KEY_VERSION = 1
SPEEDUP_ROUNDS = 7  # paired 1-worker / per-core runs of the encode pipeline
OVERHEAD_ROUNDS = 7  # rounds of the pipeline and each of its native parts, round-robin


def main() -> None:
    """Run every block benchmark and print the figures in one table."""
    workers = default_workers()
    print(f"scale {scale()}, {workers} worker(s) = cores available, data in {DATA_DIR}")
    big = random_file("random-1g.bin", scaled(GiB))
    figures: list[Figure] = []
    figures += scan_vs_sha256(big)
    figures += encode_vs_restic(big, workers)
    figures += codec_throughput(workers)
    figures += pipeline_overhead()
    figures += delta_efficiency()
    figures += chunking_peak_memory()
    print_figures(f"Block pipeline ({workers} cores, scale {scale()})", figures)


def log(message: str) -> None:
    print(f"  {message}", flush=True)


def mbps(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:,.0f} MB/s"


# --- tessera blocks vs sha256sum ---------------------------------------------------------


def scan_vs_sha256(path: Path) -> list[Figure]:
    size = path.stat().st_size
    log(f"tessera blocks vs sha256sum on {human_bytes(size)} of random data")
    warm(path)

    def cli() -> None:
        run_quiet([VENV_BIN / "tessera", "blocks", path, "--json"])

    def sha() -> None:
        run_quiet(["sha256sum", path])

    def start() -> None:
        run_quiet([VENV_BIN / "tessera", "--help"])

    wall = best_of_each({"cli": cli, "sha": sha, "start": start})
    t_cli, t_sha, t_start = wall["cli"], wall["sha"], wall["start"]
    cpu = best_of_each({"cli": cli, "sha": sha}, repeat=1, clock=children_cpu)
    cpu_cli, cpu_sha = cpu["cli"], cpu["sha"]
    scans = best_of_each(
        {"one": lambda: scan_file(path, workers=1), "pool": lambda: scan_file(path)}
    )
    t_scan_one, t_scan = scans["one"], scans["pool"]
    ratio = t_cli / t_sha
    return [
        Figure(f"`tessera blocks` {human_bytes(size)} (wall)", f"{t_cli:.2f} s"),
        Figure("`sha256sum` same file (wall)", f"{t_sha:.2f} s"),
        Figure("tessera blocks / sha256sum", f"{ratio:.2f}", "≤ 0.50", ratio <= 0.5),
        Figure("  `tessera --help` (start-up alone)", f"{t_start:.2f} s"),
        Figure("  (tessera blocks - start-up) / sha256sum", f"{(t_cli - t_start) / t_sha:.2f}"),
        Figure("  CPU time: tessera blocks / sha256sum", f"{cpu_cli:.2f} s / {cpu_sha:.2f} s"),
        Figure("scan_file in-process, 1 worker", mbps(size, t_scan_one)),
        Figure("scan_file in-process, a hashing worker per core", mbps(size, t_scan)),
    ]


# --- encode pipeline vs restic -----------------------------------------------------------


def _key_for(block_id: str) -> tuple[int, bytes]:
    return KEY_VERSION, derive_block_key(SECRET, block_id)


def encode_whole_file(path: Path, workers: int) -> int:
    """The encode pipeline: read, chunk, hash, key, compress, encrypt. Returns bytes out."""
    return sum(len(stored) for _ref, stored in encode_file(path, _key_for, workers=workers))


def encode_vs_restic(path: Path, workers: int) -> list[Figure]:
    size = path.stat().st_size
    log(f"encode pipeline vs restic backup on {human_bytes(size)}")
    warm(path)
    # The speed-up is judged per round: a single-worker run here took 1.5-2.3 s for the same
    # GiB minutes apart, so the best of each side compares two different machines.
    times = rounds_of_each(
        {
            "one": lambda: encode_whole_file(path, 1),
            "all": lambda: encode_whole_file(path, workers),
        },
        SPEEDUP_ROUNDS,
    )
    t_one, t_all = min(times["one"]), min(times["all"])
    ratios = [one / all_ for one, all_ in zip(times["one"], times["all"], strict=True)]
    speedup = statistics.median(ratios)
    figures = [
        Figure(f"encode pipeline {human_bytes(size)}, 1 worker (best)", f"{t_one:.2f} s"),
        Figure(f"encode pipeline, {workers} workers (best)", f"{t_all:.2f} s"),
        Figure(
            f"pipeline speed-up, {workers} workers vs 1 (median of {SPEEDUP_ROUNDS} rounds)",
            f"{speedup:.2f}x ({'/'.join(f'{r:.2f}' for r in ratios)})",
            "≥ 1.6x",
            speedup >= 1.6,
        ),
    ]
    if not have("restic"):
        return [*figures, Figure("restic backup", "skipped: restic not installed")]
    repo = DATA_DIR / "restic-repo"
    env = {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(DATA_DIR / "restic-cache")}

    def backup() -> tuple[float, float]:
        """(wall, CPU) seconds of one `restic backup` into a fresh repository."""
        shutil.rmtree(repo, ignore_errors=True)
        run_quiet(["restic", "init", "-q", "-r", repo], env)
        wall, cpu = time.perf_counter(), children_cpu()
        run_quiet(["restic", "backup", "-q", "-r", repo, path], env)
        return time.perf_counter() - wall, children_cpu() - cpu

    runs = [backup() for _ in range(2)]
    shutil.rmtree(repo, ignore_errors=True)
    t_restic, cpu_restic = min(w for w, _ in runs), min(c for _, c in runs)
    # CPU seconds too: on a machine shared with other work, wall time mostly measures that
    # work, and a many-threaded Go program gets a larger share of it than we do.
    cpu_pipe = best_of(lambda: encode_whole_file(path, workers), 1, clock=time.process_time)
    ratio = t_all / t_restic
    return [
        *figures,
        Figure("`restic backup` same file, fresh repo", f"{t_restic:.2f} s"),
        Figure("encode pipeline / restic backup (wall)", f"{ratio:.2f}", "≤ 0.25", ratio <= 0.25),
        Figure(
            "  CPU time: encode pipeline / restic backup",
            f"{cpu_pipe:.2f} s / {cpu_restic:.2f} s = {cpu_pipe / cpu_restic:.2f}",
        ),
    ]


# --- codec throughput --------------------------------------------------------------------


def _blocks(path: Path) -> list[tuple[bytes, str, bytes]]:
    return [(data, ref.id, derive_block_key(SECRET, ref.id)) for ref, data in iter_chunks(path)]


def _drain(many: Callable[[Any, int], Iterator[bytes]], jobs: list[Any], workers: int) -> None:
    for _ in many(jobs, workers):
        pass


def codec_throughput(workers: int) -> list[Figure]:
    figures: list[Figure] = []
    size = scaled(256 * MiB)
    for kind, path in (
        ("incompressible", random_file("random-256m.bin", size)),
        ("text-like", text_file("text-256m.bin", size)),
    ):
        log(f"codec throughput, {kind}, {human_bytes(size)}")
        blocks = _blocks(path)
        jobs = [(d, bid, k, KEY_VERSION) for d, bid, k in blocks]
        stored = list(encode_many(jobs, workers))
        ratio = sum(map(len, stored)) / size
        djobs = [(s, bid, k) for s, (_d, bid, k) in zip(stored, blocks, strict=True)]
        for name, many, work in (("encode", encode_many, jobs), ("decode", decode_many, djobs)):
            t = best_of_each({str(w): partial(_drain, many, work, w) for w in {1, workers}})
            figures.append(Figure(f"{name} {kind}, 1 worker", mbps(size, t["1"])))
            if workers > 1:
                # Reported, not judged: the 1.6x is the whole pipeline's (above). The
                # codec alone on in-memory blocks runs at GB/s per core, where the speed-up
                # is the machine's memory bandwidth (docs/block-format.md).
                up = t["1"] / t[str(workers)]
                figures.append(
                    Figure(
                        f"{name} {kind}, {workers} workers",
                        f"{mbps(size, t[str(workers)])} ({up:.2f}x)",
                    )
                )
        figures.append(Figure(f"stored / plaintext, {kind}", f"{ratio:.3f}"))
    return figures


# --- pipeline overhead over its native parts ---------------------------------------------


def pipeline_overhead() -> list[Figure]:
    """One worker: the whole pipeline on a file vs the native calls it makes, timed alone.

    Everything here runs on one thread, so it is timed in CPU seconds (steady on a busy
    machine, where wall time mostly measures the other work). The pipeline and the parts are
    timed round-robin in one process, so both meet the same allocator and cache state: timed
    first in a fresh process, the pipeline's per-block buffers came from fresh pages (glibc's
    mmap threshold and heap trimming not yet adapted) while the parts ran afterwards on a
    grown heap, and the order alone moved the figure by ~25 points.

    The overhead is judged per round, the pipeline against the sum of the parts timed in the
    same round, and the median of the rounds is reported (as the speed-up is). Summing each
    part's best of all rounds compared the pipeline's best run with a sum of five lucky
    runs taken in different rounds, biased against the pipeline by the VM's noise: the same
    code measured -6 % and +19 % on text-like data (zstd alone moved from 2.0 to 2.5 s).
    """
    figures: list[Figure] = []
    size = scaled(256 * MiB)
    for kind, path in (
        ("incompressible", random_file("random-256m.bin", size)),
        ("text-like", text_file("text-256m.bin", size)),
    ):
        log(f"pipeline overhead, {kind}, {human_bytes(size)}")
        warm(path)
        contenders: dict[str, Callable[[], object]] = {
            "pipeline": partial(encode_whole_file, path, 1),
            **native_parts(path),
        }
        times = rounds_of_each(contenders, OVERHEAD_ROUNDS, clock=time.process_time)
        pipe = times.pop("pipeline")
        natives = [sum(run) for run in zip(*times.values(), strict=True)]
        computes = [n - r for n, r in zip(natives, times["read"], strict=True)]
        over_all = statistics.median(p / n - 1 for p, n in zip(pipe, natives, strict=True))
        over_compute = statistics.median(p / c - 1 for p, c in zip(pipe, computes, strict=True))
        rounds = "/".join(f"{p / n - 1:+.0%}" for p, n in zip(pipe, natives, strict=True))
        detail = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in times.items())
        t_pipe = statistics.median(pipe)
        figures += [
            Figure(f"pipeline {kind}, 1 worker, CPU", f"{t_pipe:.2f} s ({mbps(size, t_pipe)})"),
            Figure(f"  native parts alone, CPU s: {detail}", f"{statistics.median(natives):.2f} s"),
            Figure(
                f"  overhead over read+chunk+hash+zstd+AES ({kind}, median of"
                f" {OVERHEAD_ROUNDS} rounds)",
                f"{over_all:+.0%} ({rounds})",
                "≤ 15 %",
                over_all <= 0.15,
            ),
            Figure(f"  overhead over chunk+hash+zstd+AES only ({kind})", f"{over_compute:+.0%}"),
        ]
    return figures


def native_parts(path: Path) -> dict[str, Callable[[], object]]:
    """Each native step the pipeline performs on `path`, as a call to time alone."""
    data = path.read_bytes()
    view = memoryview(data)

    def read() -> None:
        with io.FileIO(path) as f:
            buf = bytearray(16 * MiB)
            while f.readinto(buf):
                pass

    cdc = FastCDC(AVG_BLOCK_SIZE, min_size=MIN_BLOCK_SIZE, max_size=MAX_BLOCK_SIZE)
    cuts = [(c.offset, c.length) for c in cdc.cut_buf(view)]
    blocks = [view[o : o + n] for o, n in cuts]
    ids = ["b3:" + blake3(b).hexdigest() for b in blocks]
    keys = [derive_block_key(SECRET, i) for i in ids]
    # The exact zstd calls the codec makes: a probe sample per large block, and the whole
    # block when the probe says it is worth it.
    samples = []
    for b in blocks:
        if len(b) > codec.PROBE_THRESHOLD:
            step = len(b) // codec.PROBE_SLICES
            samples.append(
                b"".join(b[i * step : i * step + codec.PROBE_SLICE_SIZE] for i in range(4))
            )
    cctx = zstandard.ZstdCompressor(level=codec.ZSTD_LEVEL)
    chosen = [b for b in blocks if codec._worth_compressing(b)]
    bodies = []
    for b in blocks:
        c = cctx.compress(b) if b in chosen else b
        bodies.append(c if len(c) < len(b) else b)
    nonce = os.urandom(12)
    aads = [b"0123456789" + i.encode() for i in ids]

    def zstd() -> None:
        for s in samples:
            cctx.compress(s)
        for b in chosen:
            cctx.compress(b)

    def aes() -> None:
        for k, body, aad in zip(keys, bodies, aads, strict=True):
            AESGCM(k).encrypt(nonce, body, aad)

    return {
        "read": read,
        "chunk": lambda: sum(1 for _ in cdc.cut_buf(view)),
        "hash": lambda: [blake3(b).digest() for b in blocks],
        "zstd": zstd,
        "AES": aes,
    }


# --- delta efficiency --------------------------------------------------------------------


def delta_efficiency() -> list[Figure]:
    size = scaled(256 * MiB)
    log(f"delta efficiency: 1-byte insert in the middle of {human_bytes(size)}")
    original = random_file("random-256m.bin", size)
    data = original.read_bytes()
    edited_data = data[: size // 2] + b"!" + data[size // 2 :]
    with tempfile.NamedTemporaryFile(dir=DATA_DIR, suffix=".bin") as tmp:
        tmp.write(edited_data)
        tmp.flush()
        before = {b.id for b in scan_file(original).blocks}
        changed = [b for b in scan_file(tmp.name).blocks if b.id not in before]
    cdc_bytes = sum(b.size for b in changed)
    fixed = 4 * MiB
    old_fixed = {blake3(data[i : i + fixed]).digest() for i in range(0, len(data), fixed)}
    fixed_bytes = sum(
        len(edited_data[i : i + fixed])
        for i in range(0, len(edited_data), fixed)
        if blake3(edited_data[i : i + fixed]).digest() not in old_fixed
    )
    return [
        Figure(
            f"1-byte insert, {human_bytes(size)}: FastCDC blocks changed",
            f"{len(changed)} ({human_bytes(cdc_bytes)})",
            "≤ 2 (≤ 8 MiB)",
            len(changed) <= 2 and cdc_bytes <= 8 * MiB,
        ),
        Figure("same edit, fixed 4 MiB blocks changed", human_bytes(fixed_bytes)),
    ]


# --- peak memory ---------------------------------------------------------------------------


# Each measured in a fresh interpreter; the file is sys.argv[1].
_SCAN = "import sys, tessera.blocks as b; b.scan_file(sys.argv[1])"
_ITER = "import sys, tessera.blocks as b\nfor _ in b.iter_chunks(sys.argv[1]): pass"
_ENCODE = (
    "import sys, pathlib, tessera.blocks as b, bench.bench_blocks as bb\n"
    "bb.encode_whole_file(pathlib.Path(sys.argv[1]), b.default_workers())"
)


def chunking_peak_memory() -> list[Figure]:
    size = scaled(4 * GiB, minimum=64 * MiB)
    log(f"peak memory chunking a {human_bytes(size)} file (sparse: no disk used)")
    path = sparse_file("sparse-4g.bin", size)
    py = sys.executable
    try:
        baseline = peak_rss([py, "-c", "import tessera.blocks"])
        scan, chunks, encode = (
            peak_rss([py, "-c", code, path]) for code in (_SCAN, _ITER, _ENCODE)
        )
        cli = peak_rss([VENV_BIN / "tessera", "blocks", path, "--json"])
    finally:
        path.unlink()
    limit = 100 * 1000 * 1000
    return [
        Figure("peak RSS: python + import tessera.blocks", human_bytes(baseline)),
        Figure(
            f"peak RSS: scan_file {human_bytes(size)}", human_bytes(scan), "≤ 100 MB", scan <= limit
        ),
        Figure(
            f"peak RSS: iter_chunks {human_bytes(size)}",
            human_bytes(chunks),
            "≤ 100 MB",
            chunks <= limit,
        ),
        Figure(
            f"peak RSS: `tessera blocks` {human_bytes(size)}",
            human_bytes(cli),
            "≤ 100 MB",
            cli <= limit,
        ),
        Figure(
            f"peak RSS: encode pipeline {human_bytes(size)}, a worker per core", human_bytes(encode)
        ),
    ]
