"""Helpers shared by the benchmarks: data files, timing, peak memory, figure tables."""

from __future__ import annotations

import os
import random
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

DATA_DIR = Path(__file__).parent / ".data"
MiB = 1024 * 1024
GiB = 1024 * MiB
VENV_BIN = Path(sys.executable).parent
_VOCAB = (
    "the of and to in is that it for on with as was at by be this are from or have an they "
    "which one you were all we there can been has more if will their would what about so "
    "sync file folder block device share server client upload download commit revision key "
    "namespace journal cursor change version storage metadata encrypt compress chunk hash"
)
_WORDS = _VOCAB.split()


def scale() -> float:
    """`TESSERA_BENCH_SCALE` (default 1): multiplies every data size, for quick runs."""
    return float(os.environ.get("TESSERA_BENCH_SCALE", "1"))


def scaled(size: int, minimum: int = 4 * MiB) -> int:
    """`size` times the bench scale, at least `minimum`, rounded to whole MiB."""
    return max(minimum, int(size * scale()) // MiB * MiB)


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def random_file(name: str, size: int) -> Path:
    """A file of `size` random bytes under bench/.data (made once, reused while its size fits)."""
    return _cached(name, size, lambda n: os.urandom(n))


def text_file(name: str, size: int) -> Path:
    """A file of `size` bytes of text-like data (random words and numbers, ~3:1 with zstd)."""
    rng = random.Random(size)

    def piece(n: int) -> bytes:
        words = rng.choices(_WORDS, k=n // 5)
        for i in range(0, len(words), 13):
            words[i] = f"{rng.randrange(10**6)}\n"
        return " ".join(words).encode()[:n].ljust(n, b" ")

    return _cached(name, size, piece)


def sparse_file(name: str, size: int) -> Path:
    """A file of `size` bytes that takes no disk (a hole reads as zeros)."""
    path = DATA_DIR / name
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    return path


def _cached(name: str, size: int, make: Callable[[int], bytes]) -> Path:
    path = DATA_DIR / name
    if path.exists() and path.stat().st_size == size:
        return path
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(make(n))
            left -= n
    tmp.replace(path)
    return path


def warm(path: Path) -> None:
    """Read `path` once so every contender then finds it in the page cache."""
    with path.open("rb", buffering=0) as f:
        buf = bytearray(16 * MiB)
        while f.readinto(buf):
            pass


def best_of(
    fn: Callable[[], object], repeat: int = 3, clock: Callable[[], float] = time.perf_counter
) -> float:
    """The shortest time of `repeat` calls of `fn`, in seconds of `clock` (default: wall).

    `clock=time.process_time` measures this process's CPU time instead: on a machine shared
    with other work it is far steadier than wall time for single-threaded code.
    """
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def rounds_of_each(
    fns: Mapping[str, Callable[[], object]],
    rounds: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Each contender's time in each of `rounds` rounds, run round-robin so that a change in
    the machine's load during the measurement hits them all alike. Times of one round were
    taken seconds apart: their ratio is the steadiest comparison this VM allows, whose
    speed drifts by up to a third within minutes."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def best_of_each(
    fns: Mapping[str, Callable[[], object]],
    repeat: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """`best_of` for several contenders, run round-robin (`rounds_of_each`)."""
    return {name: min(t) for name, t in rounds_of_each(fns, repeat, clock).items()}


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by this process's finished children; use
    as `clock` of `best_of` to time subprocesses by their CPU time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_quiet(cmd: Sequence[str | Path], env: dict[str, str] | None = None) -> None:
    """Run `cmd`, discarding its output; raise with its stderr when it fails."""
    r = subprocess.run(
        [str(c) for c in cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if r.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr.decode()[-2000:]}")


# ru_maxrss of a child forked from a big process starts at the parent's peak (Linux copies
# the mm's high-water mark on fork and keeps it across exec). So a small fresh interpreter
# starts `cmd` and reports its child's peak: the floor is then that small process, not us.
_RSS_WRAPPER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "print(usage.ru_maxrss * 1024 if os.waitstatus_to_exitcode(status) == 0 else -1)\n"
)


def peak_rss(cmd: Sequence[str | Path]) -> int:
    """Peak resident memory (bytes) of a subprocess running `cmd` (Linux)."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_WRAPPER, *map(str, cmd)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    peak = int(out.strip())
    if peak < 0:
        raise RuntimeError(f"{cmd} failed")
    return peak


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


@dataclass(frozen=True)
class Figure:
    """One measured figure, with its target and whether it met it (None: no target)."""

    name: str
    value: str
    target: str = ""
    ok: bool | None = None


def print_figures(title: str, figures: Sequence[Figure]) -> None:
    """Print `figures` as one table, side by side with their targets."""
    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("measured", justify="right")
    table.add_column("target", justify="right")
    table.add_column("", justify="center")
    for f in figures:
        verdict = "" if f.ok is None else ("[green]met[/]" if f.ok else "[red]MISSED[/]")
        table.add_row(f.name, f.value, f.target, verdict)
    Console(width=max(120, shutil.get_terminal_size().columns)).print(table)
