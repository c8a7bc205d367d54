"""BlockStore on the local filesystem, behind signed, expiring URLs served by the gateway.

Layout under `root`: `hot/<key>` readable objects, `cold/<key>` objects in the cold tier,
`restores/<key>.json` the state of a restore of a cold object, `tmp/` uploads in flight,
`versions/<key>/<version id>` what a canonical block (`blocks/`) held before it was
overwritten or deleted. Every write goes to a temp file, is fsynced and renamed into place,
so a crash never leaves a torn object behind.

Earlier versions mirror the versioned S3 bucket as deployed: kept
`NONCURRENT_RETENTION_DAYS["blocks/"]` days, for scrub to repair a block from. Only those of
`blocks/`: S3 keeps staged copies a day too, but only because versioning is bucket-wide,
and on a laptop they would double the disk every upload takes for that day.

Presigned URLs mirror S3's: a PUT URL binds key, exact size, SHA-256 of the body and expiry;
a GET URL binds key and expiry; both are HMAC-SHA256 signed. The gateway hands requests to
`accept_put` / `accept_put_async` / `open_get`, which check signature (constant time),
expiry, size and checksum BEFORE anything becomes visible under the key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import quote, urlencode

from tessera.domain.errors import BadRequest, Forbidden, NotFound
from tessera.domain.object_keys import CANONICAL_PREFIX, NONCURRENT_RETENTION_DAYS
from tessera.ports import (
    BlockStore,
    Clock,
    EarlierVersion,
    PresignedRequest,
    StorageTier,
    StoredObject,
    SystemClock,
)

T = TypeVar("T")

MAX_EXPIRES_IN = 900
# A temp file untouched this long belongs to no write in flight (a PUT URL lives 15 minutes
# and an upload writes as it goes): a crash left it, and the next start removes it.
STALE_TEMP_S = 3600
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:=-]{0,127}")  # whole (`$` let "\n" end one)
# <microseconds since the epoch>-<random>-<tier>: sorts by age, and the random part tells
# apart two versions of one key made in the same microsecond
_VERSION_ID = re.compile(r"^(\d{16})-[0-9a-f]{8}-(hot|cold)$")
# How often deletes look for earlier versions past their days (S3 expires them daily)
VERSION_EXPIRY_INTERVAL = timedelta(hours=1)


class NotRestored(Forbidden):
    """A cold object was read before a restore made it readable (S3: InvalidObjectState)."""

    code = "not_restored"


def validate_key(key: str) -> str:
    """`key` if it is a safe relative object key (no `..`, no absolute path, no odd bytes)."""
    parts = key.split("/")
    if len(key) > 512 or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise BadRequest(f"invalid object key {key!r}")
    return key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _PutSink:
    """One upload in flight: streams to a private temp file, hashing as it goes."""

    def __init__(self, store: FilesystemBlockStore, key: str, size: int, sha256: bytes) -> None:
        self.store, self.key, self.size, self.sha256 = store, key, size, sha256
        self.received = 0
        self.hash = hashlib.sha256()
        self.file, self.tmp = store._temp_file()

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.size:
            raise BadRequest(f"body is larger than the {self.size} bytes the URL allows")
        self.hash.update(chunk)
        self.file.write(chunk)

    def finish(self) -> None:
        """Verify size and checksum; only then move the object under its key."""
        if self.received != self.size:
            raise BadRequest(f"body has {self.received} bytes, the URL requires {self.size}")
        if not hmac.compare_digest(self.hash.digest(), self.sha256):
            raise BadRequest("body does not match the SHA-256 the URL was signed for")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.store._install(self.tmp, self.key)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class FilesystemBlockStore(BlockStore):
    """Content-addressed files on disk with a hot and a cold tier (see module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        base_url: str,
        signing_secret: bytes,
        *,
        restore_delay: float = 0.0,
        clock: Clock | None = None,
        keep_versions_days: float = NONCURRENT_RETENTION_DAYS[CANONICAL_PREFIX],
    ) -> None:
        """`keep_versions_days`: how long earlier versions of blocks are kept (0: none)."""
        if len(signing_secret) < 32:
            raise ValueError("the URL signing secret must be at least 32 bytes")
        self.root = Path(root)
        self.base_url = base_url.rstrip("/")
        self._secret = signing_secret
        self.restore_delay = restore_delay
        self.clock: Clock = clock or SystemClock()
        self.keep_versions_days = keep_versions_days
        self._next_expiry = self.clock.now()  # the first delete expires old versions
        for sub in ("hot", "cold", "restores", "tmp", "versions"):
            _make_dirs(self.root / sub)
        self._remove_stale_temps()

    # -- paths and atomic writes --------------------------------------------------------

    def _path(self, tier: str, key: str) -> Path:
        return self.root / tier / validate_key(key)

    def _restore_path(self, key: str) -> Path:
        return self.root / "restores" / (validate_key(key) + ".json")

    def _temp_file(self) -> tuple[BinaryIO, Path]:
        """A new private file under `tmp/`, open for writing."""
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="put-")
        return os.fdopen(fd, "wb"), Path(name)

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - STALE_TEMP_S
        for entry in os.scandir(self.root / "tmp"):
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except FileNotFoundError:  # another process cleaned up first
                continue

    def _install(self, tmp: Path, key: str) -> None:
        """Rename a complete, fsynced temp file to hot `key` (dropping any cold copy, kept
        as an earlier version as S3 keeps what an overwrite replaced)."""
        self._keep_versions(key)
        _rename_durably(tmp, self._path("hot", key))
        self._path("cold", key).unlink(missing_ok=True)
        self._restore_path(key).unlink(missing_ok=True)

    # -- earlier versions ---------------------------------------------------------------

    def _keep_versions(self, key: str) -> None:
        """Link what `key` holds (hot or cold) into `versions/` before it is replaced or
        removed. A link, not a move: the object stays readable under its key until the
        replacing rename, as an S3 overwrite is atomic for readers."""
        if self.keep_versions_days <= 0 or not key.startswith(CANONICAL_PREFIX):
            return
        for tier in ("hot", "cold"):
            current = self._path(tier, key)
            if not current.is_file():
                continue
            micros = _micros(self.clock.now())
            version = self._version_path(key, f"{micros:016d}-{secrets.token_hex(4)}-{tier}")
            while True:
                _make_dirs(version.parent)
                try:
                    os.link(current, version)
                except FileNotFoundError:
                    if current.is_file():
                        continue  # an expiry pass removed the empty folder just made
                    break  # the object moved or went since the check: nothing to keep
                _fsync_dir(version.parent)
                break

    def _version_path(self, key: str, version: str) -> Path:
        return self.root / "versions" / validate_key(key) / version

    def earlier_versions(self, key: str) -> list[EarlierVersion]:
        """What `key` held before each overwrite or delete still kept, newest first."""
        folder = self.root / "versions" / validate_key(key)
        try:
            names = sorted(os.listdir(folder), reverse=True)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = _VERSION_ID.match(name)
            if match is None:
                continue
            try:
                size = os.stat(folder / name).st_size
            except FileNotFoundError:  # expired meanwhile
                continue
            found.append(EarlierVersion(name, size, StorageTier(match.group(2))))
        return found

    def undelete(self, key: str) -> bool:
        """Move the newest earlier version of `key` back into its tier, when `key` has no
        object (S3: its delete markers removed)."""
        if self.head(key) is not None:
            return False
        for version in self.earlier_versions(key):
            try:
                _rename_durably(
                    self._version_path(key, version.version_id), self._path(version.tier, key)
                )
            except FileNotFoundError:  # expired meanwhile: the next one
                continue
            return True
        return False

    def _readable_version(self, key: str, version: str) -> Path:
        match = _VERSION_ID.match(version)
        path = self._version_path(key, version)
        if match is None or not path.is_file():
            raise KeyError(f"{key} version {version}")
        if match.group(2) == "cold":  # S3 copies no GLACIER version without a restore
            raise NotRestored(f"{key} version {version} is in the cold tier")
        return path

    def expire_versions(self) -> int:
        """Remove the earlier versions older than `keep_versions_days` (S3's lifecycle
        rule `noncurrent-blocks`); the number removed. Deletes call it hourly."""
        cutoff_micros = _micros(self.clock.now() - timedelta(days=self.keep_versions_days))
        removed = 0
        base = self.root / "versions"
        for dirpath, _dirs, files in os.walk(base, topdown=False):
            for name in files:
                match = _VERSION_ID.match(name)
                if match is not None and int(match.group(1)) < cutoff_micros:
                    Path(dirpath, name).unlink(missing_ok=True)
                    removed += 1
            if dirpath != str(base):
                with contextlib.suppress(OSError):  # not empty: a version is still kept
                    os.rmdir(dirpath)
        return removed

    def _write_durably(self, chunks: Iterable[bytes], install: Callable[[Path], None]) -> None:
        """Write `chunks` to a temp file, fsync it, then `install(temp)` renames it into place;
        the temp file is removed if anything fails."""
        f, tmp = self._temp_file()
        try:
            with f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            install(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write_atomic(self, key: str, chunks: Iterable[bytes]) -> None:
        self._write_durably(chunks, lambda tmp: self._install(tmp, key))

    # -- BlockStore ---------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        """Store `data` at `key` in the hot tier."""
        self._write_atomic(key, [data])

    def get(self, key: str) -> bytes:
        """The object's bytes; KeyError when absent, `NotRestored` when cold and unrestored."""
        return self._with_readable(key, Path.read_bytes)

    def head(self, key: str) -> StoredObject | None:
        """Size, tier and restore state of the object at `key`."""
        hot = self._path("hot", key)
        if hot.is_file():
            return StoredObject(key=key, size=hot.stat().st_size)
        cold = self._path("cold", key)
        if not cold.is_file():
            return None
        restoring, restored = self._restore_state(key)
        return StoredObject(
            key=key,
            size=cold.stat().st_size,
            tier=StorageTier.COLD,
            restoring=restoring,
            restored=restored,
        )

    def copy(self, src: str, dst: str, *, version: str | None = None) -> None:
        """Copy `src` (or its earlier `version`) to hot `dst`; a cold source must have
        been restored first (a cold version cannot be)."""

        # the source opened alone: a missing destination folder is no missing source
        if version is None:
            source = self._with_readable(src, lambda path: path.open("rb"))
        else:
            source = self._readable_version(src, version).open("rb")
        with source:
            self._write_atomic(dst, iter(lambda: source.read(1 << 20), b""))

    def delete(self, key: str) -> None:
        """Remove the object from both tiers (a block's is kept as an earlier version); a
        missing key is fine."""
        self._keep_versions(key)
        now = self.clock.now()
        if now >= self._next_expiry:
            self._next_expiry = now + VERSION_EXPIRY_INTERVAL
            self.expire_versions()
        self._path("hot", key).unlink(missing_ok=True)
        self._path("cold", key).unlink(missing_ok=True)
        self._restore_path(key).unlink(missing_ok=True)

    def list_sizes(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, int]]:
        """Every object (hot or cold) whose key starts with `prefix`, with its size; in key
        order from `start_after` when a range is asked for (`BlockStore.list_sizes`).

        Walks only the folder the prefix names (`staging/<upload_id>/` is one folder), not
        the whole store, and reads the sizes of only the objects it returns."""
        found = self._walk(prefix)
        if start_after is not None or limit is not None:
            after = (item for item in found if start_after is None or item[0] > start_after)
            found = iter(sorted(after)[:limit])
        for key, folder in found:
            try:
                yield key, os.stat(os.path.join(folder, key.rpartition("/")[2])).st_size
            except FileNotFoundError:  # deleted since the walk
                continue

    def _walk(self, prefix: str) -> Iterator[tuple[str, str]]:
        """(key, folder on disk) of every object under `prefix`."""
        folder = prefix.rpartition("/")[0]
        for tier in ("hot", "cold"):
            base = self.root / tier
            start = self._path(tier, folder) if folder else base
            for dirpath, _dirs, files in os.walk(start):
                rel = Path(dirpath).relative_to(base).as_posix()
                head = "" if rel == "." else rel + "/"
                for name in files:
                    key = head + name
                    if key.startswith(prefix):
                        yield key, dirpath

    def set_tier(self, key: str, tier: StorageTier) -> None:
        """Move the object between `hot/` and `cold/`; KeyError when absent."""
        src_tier, dst_tier = ("cold", "hot") if tier is StorageTier.HOT else ("hot", "cold")
        src, dst = self._path(src_tier, key), self._path(dst_tier, key)
        if dst.is_file() and not src.is_file():
            return  # already there
        if not src.is_file():
            raise KeyError(key)
        _rename_durably(src, dst)
        self._restore_path(key).unlink(missing_ok=True)

    def restore(self, key: str, *, days: int = 7) -> None:
        """Start a restore of a cold object; it becomes readable after `restore_delay` s."""
        if not self._path("cold", key).is_file():
            if self._path("hot", key).is_file():
                return  # S3 rejects restoring a hot object; nothing to do here either
            raise KeyError(key)
        marker = self._restore_path(key)
        if any(self._restore_state(key)):
            return  # idempotent: a restore is under way or done (an expired one is redone)
        now = self.clock.now()
        state = {
            "ready_at": (now + timedelta(seconds=self.restore_delay)).isoformat(),
            "expires_at": (now + timedelta(days=days)).isoformat(),
        }
        # atomic: a reader never sees half a marker, and a crash leaves the old one or none
        self._write_durably([json.dumps(state).encode()], partial(_rename_durably, dst=marker))

    def _restore_state(self, key: str) -> tuple[bool, bool]:
        """(restoring, restored) of a cold object."""
        try:
            state = json.loads(self._restore_path(key).read_bytes())
            ready_at = datetime.fromisoformat(state["ready_at"])
            expires_at = datetime.fromisoformat(state["expires_at"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            # none, or one torn by a crash before markers were written atomically: no
            # restore, so `restore` can start one instead of every read failing for good
            return False, False
        now = self.clock.now()
        if now >= expires_at:
            return False, False
        ready = now >= ready_at
        return not ready, ready

    def _with_readable(self, key: str, use: Callable[[Path], T]) -> T:
        """`use` on the object's readable path, looked up again once when the file went
        meanwhile: a tier move renames it into the other tier (a read failed with
        FileNotFoundError, which maintenance took for a store failure and ended its step);
        gone again, it was deleted: KeyError, as S3's NoSuchKey."""
        try:
            return use(self._readable_path(key))
        except FileNotFoundError:
            try:
                return use(self._readable_path(key))
            except FileNotFoundError:
                raise KeyError(key) from None

    def _readable_path(self, key: str) -> Path:
        hot = self._path("hot", key)
        if hot.is_file():
            return hot
        cold = self._path("cold", key)
        if not cold.is_file():
            raise KeyError(key)
        if not self._restore_state(key)[1]:
            raise NotRestored(f"{key} is in the cold tier; restore it first")
        return cold

    # -- presigned URLs -----------------------------------------------------------------

    def _expiry(self, expires_in: int) -> int:
        if not 0 < expires_in <= MAX_EXPIRES_IN:
            raise ValueError(f"expires_in must be in 1..{MAX_EXPIRES_IN} seconds")
        return int(self.clock.now().timestamp()) + expires_in

    def _sign(self, *fields: str) -> str:
        message = "\n".join(fields).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _url(self, key: str, params: dict[str, str]) -> str:
        return f"{self.base_url}/blocks/{quote(validate_key(key))}?{urlencode(params)}"

    def presign_put(
        self, key: str, *, size: int, sha256: bytes, expires_in: int = 900
    ) -> PresignedRequest:
        """A PUT URL accepting exactly `size` bytes with SHA-256 `sha256`, until expiry."""
        if size < 0 or len(sha256) != 32:
            raise ValueError("size must be >= 0 and sha256 a 32-byte digest")
        exp = self._expiry(expires_in)
        digest = sha256.hex()
        sig = self._sign("PUT", key, str(size), digest, str(exp))
        params = {"size": str(size), "sha256": digest, "exp": str(exp), "sig": sig}
        return PresignedRequest(
            method="PUT",
            url=self._url(key, params),
            headers={"x-amz-checksum-sha256": _b64(sha256)},
            expires_at=datetime.fromtimestamp(exp, UTC),
        )

    def presign_get(self, key: str, *, expires_in: int = 900) -> PresignedRequest:
        """A GET URL of `key`, valid until expiry."""
        exp = self._expiry(expires_in)
        sig = self._sign("GET", key, str(exp))
        return PresignedRequest(
            method="GET",
            url=self._url(key, {"exp": str(exp), "sig": sig}),
            expires_at=datetime.fromtimestamp(exp, UTC),
        )

    def _check_signature(self, query: Mapping[str, str], *fields: str) -> None:
        """Constant-time signature check, then expiry. Raises Forbidden (403)."""
        given = query.get("sig", "")
        if not hmac.compare_digest(given.encode(), self._sign(*fields).encode()):
            raise Forbidden("the URL signature does not match", reason="signature")
        if int(self.clock.now().timestamp()) >= int(fields[-1]):
            raise Forbidden("the URL has expired", reason="expired")

    def authorize_put(
        self, key: str, query: Mapping[str, str], content_length: int | None
    ) -> _PutSink:
        """Check a presigned PUT before reading its body; returns the sink to stream into."""
        validate_key(key)
        try:
            size, digest, exp = int(query["size"]), query["sha256"], query["exp"]
            sha256 = bytes.fromhex(digest)
            int(exp)
        except (KeyError, ValueError) as exc:
            raise Forbidden("the URL is not a valid signed PUT", reason="signature") from exc
        self._check_signature(query, "PUT", key, str(size), digest, exp)
        # Content-Length is one of the URL's signed headers, as on S3: a PUT without it (a
        # chunked one) or with another value fails S3's signature check (403), and a client
        # that sent it so would pass every local test and fail every upload on AWS
        if content_length != size:
            raise Forbidden(
                f"Content-Length {content_length} is not the signed {size}", reason="signature"
            )
        return _PutSink(self, key, size, sha256)

    def accept_put(
        self,
        key: str,
        query: Mapping[str, str],
        content_length: int | None,
        body: Iterable[bytes],
        checksum_header: str | None = None,
    ) -> None:
        """Check and store a presigned PUT; nothing is stored unless every check passes."""
        sink = self._open_put(key, query, content_length, checksum_header)
        try:
            for chunk in body:
                sink.write(chunk)
            sink.finish()
        except BaseException:
            sink.abort()
            raise

    async def accept_put_async(
        self,
        key: str,
        query: Mapping[str, str],
        content_length: int | None,
        body: AsyncIterable[bytes],
        checksum_header: str | None = None,
    ) -> None:
        """`accept_put` for an async body stream (the gateway's request body)."""
        sink = self._open_put(key, query, content_length, checksum_header)
        try:
            async for chunk in body:
                sink.write(chunk)
            await asyncio.to_thread(sink.finish)  # fsync off the loop: long-polls keep waking
        except BaseException:
            sink.abort()
            raise

    def _open_put(
        self,
        key: str,
        query: Mapping[str, str],
        content_length: int | None,
        checksum_header: str | None,
    ) -> _PutSink:
        sink = self.authorize_put(key, query, content_length)
        # a signed header too: missing or another value, S3 refuses the signature (403)
        try:
            claimed = base64.b64decode(checksum_header or "", validate=True)
        except (binascii.Error, ValueError):
            claimed = b""
        if not hmac.compare_digest(claimed, sink.sha256):
            sink.abort()
            raise Forbidden(
                "x-amz-checksum-sha256 is missing or not the signed checksum", reason="signature"
            )
        return sink

    def open_get(self, key: str, query: Mapping[str, str]) -> Path:
        """Check a presigned GET; the path of the readable object to send."""
        validate_key(key)
        exp = query.get("exp", "")
        if not exp.isdigit():
            raise Forbidden("the URL is not a valid signed GET", reason="signature")
        self._check_signature(query, "GET", key, exp)
        try:
            return self._readable_path(key)
        except KeyError as exc:
            raise NotFound(f"no object at {key}") from exc


def _micros(at: datetime) -> int:
    """Microseconds since the epoch: how a version id records its age."""
    return int(at.timestamp() * 1_000_000)


def _rename_durably(src: Path, dst: Path) -> None:
    """Rename `src` to `dst` so that the rename survives a crash (parents made durably too)."""
    _make_dirs(dst.parent)
    os.replace(src, dst)
    _fsync_dir(dst.parent)


def _make_dirs(path: Path) -> None:
    """`mkdir -p` whose new folders survive a crash: each folder created is fsynced into its
    parent, as a file renamed into a new folder is lost with the folder's entry."""
    if path.is_dir():
        return
    _make_dirs(path.parent)
    path.mkdir(exist_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["FilesystemBlockStore", "NotRestored", "validate_key"]
