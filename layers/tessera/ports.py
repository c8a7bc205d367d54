"""The interfaces the domain needs (DESIGN §2). Adapters live in `tessera.adapters.{local,aws}`.

Shape borrowed from Powertools' idempotency persistence: an abstract base holds the shared
logic, each backend implements a few small methods. Every adapter of a port passes the same
contract tests (`tests/integration/contracts/`).
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from tessera.blocks.ids import derive_block_key, key_fingerprint

# ---------------------------------------------------------------------------------------
# Blocks


class StorageTier(StrEnum):
    """Where a stored block lives: `hot` is readable now, `cold` needs a restore first."""

    HOT = "hot"
    COLD = "cold"


@dataclass(frozen=True)
class PresignedRequest:
    """A request the client may make directly against the block store, without credentials."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    expires_at: datetime | None = None


@dataclass(frozen=True)
class StoredObject:
    """What the block store knows of one stored (encoded) block."""

    key: str
    size: int
    tier: StorageTier = StorageTier.HOT
    restoring: bool = False  # a restore from the cold tier is under way
    restored: bool = False  # a cold object has a readable restored copy


@dataclass(frozen=True)
class EarlierVersion:
    """A version of an object the store kept when the object was overwritten or deleted
    (S3 bucket versioning: a noncurrent version), for repair to bring back."""

    version_id: str
    size: int
    tier: StorageTier = StorageTier.HOT


class BlockStore(ABC):
    """Stores encoded blocks (compressed + encrypted, never plaintext) under string keys.

    Keys: `blocks/<hex>` for verified content-addressed blocks,
    `staging/<upload_id>/<ordinal>-<hex>` for blocks uploaded in an upload session and not
    yet verified (`tessera.domain.object_keys`).
    """

    @abstractmethod
    def presign_put(
        self, key: str, *, size: int, sha256: bytes, expires_in: int = 900
    ) -> PresignedRequest:
        """A PUT the store accepts only with exactly `size` bytes whose SHA-256 is `sha256`."""

    def presign_puts(
        self, puts: Sequence[tuple[str, int, bytes]], *, expires_in: int = 900
    ) -> list[PresignedRequest]:
        """`presign_put` of each (key, size, sha256), in order; a store that signs a batch
        faster than one URL at a time overrides it."""
        return [
            self.presign_put(key, size=size, sha256=sha256, expires_in=expires_in)
            for key, size, sha256 in puts
        ]

    @abstractmethod
    def presign_get(self, key: str, *, expires_in: int = 900) -> PresignedRequest:
        """A GET of the object at `key`, valid for `expires_in` seconds (at most 900)."""

    @abstractmethod
    def head(self, key: str) -> StoredObject | None:
        """The object's size and tier, or None when there is no object at `key`."""

    def sizes(self, keys: Sequence[str]) -> dict[str, int]:
        """The size of each of `keys` that has an object (how a commit checks the blocks
        it staged): a `head` each, a stat on a local disk; a store whose requests cost more
        (S3) overrides it."""
        found: dict[str, int] = {}
        for key in keys:
            stored = self.head(key)
            if stored is not None:
                found[key] = stored.size
        return found

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object (blocks are at most a few MiB). Raises KeyError when absent."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store `data` at `key` (server-side writes: promotion, repair, tests)."""

    @abstractmethod
    def copy(self, src: str, dst: str, *, version: str | None = None) -> None:
        """Copy an object within the store (S3 CopyObject); `dst` ends up hot. With
        `version`, the copy is of that earlier version of `src` (`earlier_versions`)."""

    @abstractmethod
    def undelete(self, key: str) -> bool:
        """Bring back what a delete of `key` removed, in its tier, when the store kept it
        (S3: remove the delete markers over its newest version); True when `key` has an
        object now that it had none. A key with an object is left alone (False)."""

    @abstractmethod
    def earlier_versions(self, key: str) -> list[EarlierVersion]:
        """The versions of `key` the store kept when it was overwritten or deleted, newest
        first (none once they expire): what a repair can copy back."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object at `key`; deleting a missing key is not an error."""

    @abstractmethod
    def list_sizes(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under `prefix`, in no particular order; or, with
        `start_after` or `limit`, in key order, of the first `limit` keys after
        `start_after` (ListObjectsV2's StartAfter and MaxKeys)."""

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key under `prefix`, in no particular order."""
        return (key for key, _size in self.list_sizes(prefix))

    @abstractmethod
    def set_tier(self, key: str, tier: StorageTier) -> None:
        """Move an object between the hot and the cold tier."""

    @abstractmethod
    def restore(self, key: str, *, days: int = 7) -> None:
        """Start making a cold object readable again (idempotent)."""


# ---------------------------------------------------------------------------------------
# Keys


class KeyRefused(Exception):
    """What a `KeyService.watch` check raises for a secret it refuses (not for a failure
    to check): remembered for `KeyService.REFUSED_S`, so each use meanwhile costs no
    secret-store call."""


class KeyService(ABC):
    """Holds the versioned block-key secrets and derives per-block keys (DESIGN §3).

    `K = HMAC-SHA256(secret[key_version], block_id)`. Backends only load secrets.
    """

    #: How long a refused secret stays refused before it is loaded and checked again:
    #: every request while keys are refused cost a secret-store call and a check, and the
    #: calls of every function together outran SSM's quota; a fix takes minutes anyway.
    REFUSED_S = 60.0

    def __init__(self) -> None:
        self._cache: dict[int, bytes] = {}
        self._vouch: Callable[[int, bytes], None] | None = None
        self._refused: dict[int, tuple[float, KeyRefused]] = {}  # version → (until, why)

    @abstractmethod
    def current_version(self) -> int:
        """The key version new blocks are encrypted under."""

    @abstractmethod
    def _load_secret(self, version: int) -> bytes:
        """The 32-byte secret of `version`; KeyError when the version is unknown."""

    @abstractmethod
    def versions(self) -> list[int]:
        """Every key version there is, oldest first, from what the backend already holds
        (no call to the secret store per question)."""

    def knows(self, version: int) -> bool:
        """Whether `version` is a key version. Ask before loading a version that came from
        outside (a cursor's): loading an unknown one can cost a secret-store call."""
        return version in self.versions()

    def secret(self, version: int) -> bytes:
        """The secret of `version`, loaded once per process (once per cold start on Lambda)
        unless a `watch` check refuses it: then loaded and checked again `REFUSED_S` on."""
        if version not in self._cache:
            refused = self._refused.get(version)
            if refused is not None and time.time() < refused[0]:  # wall time, as Lambda's
                raise copy.copy(refused[1])  # a fresh one per request (threads at once)
            secret = self._load_secret(version)
            if self._vouch is not None:
                try:
                    self._vouch(version, secret)
                except KeyRefused as why:
                    # kept without its traceback and cause: they hold the check's frames
                    self._refused[version] = (time.time() + self.REFUSED_S, copy.copy(why))
                    raise
            self._cache[version] = secret
        return self._cache[version]

    def watch(self, vouch: Callable[[int, bytes], None]) -> None:
        """Pass each secret loaded from now on to `vouch` (version, secret) before it is
        kept or used; what `vouch` raises, `secret` raises, and a `KeyRefused` it keeps
        raising for `REFUSED_S` (`tessera.metadata.key_check.guard_block_keys`)."""
        self._vouch = vouch

    def refresh(self) -> None:
        """Learn of a rotation another process made, where the backend caches what it
        listed (at most once a minute). Call it where no transaction or lock is held: a
        Lambda invocation's start. The key file is read again at each call anyway."""
        return None  # by default nothing is cached, so there is nothing to refresh

    def load_current(self) -> None:
        """Load the current version's secret now: a Lambda's init calls this so that its
        first request (every sync starts with a cursor or an upload) does not wait for it."""
        self.secret(self.current_version())

    def block_key(self, block_id: str, version: int | None = None) -> tuple[int, bytes]:
        """(key_version, 32-byte AES key) for `block_id`."""
        v = self.current_version() if version is None else version
        return v, derive_block_key(self.secret(v), block_id)

    def fingerprints(self) -> dict[int, bytes]:
        """Each key version's fingerprint (`tessera.blocks.key_fingerprint`), to compare with
        the ones the metadata recorded (`tessera.metadata.key_check`)."""
        return {v: key_fingerprint(self.secret(v)) for v in self.versions()}


# ---------------------------------------------------------------------------------------
# Changes


@dataclass(frozen=True)
class ChangeEvent:
    """One journal entry leaving the metadata transaction (outbox → change feed)."""

    event_id: str
    ns_id: int
    seq: int
    kind: str  # "file" | "membership" | "block_damaged" | ...
    payload: Mapping[str, object] = field(default_factory=dict)
    # True when the transaction that wrote the event also moved its namespace's head in the
    # metadata database and NOTIFYed there (every journal write does): a feed living in that
    # database has nothing left to deliver, a feed elsewhere (DynamoDB) still does.
    announced: bool = False


class ChangeRefusedError(Exception):
    """The feed will never take this event, however often it is sent: it holds another
    event at its key (ChangeConflictError), or the event breaks one of the feed's limits
    (a DynamoDB item over 400 KB). The relay moves such an event to `outbox_dead`."""


class ChangeConflictError(ChangeRefusedError):
    """The feed already holds another event at this event's (ns_id, seq): the journal and
    the feed disagree, so publishing it again can never succeed (a feed that keeps events
    by key, such as the DynamoDB table, raises it; it never overwrites)."""


class ChangeFeed(ABC):
    """Carries "namespace N reached seq S" to long-polls. Publishing is idempotent."""

    @abstractmethod
    def publish(self, event: ChangeEvent) -> None:
        """Deliver `event`; delivering the same event_id twice has no further effect.

        Raises ChangeRefusedError when the feed will never take it (ChangeConflictError:
        it holds another event at its key)."""

    def publish_many(self, events: Sequence[ChangeEvent]) -> None:
        """Deliver several events (a batch commit's); backends may need fewer round trips.

        The same event twice in `events` is delivered once. On ChangeRefusedError some
        of the others may not have been delivered: `publish` them one by one to find out."""
        for event in events:
            self.publish(event)

    @abstractmethod
    def wait(self, cursors: Mapping[int, int], timeout: float) -> bool:
        """Block until some namespace in `cursors` has a change after its seq, or timeout.

        Returns True when there is a change (possibly already before the call).
        """


# ---------------------------------------------------------------------------------------
# Identity and time


@dataclass(frozen=True)
class Principal:
    """The authenticated caller, taken from verified token claims — never from a body."""

    user_id: str
    email: str


@dataclass(frozen=True)
class SignInOrigin:
    """Where a sign-in request came from, for the identity provider's risk checks (Cognito
    threat protection): the caller's address as the edge saw it, the host and path it
    called, and the request headers worth judging it by (never its credentials)."""

    ip_address: str
    server_name: str
    server_path: str
    headers: tuple[tuple[str, str], ...] = ()

    #: the headers a sign-in passes on (lower case): what describes the caller's software
    #: and locale; an Authorization or Cookie header has no business leaving the edge
    PASSED_HEADERS = ("user-agent", "accept-language")

    @classmethod
    def of(
        cls, ip_address: str, server_name: str, server_path: str, headers: Mapping[str, str]
    ) -> SignInOrigin:
        """The origin of a request with these headers (any case), keeping `PASSED_HEADERS`."""
        lower = {name.lower(): value for name, value in headers.items()}
        kept = tuple((name, lower[name]) for name in cls.PASSED_HEADERS if name in lower)
        return cls(ip_address, server_name, server_path, kept)


class Identity(ABC):
    """Verifies bearer tokens the way API Gateway's Cognito authorizer does."""

    @abstractmethod
    def verify(self, token: str) -> Principal:
        """The caller of a valid token; raises `Unauthorized` otherwise."""


class Clock(Protocol):
    """Time as the domain sees it; tests and `--as-of` substitute their own."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)
