"""The request and response models of the API (DESIGN §5), pydantic v2.

They live in the domain because the domain services take the requests and return the
responses as they are (handlers stay thin); `tessera.api.models` re-exports them for
clients. Entries follow Dropbox's shape: a `.tag` of `file`, `folder` or `deleted`.
Field names here are the wire contract: keep them stable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tessera.blocks.codec import MAX_KEY_VERSION

BlockId = Annotated[
    str,
    Field(
        pattern=r"^b3:[0-9a-f]{64}$",
        description="`b3:` + hex BLAKE3-256 of the plaintext block",
        examples=["b3:" + "ab" * 32],
    ),
]
ContentHash = Annotated[str, Field(pattern=r"^b3:[0-9a-f]{64}$")]
# Base64 (with its padding) of exactly 32 bytes: a SHA-256 digest or an AES-256 block key.
# Checked on answers too: a key of another length would fail deep in the cipher.
BASE64_OF_32_BYTES = r"^[A-Za-z0-9+/]{43}=$"
BlockKeyB64 = Annotated[
    str,
    Field(pattern=BASE64_OF_32_BYTES, description="base64 of the 32-byte AES-256-GCM block key"),
]
# The key version a stored block's header can name (4 bytes): checked on answers too, where
# another number failed the client's encoder with a ValueError, a crash every round
KeyVersion = Annotated[int, Field(ge=0, le=MAX_KEY_VERSION)]
# Raw paths are checked by tessera.domain.paths (422 with a clear message), not by a regex.
PathStr = Annotated[str, Field(max_length=8192, description="a path in the caller's view")]
FileId = Annotated[str, Field(min_length=1, max_length=64)]
IdempotencyKey = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        description="one per request, the same on each retry (the first response is kept 7 days)",
    ),
]


def _in_utc(value: datetime) -> datetime:
    """A client's time in UTC (a naive one is taken as UTC already).

    Refused when it has no UTC form Python can hold: `9999-12-31T23:59:59-14:00` is year
    10000 in UTC, which PostgreSQL stores but no reader of the row could load again (every
    listing of its folder failed with a 500)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range: in UTC it must fall within the years 1 to 9999") from None


ClientTime = Annotated[datetime, AfterValidator(_in_utc)]
Access = Literal["owner", "editor", "viewer"]


class Model(BaseModel):
    """Base: unknown fields are rejected, aliases (`.tag`) are used on the wire.

    Every list in a request stops at its first bad item (`fail_fast`): pydantic reports
    each bad field of each item otherwise, and one 5 MB body of `{}` items made 6.8 million
    errors (8.8 GB, and a 407 MB answer)."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, serialize_by_alias=True, frozen=True
    )


class Idempotent(Model):
    """A write a client may retry after losing the answer: the same `idempotency_key` (per
    user) gets the first response again and writes nothing; with another request, 422."""

    idempotency_key: IdempotencyKey | None = None

    #: fields left out of the request's hash (`idempotency.request_hash`) besides the key
    unhashed: ClassVar[frozenset[str]] = frozenset()


def dump(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready wire form of a response model."""
    return model.model_dump(mode="json", by_alias=True)


# ---------------------------------------------------------------------------------------
# Entries


class FileEntry(Model):
    """A file at its latest (or requested) revision."""

    tag: Literal["file"] = Field(default="file", alias=".tag")
    name: str
    path_display: str
    path_lower: str = Field(description="NFC + casefold key of the path: compare paths by this")
    file_id: str
    rev: int
    size: int
    content_hash: str
    mtime: ClientTime | None = Field(default=None, description="client modification time")
    server_modified: datetime
    ns_id: int


class FolderEntry(Model):
    """A folder; `shared_ns_id` is set on the mount point of a shared folder."""

    tag: Literal["folder"] = Field(default="folder", alias=".tag")
    name: str
    path_display: str
    path_lower: str
    file_id: str
    ns_id: int
    shared_ns_id: int | None = None
    access: Access | None = Field(default=None, description="caller's access (mount points only)")


class DeletedEntry(Model):
    """Something that was at `path_display` is gone (a folder: with everything below it)."""

    tag: Literal["deleted"] = Field(default="deleted", alias=".tag")
    name: str
    path_display: str
    path_lower: str


Entry = Annotated[FileEntry | FolderEntry | DeletedEntry, Field(discriminator="tag")]


# ---------------------------------------------------------------------------------------
# Uploads


class BlockSpec(Model):
    """A block of a file: id and plaintext size."""

    id: BlockId
    size: int = Field(ge=1)


class UploadFileSpec(Model):
    """A file the client is about to commit."""

    path: PathStr
    size: int = Field(ge=0)
    content_hash: ContentHash
    blocks: list[BlockSpec] | None = Field(
        fail_fast=True,
        description="null: the list is longer than one request may carry, and comes in parts"
        " (POST /v1/uploads/blocks)",
    )


class UploadStartRequest(Model):
    """POST /v1/uploads."""

    files: list[UploadFileSpec] = Field(min_length=1, fail_fast=True)


class BlockKey(Model):
    """A block the caller must upload, with the key to encode it under."""

    id: BlockId
    key_version: KeyVersion
    key: BlockKeyB64


class UploadStartResponse(Model):
    """Which blocks to upload; the others the caller can already read."""

    upload_id: str
    expires_at: datetime
    needed: list[BlockKey]


class UploadBlocksRequest(Model):
    """POST /v1/uploads/blocks: part of the block list of a file declared without one."""

    upload_id: str = Field(min_length=1, max_length=64)
    path: PathStr
    first: int = Field(ge=0, description="index in the file's list of the first block sent")
    blocks: list[BlockSpec] = Field(min_length=1, fail_fast=True)


class UploadBlocksResponse(Model):
    """Which blocks of the part to upload, as `UploadStartResponse.needed`."""

    needed: list[BlockKey]


class UploadUrlBlock(Model):
    """An encoded block ready to PUT: its stored size and SHA-256."""

    id: BlockId
    size: int = Field(ge=1, description="bytes of the encoded (stored) block")
    sha256: str = Field(
        pattern=BASE64_OF_32_BYTES, description="base64 SHA-256 of the encoded block"
    )


class UploadUrlsRequest(Model):
    """POST /v1/uploads/urls."""

    upload_id: str = Field(min_length=1, max_length=64)
    blocks: list[UploadUrlBlock] = Field(min_length=1, fail_fast=True)

    @model_validator(mode="after")
    def _each_block_once(self) -> UploadUrlsRequest:
        # The same id twice, once with the checksum recorded at commit and once with other
        # bytes, passed the check that a committed copy cannot change, and signed a PUT
        # over it
        # (one pass: `ids.count` per id took 15 s of CPU on a 5 MB body, before the cap on
        # URLs a request may ask for was checked)
        seen: set[str] = set()
        for block in self.blocks:
            if block.id in seen:
                raise ValueError(f"block {block.id} is named more than once")
            seen.add(block.id)
        return self


class PresignedUrl(Model):
    """A request the client makes straight to the block store."""

    id: BlockId
    method: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    expires_at: datetime | None = None


class UploadUrlsResponse(Model):
    """One presigned PUT per block, in request order, and the session's expiry this request
    moved on (a client resuming the session later knows it still lives)."""

    urls: list[PresignedUrl]
    expires_at: datetime | None = None


# ---------------------------------------------------------------------------------------
# Commits


class CommitRequest(Idempotent):
    """POST /v1/commit: a new version of the file at `path`."""

    path: PathStr
    parent_rev: int | None = Field(
        default=None, ge=0, description="rev the client edited; null for a new file"
    )
    parent_file_id: FileId | None = Field(
        default=None,
        description="file_id of the file the client edited: 409 when the path now holds another"
        " file, even at the same rev (deleted and made again elsewhere)",
    )
    blocks: list[BlockSpec] | None = Field(
        fail_fast=True,
        description="null: the list the upload session holds for this path (appended in parts)",
    )
    size: int = Field(ge=0)
    content_hash: ContentHash
    mtime: ClientTime | None = None
    upload_id: str | None = Field(default=None, max_length=64)

    # `content_hash` names the block list (checked to match it), and a list appended in
    # parts is not in the request at all: a retry sent after gc deleted the session must
    # hash as its first sending did. Hashing 262,144 blocks' JSON cost ~0.1 s a commit too.
    unhashed: ClassVar[frozenset[str]] = frozenset({"blocks"})


class CommitBatchRequest(Model):
    """POST /v1/commit_batch."""

    entries: list[CommitRequest] = Field(min_length=1, fail_fast=True)


class ErrorInfo(BaseModel):
    """The `error` object of an error body (extra fields such as `rev` allowed)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    code: str
    message: str


class ErrorBody(BaseModel):
    """`{"error": {"code", "message", ...}}`."""

    model_config = ConfigDict(frozen=True)

    error: ErrorInfo


class CommitBatchItem(Model):
    """One commit of a batch: `success` with the entry, or `failure` with the error."""

    tag: Literal["success", "failure"] = Field(alias=".tag")
    entry: FileEntry | None = None
    error: ErrorInfo | None = None
    status: int = Field(default=200, description="the HTTP status this commit alone would get")


class CommitBatchResponse(Model):
    """Results in request order."""

    entries: list[CommitBatchItem]


# ---------------------------------------------------------------------------------------
# Reading


class PathOrId(Model):
    """Addresses an entry by view path or by file_id (exactly one)."""

    path: PathStr | None = None
    file_id: FileId | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PathOrId:
        if (self.path is None) == (self.file_id is None):
            raise ValueError("give exactly one of path or file_id")
        return self


class MetadataRequest(PathOrId):
    """POST /v1/metadata."""

    include_deleted: bool = False


#: The most block ids a download may say its device holds (`DownloadRequest.have`).
MAX_HAVE_BLOCKS = 10_000


class DownloadRequest(PathOrId):
    """POST /v1/download: a page of a file's blocks at `rev` (default: latest), from the
    block numbered `from_block` (0 = the first), at most `limit` of them (and at most the
    server's page). `have`: blocks the device holds already (read from its own copy, so
    none of them, cold, waits for a restore). `include_deleted`: a file in the trash is
    served too (by path: the one deleted last there, unless a live file holds it)."""

    rev: int | None = Field(default=None, ge=1)
    from_block: int = Field(default=0, ge=0)
    limit: int | None = Field(default=None, ge=1)
    have: list[BlockId] = Field(default_factory=list, max_length=MAX_HAVE_BLOCKS, fail_fast=True)
    include_deleted: bool = False


class DownloadBlock(Model):
    """One block to fetch, decrypt, decompress and re-hash."""

    id: BlockId
    offset: int
    size: int
    method: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    key_version: KeyVersion
    key: BlockKeyB64


class DownloadResponse(Model):
    """200: the file's entry and a page of its blocks (offsets are the file's). Ask again
    with `from_block = next_block` while it is not null. A page's URLs expire after
    `presign_ttl_s`: ask again from the block whose URL expired."""

    entry: FileEntry
    blocks: list[DownloadBlock]
    next_block: int | None = None


class RestoringResponse(Model):
    """202: some blocks are in cold storage; retry after `retry_after` seconds."""

    restoring: Literal[True] = True
    retry_after: int
    blocks: list[BlockId] = Field(default_factory=list)


class BlockReportRequest(Model):
    """POST /v1/blocks/report: a block of `rev` of a file failed on the caller's device (its
    object was missing, or did not decode), so the server should check it now rather than
    at its weekly scrub."""

    file_id: FileId
    rev: int = Field(ge=1)
    block_id: BlockId
    reason: str = Field(default="", max_length=500, description="what the client saw")


class BlockReportResponse(Model):
    """200: whether a check of the stored block is queued (`queued`), and why not if not
    (it was checked a moment ago, or is not a stored block the report can be about)."""

    block_id: BlockId
    queued: bool
    detail: str


class ListFolderRequest(Model):
    """POST /v1/list_folder. `path` "" or "/" is the root of the caller's view."""

    path: PathStr = ""
    recursive: bool = False
    limit: int | None = Field(default=None, ge=1, le=10_000)


# A cursor holds a part per namespace of the listing, with its mount path: a user can hold
# up to `sharing.MAX_SHARED_FOLDERS` shared folders, each named with up to 255 bytes, and
# their cursor must still fit (compressed; ~0.8 MB at worst).
MAX_CURSOR_CHARS = 1 << 20
CursorStr = Annotated[str, Field(min_length=1, max_length=MAX_CURSOR_CHARS)]


class ListFolderContinueRequest(Model):
    """POST /v1/list_folder/continue."""

    cursor: CursorStr
    limit: int | None = Field(default=None, ge=1, le=10_000)


class ListFolderResponse(Model):
    """Entries in order; apply them in order. Call continue while `has_more`."""

    entries: list[Entry]
    cursor: str
    has_more: bool


class LongpollRequest(Model):
    """POST /v1/list_folder/longpoll. `timeout` is clamped to 30-480 s."""

    cursor: CursorStr
    # strict: API Gateway's model takes a JSON integer only ("30" and true were 200 locally)
    timeout: int = Field(default=30, ge=1, le=3600, strict=True)


class LongpollResponse(Model):
    """`changes`: call continue now. `backoff`: wait this many seconds before polling again."""

    changes: bool
    backoff: int | None = None


class RevisionsRequest(PathOrId):
    """POST /v1/revisions."""

    limit: int = Field(default=100, ge=1, le=1000)


class RevisionsResponse(Model):
    """Newest first."""

    is_deleted: bool
    entries: list[FileEntry]


class RestoreRequest(PathOrId, Idempotent):
    """POST /v1/restore: make `rev` the latest (a new rev); no rev on a deleted file: undelete."""

    rev: int | None = Field(default=None, ge=1)


class MoveRequest(Idempotent):
    """POST /v1/move: keeps file_id and history. `parent_file_id` guards the source: 409
    unless `from_path` holds that file (or folder) now."""

    from_path: PathStr
    to_path: PathStr
    parent_file_id: FileId | None = None


class DeleteRequest(Idempotent):
    """POST /v1/delete: soft delete into the trash. `parent_rev` and `parent_file_id` guard
    files (409 if stale, or if the path holds another file); `if_empty` guards folders (409
    if it holds anything, or is a file now)."""

    path: PathStr
    parent_rev: int | None = Field(default=None, ge=1)
    parent_file_id: FileId | None = None
    if_empty: bool = False


class CreateFolderRequest(Idempotent):
    """POST /v1/create_folder."""

    path: PathStr


class TrashListRequest(Model):
    """POST /v1/trash/list."""

    path: PathStr = ""
    limit: int = Field(default=1000, ge=1, le=10_000)


class TrashEntry(Model):
    """A deleted file or folder still restorable with /v1/restore."""

    name: str
    path_display: str
    path_lower: str
    file_id: str
    kind: Literal["file", "folder"]
    rev: int
    size: int
    deleted_at: datetime
    ns_id: int


class TrashListResponse(Model):
    """Most recently deleted first."""

    entries: list[TrashEntry]


# ---------------------------------------------------------------------------------------
# Sharing and account


#: What passes for an email address (one `@`, text on each side, no spaces).
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+$"


class ShareRequest(Model):
    """POST /v1/share: share the folder at `path` with `email` (owner only)."""

    path: PathStr
    email: str = Field(min_length=3, max_length=320, pattern=EMAIL_PATTERN)
    access: Literal["editor", "viewer"] = "editor"


class UnshareRequest(Model):
    """POST /v1/unshare: the owner removes `email`, or everyone but themselves when omitted;
    a member who is not the owner may remove themselves (leave the share)."""

    path: PathStr
    email: str | None = Field(default=None, min_length=3, max_length=320)


class SharesRequest(Model):
    """POST /v1/shares (no fields)."""


class ShareMember(Model):
    """A member of a shared namespace."""

    email: str
    access: Access


class ShareInfo(Model):
    """A shared namespace as the caller sees it."""

    ns_id: int
    path_display: str = Field(description="mount point in the caller's view")
    name: str
    access: Access
    owner_email: str
    members: list[ShareMember]
    invited: list[ShareMember] = Field(
        default_factory=list, description="invited, not yet accepted: not members"
    )


class Invitation(Model):
    """A share offered to the caller, not yet accepted (/v1/shares/accept) or declined."""

    ns_id: int
    name: str = Field(description="the shared folder's name; mounted as /<name> on accept")
    owner_email: str
    access: Literal["editor", "viewer"]
    invited_at: datetime


NsId = Annotated[int, Field(ge=1, le=2**63 - 1)]


class InvitationRequest(Model):
    """POST /v1/shares/accept: the invitation's `ns_id`."""

    ns_id: NsId


class DeclineRequest(Model):
    """POST /v1/shares/decline: one invitation (`ns_id`), or every invitation from the
    owner of `from_email` (exactly one of the two)."""

    ns_id: NsId | None = None
    from_email: str | None = Field(default=None, min_length=3, max_length=320)

    @model_validator(mode="after")
    def _one_of(self) -> DeclineRequest:
        if (self.ns_id is None) == (self.from_email is None):
            raise ValueError("give exactly one of ns_id or from_email")
        return self


class InvitationsResponse(Model):
    """Invitations, oldest first: those waiting (/v1/shares/invitations), or those just
    declined (/v1/shares/decline)."""

    invitations: list[Invitation]


class SharesResponse(Model):
    """Every share the caller is a member of, and the invitations waiting for them."""

    shares: list[ShareInfo]
    invitations: list[Invitation] = Field(default_factory=list)


class AccountResponse(Model):
    """GET /v1/account."""

    user_id: str
    email: str
    root_ns_id: int
    used_bytes: int
    quota_bytes: int


class HealthResponse(Model):
    """GET /v1/health."""

    status: Literal["ok"] = "ok"
    version: str
