"""The client's allocator tuning (`tessera_client.memory`)."""

from __future__ import annotations

import platform
import subprocess

import pytest

from tessera_client.memory import tune_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_allocator_is_tuned_without_running_a_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """glibc's mallopt is found among the process's own symbols: no `ldconfig -p`."""

    def no_programs(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"ran a program: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_programs)
    assert tune_allocator() is True
