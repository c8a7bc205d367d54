"""Every benchmark `make bench` runs must at least import: a bench broken by a refactor
(a helper it imported was renamed) would otherwise go unnoticed until someone measures."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest

from bench.__main__ import PREFIX, discover
from bench.common import best_of_each, rounds_of_each


@pytest.mark.parametrize("area", discover())
def test_bench_module_imports_and_has_main(area: str) -> None:
    module = importlib.import_module(f"bench.{PREFIX}{area}")
    assert callable(module.main)


def test_every_area_is_discovered() -> None:
    assert {"aws", "blocks", "commits", "longpoll", "maintenance", "sync"} <= set(discover())


def test_rounds_run_the_contenders_in_turn_and_time_each_call() -> None:
    """Round-robin order, one time per contender per round: the pairing the speed-up's
    per-round ratios rely on."""
    calls: list[str] = []
    now = [0.0]
    cost = {"slow": 3.0, "fast": 1.0}

    def contender(name: str) -> Callable[[], None]:
        def run() -> None:
            calls.append(name)
            now[0] += cost[name] * len(calls)  # later rounds take longer: a drifting machine

        return run

    fns = {name: contender(name) for name in cost}
    times = rounds_of_each(fns, rounds=2, clock=lambda: now[0])
    assert calls == ["slow", "fast", "slow", "fast"]
    assert times == {"slow": [3.0, 9.0], "fast": [2.0, 4.0]}
    calls.clear()
    now[0] = 0.0
    assert best_of_each(fns, repeat=2, clock=lambda: now[0]) == {"slow": 3.0, "fast": 2.0}
