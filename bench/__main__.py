"""Run the benchmarks: every `bench/bench_<area>.py` module's `main()`, in name order.

`python -m bench` runs them all; `python -m bench blocks sync` only those areas. A bench that
crashes is reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

PREFIX = "bench_"


def discover() -> list[str]:
    """The areas with a `bench/bench_<area>.py` module, sorted."""
    here = str(Path(__file__).parent)
    return sorted(
        m.name[len(PREFIX) :]
        for m in pkgutil.iter_modules([here])
        if m.name.startswith(PREFIX) and not m.ispkg
    )


def main(argv: list[str]) -> int:
    areas = discover()
    chosen = argv or areas
    unknown = sorted(set(chosen) - set(areas))
    if unknown:
        print(f"unknown bench area(s): {', '.join(unknown)}; known: {', '.join(areas)}")
        return 2
    failed: list[str] = []
    for area in chosen:
        print(f"\n=== bench {area} ===", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(f"bench.{PREFIX}{area}").main()
        except Exception:
            traceback.print_exc()
            failed.append(area)
        print(f"=== bench {area}: {time.perf_counter() - start:.1f} s ===", flush=True)
    if failed:
        print(f"\nbenchmarks that crashed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
