"""`S3BlockStore`: the BlockStore port on S3 (DESIGN §2, §3, §5).

Presigned PUTs are SigV4 and sign `content-length` and `x-amz-checksum-sha256`, so S3
accepts exactly the bytes the API agreed to (on real AWS; moto does not check signatures,
expiry or checksums). Cold blocks live in GLACIER: `set_tier` copies the object onto
itself with a new storage class, `restore` starts a temporary readable copy.

The bucket is versioned (`infra/constructs/blocks.py`): an object overwritten or deleted
is kept as a noncurrent version for a while (`NONCURRENT_RETENTION_DAYS`), which
`earlier_versions` lists and `copy(..., version=)` brings back.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from tessera.adapters.aws.presign import BulkPutSigner
from tessera.domain.object_keys import (
    run_start_after,
    staged_run,
    staged_upload_id,
    staging_folder,
)
from tessera.parallel import parallel_map
from tessera.ports import (
    BlockStore,
    EarlierVersion,
    PresignedRequest,
    StorageTier,
    StoredObject,
)

if TYPE_CHECKING:
    from botocore.credentials import ReadOnlyCredentials
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        DeleteMarkerEntryTypeDef,
        ObjectVersionTypeDef,
        PaginatorConfigTypeDef,
    )

MAX_EXPIRES = 900  # DESIGN §9: presigned URLs live at most 15 minutes
COLD_CLASS = "GLACIER"
HOT_CLASS = "STANDARD"
BLOCK_CONTENT_TYPE = "application/octet-stream"  # a stored block: opaque bytes
# Classes whose objects need a restore before a GET (GLACIER_IR is instant: hot).
_COLD_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
_ONGOING = re.compile(r'ongoing-request="(true|false)"')
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchVersion"})
_COLD_ERRORS = frozenset({"InvalidObjectState", "ObjectNotInActiveTierError"})


class ColdObjectError(Exception):
    """The object is in the cold tier and has no restored copy: restore it first."""


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def _object_errors(key: str) -> Iterator[None]:
    """S3's "no such key" / "not restored" answers about `key` as KeyError / ColdObjectError."""
    try:
        yield
    except ClientError as exc:
        code = _error_code(exc)
        if code in _NOT_FOUND:
            raise KeyError(key) from None
        if code in _COLD_ERRORS:
            raise ColdObjectError(key) from None
        raise


def _check_expiry(expires_in: int) -> None:
    if not 0 < expires_in <= MAX_EXPIRES:
        raise ValueError(f"expires_in must be within 1..{MAX_EXPIRES} s, got {expires_in}")


def _checked_put(size: int, sha256: bytes, expires_in: int) -> str:
    """The base64 checksum of a PUT to presign, once its arguments are checked."""
    _check_expiry(expires_in)
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if len(sha256) != 32:
        raise ValueError("sha256 must be the 32-byte SHA-256 digest of the body")
    return base64.b64encode(sha256).decode("ascii")


def _put_request(url: str, size: int, checksum: str, expires_in: int) -> PresignedRequest:
    return PresignedRequest(
        method="PUT",
        url=url,
        # Both headers are signed: the client must send them exactly as given.
        headers={"x-amz-checksum-sha256": checksum, "content-length": str(size)},
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
    )


class S3BlockStore(BlockStore):
    """Blocks as objects of one S3 bucket, keyed as the port describes."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        list_page_size: int = 1000,
        credentials: Callable[[], ReadOnlyCredentials | None] | None = None,
    ) -> None:
        """`credentials` gives the client's current credentials (`AwsClients.credentials`):
        with them, `presign_puts` signs a batch's URLs after the first itself."""
        self._s3 = client
        self._bucket = bucket
        self._page_size = list_page_size
        self._credentials = credentials

    def _presign(self, operation: str, params: dict[str, Any], expires_in: int) -> str:
        return self._s3.generate_presigned_url(
            operation,
            Params={"Bucket": self._bucket, **params},
            ExpiresIn=expires_in,
            HttpMethod="PUT" if operation == "put_object" else "GET",
        )

    def presign_put(
        self, key: str, *, size: int, sha256: bytes, expires_in: int = 900
    ) -> PresignedRequest:
        """A SigV4 PUT bound to `size` and the base64 SHA-256 checksum of the body."""
        checksum = _checked_put(size, sha256, expires_in)
        url = self._presign(
            "put_object",
            {"Key": key, "ChecksumSHA256": checksum, "ContentLength": size},
            expires_in,
        )
        return _put_request(url, size, checksum, expires_in)

    def presign_puts(
        self, puts: Sequence[tuple[str, int, bytes]], *, expires_in: int = 900
    ) -> list[PresignedRequest]:
        """`presign_put` of each (key, size, sha256): botocore signs the first, and the
        rest are signed alike (`tessera.adapters.aws.presign`), unless that cannot
        reproduce botocore's first signature; then botocore signs them all."""
        if not puts:
            return []
        key, size, sha256 = puts[0]
        first = self.presign_put(key, size=size, sha256=sha256, expires_in=expires_in)
        creds = self._credentials() if self._credentials else None
        signer = None
        if creds is not None and creds.secret_key:
            signer = BulkPutSigner.from_reference(
                first.url,
                key,
                size,
                first.headers["x-amz-checksum-sha256"],
                creds.secret_key,
                creds.token,
            )
        if signer is None:
            return [first, *super().presign_puts(puts[1:], expires_in=expires_in)]
        rest = []
        for key, size, sha256 in puts[1:]:
            checksum = _checked_put(size, sha256, expires_in)
            rest.append(_put_request(signer.url(key, size, checksum), size, checksum, expires_in))
        return [first, *rest]

    def presign_get(self, key: str, *, expires_in: int = 900) -> PresignedRequest:
        """A SigV4 GET of `key`."""
        _check_expiry(expires_in)
        url = self._presign("get_object", {"Key": key}, expires_in)
        return PresignedRequest(
            method="GET", url=url, expires_at=datetime.now(UTC) + timedelta(seconds=expires_in)
        )

    def head(self, key: str) -> StoredObject | None:
        """Size and tier from HeadObject: `StorageClass` and the `x-amz-restore` header."""
        try:
            resp = self._s3.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND:
                return None
            raise
        cold = resp.get("StorageClass", HOT_CLASS) in _COLD_CLASSES
        match = _ONGOING.search(resp.get("Restore", ""))
        return StoredObject(
            key=key,
            size=int(resp["ContentLength"]),
            tier=StorageTier.COLD if cold else StorageTier.HOT,
            restoring=bool(match and match.group(1) == "true"),
            restored=bool(match and match.group(1) == "false"),
        )

    def get(self, key: str) -> bytes:
        """The object's bytes; KeyError when absent, ColdObjectError when not restored."""
        with _object_errors(key):
            resp = self._s3.get_object(Bucket=self._bucket, Key=key)
        return resp["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        """PutObject with a SHA-256 checksum S3 verifies on arrival."""
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=data, ChecksumSHA256=checksum)

    def copy(self, src: str, dst: str, *, version: str | None = None) -> None:
        """CopyObject (of `version` of `src`, if given) into the STANDARD class; KeyError
        when `src` (or that version) is absent."""
        self._copy(src, dst, HOT_CLASS, version=version)

    def _copy(
        self, src: str, dst: str, storage_class: str, *, version: str | None = None
    ) -> tuple[str | None, str | None]:
        """CopyObject; the version ids of the source it copied and of the copy (None: an
        unversioned bucket)."""
        source: dict[str, str] = {"Bucket": self._bucket, "Key": src}
        if version is not None:
            source["VersionId"] = version
        with _object_errors(src):
            resp = self._s3.copy_object(
                Bucket=self._bucket,
                Key=dst,
                CopySource=source,  # type: ignore[arg-type]
                StorageClass=storage_class,  # type: ignore[arg-type]
                # never the source's headers: a presigned PUT signs no Content-Encoding or
                # Content-Type, so an uploader's `gzip` would travel onto the canonical
                # block every holder downloads
                MetadataDirective="REPLACE",
                ContentType=BLOCK_CONTENT_TYPE,
            )
        return resp.get("CopySourceVersionId"), resp.get("VersionId")

    def undelete(self, key: str) -> bool:
        """Delete every delete marker of `key` (they hold no data), when it has no current
        object but a noncurrent version: the newest version is the object again. A
        delete of a key already deleted (gc's retry) stacks another marker: all go."""
        if self.head(key) is not None:
            return False
        versions, markers = self._versions_of(key)
        if not versions or not markers:
            return False
        for marker in markers:
            self._s3.delete_object(Bucket=self._bucket, Key=key, VersionId=marker["VersionId"])
        return self.head(key) is not None

    def earlier_versions(self, key: str) -> list[EarlierVersion]:
        """The noncurrent versions of `key` (ListObjectVersions), newest first, as S3
        lists them; their tier from their storage class (a cold one needs a restore)."""
        return [
            EarlierVersion(
                version_id=item["VersionId"],
                size=int(item["Size"]),
                tier=(
                    StorageTier.COLD
                    if item.get("StorageClass", HOT_CLASS) in _COLD_CLASSES
                    else StorageTier.HOT
                ),
            )
            for item in self._versions_of(key)[0]
            if not item["IsLatest"]
        ]

    def _versions_of(
        self, key: str
    ) -> tuple[list[ObjectVersionTypeDef], list[DeleteMarkerEntryTypeDef]]:
        """The versions and the delete markers of exactly `key`, newest first
        (ListObjectVersions, whose prefix also matches longer keys)."""
        versions: list[ObjectVersionTypeDef] = []
        markers: list[DeleteMarkerEntryTypeDef] = []
        pages = self._s3.get_paginator("list_object_versions").paginate(
            Bucket=self._bucket, Prefix=key
        )
        for page in pages:
            versions += [v for v in page.get("Versions", []) if v["Key"] == key]
            markers += [m for m in page.get("DeleteMarkers", []) if m["Key"] == key]
        return versions, markers

    def delete(self, key: str) -> None:
        """DeleteObject (S3 already treats a missing key as success)."""
        self._s3.delete_object(Bucket=self._bucket, Key=key)

    def list_sizes(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, int]]:
        """Objects under `prefix` with their sizes, page by page (ListObjectsV2, which
        lists in key order): from `start_after`, at most `limit` (`BlockStore.list_sizes`)."""
        config: PaginatorConfigTypeDef = {"PageSize": self._page_size}
        if limit is not None:
            config = {"PageSize": max(1, min(self._page_size, limit)), "MaxItems": limit}
        params: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix}
        if start_after is not None:
            params["StartAfter"] = start_after
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            **params, PaginationConfig=config
        )
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"], int(obj["Size"])

    def sizes(self, keys: Sequence[str]) -> dict[str, int]:
        """The sizes of the `keys` that have an object, from listings, never a HEAD each.

        Staged keys sort in the order their PUT URLs were issued (`object_keys`), and a
        client sends and commits its blocks in that order, so the keys a commit asks for
        form runs: each run is one ListObjectsV2 from its first key (`StartAfter`), as
        many keys as it spans (`MaxKeys`), several at once. A HEAD per block had dominated
        commits; fixed groups of 128 keys, listed whole, read 1,700 keys for 1,000 files
        (a client's window straddled two groups), and moto spends 0.6 ms of CPU on each
        key it lists. Keys of the layouts before ordinals list their folder; keys outside
        `staging/` get a HEAD each. A key a listing covers but lacks has no object: S3
        lists with read-after-write consistency.
        """
        staged: list[str] = []
        others: list[str] = []  # outside staging/: a HEAD each
        for key in keys:
            (others if staged_upload_id(key) is None else staged).append(key)
        listings = _listings(staged)
        if len(listings) <= 1:
            found = self._listed(listings[0]) if listings else {}
        else:
            found = {}
            for part in parallel_map(self._listed, listings, 16):
                found.update(part)
        found |= super().sizes(others)
        return {key: found[key] for key in keys if key in found}

    def _listed(self, listing: _Listing) -> dict[str, int]:
        if listing.first is None:
            return dict(self.list_sizes(listing.prefix))
        # at most one key per ordinal, and the run's keys sort before any later ordinal's
        return dict(
            self.list_sizes(
                listing.prefix,
                start_after=run_start_after(listing.prefix, listing.first),
                limit=listing.last - listing.first + 1,
            )
        )

    def set_tier(self, key: str, tier: StorageTier) -> None:
        """Copy the object onto itself with the tier's storage class (no-op if already there).

        Moving a cold object back to hot needs a restored copy (ColdObjectError otherwise).
        The version the copy superseded holds the same bytes, so it is deleted: kept as a
        noncurrent version, every block moved to the cold tier would have been paid for
        in the hot tier for another 30 days.
        """
        current = self.head(key)
        if current is None:
            raise KeyError(key)
        if current.tier == tier:
            return
        source, copy = self._copy(key, key, COLD_CLASS if tier == StorageTier.COLD else HOT_CLASS)
        # Only a version the copy left behind: were versioning ever suspended, the copy
        # would have replaced the `null` version in place, and deleting that would delete
        # the block.
        if source is not None and source not in ("null", copy):
            self._s3.delete_object(Bucket=self._bucket, Key=key, VersionId=source)

    def restore(self, key: str, *, days: int = 7) -> None:
        """RestoreObject; a restore already under way or a hot object is not an error."""
        try:
            self._s3.restore_object(
                Bucket=self._bucket,
                Key=key,
                RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": "Standard"}},
            )
        except ClientError as exc:
            code = _error_code(exc)
            if code in _NOT_FOUND:
                raise KeyError(key) from None
            # RestoreAlreadyInProgress: idempotent. InvalidObjectState: the object is hot.
            if code not in {"RestoreAlreadyInProgress", "InvalidObjectState"}:
                raise


#: Keys whose ordinals lie further apart are listed apart, so a listing reads at most this
#: many keys that were not asked for.
_RUN_GAP = 128
#: A run's most ordinals (4 pages): a longer one is listed in parts, side by side. A file of
#: 200,000 blocks in one run was 200 ListObjectsV2 pages one after another in its commit.
_RUN_KEYS = 4_000


@dataclass(frozen=True)
class _Listing:
    """One ListObjectsV2 for `S3BlockStore.sizes`: the ordinals `first`..`last` of a
    session (the ordinal layout), or a whole folder (`first` None: earlier layouts)."""

    prefix: str
    first: int | None = None
    last: int = 0


def _listings(keys: Sequence[str]) -> list[_Listing]:
    """The fewest listings that cover `keys`: a run per stretch of close ordinals."""
    folders: set[str] = set()
    ordinals: dict[str, set[int]] = {}
    for key in keys:
        run = staged_run(key)
        if run is None:
            folders.add(staging_folder(key))
        else:
            ordinals.setdefault(run[0], set()).add(run[1])
    listings = [_Listing(folder) for folder in sorted(folders)]
    for prefix, found in sorted(ordinals.items()):
        ordered = sorted(found)
        first = previous = ordered[0]
        for ordinal in ordered[1:]:
            if ordinal - previous > _RUN_GAP or ordinal - first >= _RUN_KEYS:
                listings.append(_Listing(prefix, first, previous))
                first = ordinal
            previous = ordinal
        listings.append(_Listing(prefix, first, previous))
    return listings
