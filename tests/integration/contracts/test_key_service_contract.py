"""The KeyService contract: stable per-version block keys (key file, KMS)."""

from __future__ import annotations

import pytest

from .harnesses import KeyServiceHarness

BLOCK = "b3:" + "ab" * 32


def test_keys_are_stable_and_distinct(key_service_harness: KeyServiceHarness) -> None:
    keys = key_service_harness.open()
    version, key = keys.block_key(BLOCK)
    assert version == keys.current_version()
    assert len(key) == 32
    assert keys.block_key(BLOCK) == (version, key)
    assert key_service_harness.open().block_key(BLOCK, version) == (version, key)
    assert keys.block_key("b3:" + "cd" * 32, version)[1] != key


def test_rotation_keeps_old_versions(key_service_harness: KeyServiceHarness) -> None:
    if key_service_harness.rotate is None:
        pytest.skip("this backend cannot rotate from a test")
    keys = key_service_harness.open()
    old_version, old_key = keys.block_key(BLOCK)
    new_version = key_service_harness.rotate()
    assert new_version != old_version
    fresh = key_service_harness.open()
    assert fresh.current_version() == new_version
    assert fresh.block_key(BLOCK)[0] == new_version
    assert fresh.block_key(BLOCK)[1] != old_key
    assert fresh.block_key(BLOCK, old_version) == (old_version, old_key)
    assert fresh.versions() == sorted([old_version, new_version])


def test_unknown_version_is_an_error(key_service_harness: KeyServiceHarness) -> None:
    keys = key_service_harness.open()
    with pytest.raises(KeyError):
        keys.block_key(BLOCK, 10_000)


def test_known_versions(key_service_harness: KeyServiceHarness) -> None:
    """`knows` answers from what the service holds: callers ask it before loading a version
    that came from outside (a cursor's)."""
    keys = key_service_harness.open()
    current = keys.current_version()
    assert current in keys.versions()
    assert keys.knows(current)
    assert not keys.knows(10_000) and not keys.knows(0) and not keys.knows(-1)
