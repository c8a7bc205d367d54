"""`lambda_init`: no collections while a function's init runs, its objects frozen after."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tessera.coldstart import lambda_init


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_init_runs_without_collections_and_freezes_what_it_built() -> None:
    before = gc.get_freeze_count()
    with lambda_init():
        assert not gc.isenabled()
        built = [[n] for n in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(built)


def test_a_failed_init_turns_the_collector_back_on() -> None:
    with pytest.raises(RuntimeError, match="no settings"), lambda_init():
        raise RuntimeError("no settings")
    assert gc.isenabled()


def test_a_collector_turned_off_before_stays_off() -> None:
    gc.disable()
    with lambda_init():
        pass
    assert not gc.isenabled()
