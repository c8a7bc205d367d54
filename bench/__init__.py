"""Tessera benchmarks: `make bench` (or `python -m bench [AREA ...]`) runs every
`bench/bench_<area>.py` module's `main()` and each prints its figures.

Timing targets live here, never in timed tests. `TESSERA_BENCH_SCALE=0.1` shrinks the data
sizes for a quick run; generated data is cached under `bench/.data/` (gitignored).
"""
