"""The container of everything the domain services need (the ports plus settings)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tessera.metadata import Database
from tessera.ports import BlockStore, ChangeFeed, Clock, KeyService, SystemClock
from tessera.settings import Settings


@dataclass
class Services:
    """Wired once per process (Lambda cold start, local gateway, test) and passed down."""

    db: Database
    block_store: BlockStore
    keys: KeyService
    feed: ChangeFeed
    settings: Settings = field(default_factory=Settings)
    clock: Clock = field(default_factory=SystemClock)
    # Whether an error an adapter let through is a backend failing for a while (AWS
    # throttling, a timeout), which the API answers 503 + Retry-After instead of 500.
    is_transient: Callable[[BaseException], bool] = field(default=lambda _exc: False)
