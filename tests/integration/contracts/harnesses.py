"""The harnesses the port contract suites run against: an adapter under test plus what the
suite needs to know about it (see `conftest.py` for how adapters are registered).

They live apart from `conftest.py` so the AWS factories can import them without an import
cycle through `conftest.py` (which imports those factories)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tessera.ports import BlockStore, ChangeFeed, KeyService


class _Skips:
    """A harness's checks its backend cannot perform: check name -> why (skipped)."""

    unsupported: dict[str, str]

    def require(self, check: str) -> None:
        """Skip the calling test when this backend cannot perform `check`."""
        if check in self.unsupported:
            pytest.skip(self.unsupported[check])


@dataclass
class BlockStoreHarness(_Skips):
    """A block store under test, plus what the suite needs to know about it."""

    store: BlockStore
    #: the exception `get`/`copy` raise for a cold object that is not restored
    not_restored_error: type[Exception]
    unsupported: dict[str, str] = field(default_factory=dict)


@dataclass
class ChangeFeedHarness(_Skips):
    """A change feed under test."""

    feed: ChangeFeed
    unsupported: dict[str, str] = field(default_factory=dict)


@dataclass
class KeyServiceHarness:
    """A key service under test: `open()` gives a new instance over the same key material."""

    open: Callable[[], KeyService]
    #: add a key version (rotation) and return it; None when the backend cannot rotate
    rotate: Callable[[], int] | None = None
