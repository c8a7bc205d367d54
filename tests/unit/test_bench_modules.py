"""Every benchmark `make bench` runs must at least import: a bench broken by a refactor
(a helper it imported was renamed) would otherwise go unnoticed until someone measures."""

from __future__ import annotations

import importlib

import pytest

from bench.__main__ import PREFIX, discover


@pytest.mark.parametrize("area", discover())
def test_bench_module_imports_and_has_main(area: str) -> None:
    module = importlib.import_module(f"bench.{PREFIX}{area}")
    assert callable(module.main)


def test_every_area_is_discovered() -> None:
    assert {"aws", "blocks", "commits", "longpoll", "maintenance", "sync"} <= set(discover())
