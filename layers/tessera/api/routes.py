"""The route table of the API (DESIGN §5): one row per route, the single source of both the
resolver's routes and the OpenAPI document. Each handler is one domain call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from tessera.domain import commits, files, listing, reports, sharing, uploads
from tessera.domain import models as m
from tessera.domain.services import Services
from tessera.ports import Principal

Handler = Callable[[Services, Principal, Any], BaseModel]

# The long-poll's route: on AWS a resource (and a Lambda function) of its own, locally
# answered on the gateway's event loop; everything else is one `{proxy+}` resource.
LONGPOLL_PATH = "/v1/list_folder/longpoll"


def is_longpoll(path: str) -> bool:
    """Whether a request path is the long-poll's (API Gateway's `{proxy+}` and the resolver
    take it with a trailing slash too)."""
    return path.rstrip("/") == LONGPOLL_PATH


@dataclass(frozen=True)
class Route:
    """One route: method, path, models in and out, the domain call, and its errors (those
    of its own: every route may also answer 429 and 503, `COMMON_ERRORS`)."""

    method: str
    path: str
    summary: str
    request: type[BaseModel] | None
    response: Any  # a model class, or a union of them
    handler: Handler
    errors: tuple[int, ...] = (400, 401, 403, 404, 422)
    extra_responses: tuple[tuple[int, type[BaseModel], str], ...] = ()


# What any route may answer: throttled (the per-user bucket, API Gateway's stage limits), or
# the database (or an AWS service) unavailable for a while; both with Retry-After
COMMON_ERRORS = (429, 503)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/uploads",
        "Start an upload: which blocks to send, with their keys",
        m.UploadStartRequest,
        m.UploadStartResponse,
        uploads.start_upload,
        (401, 403, 413, 422, 429),
    ),
    Route(
        "POST",
        "/v1/uploads/blocks",
        "Append part of a long file's block list: which of its blocks to send",
        m.UploadBlocksRequest,
        m.UploadBlocksResponse,
        uploads.append_blocks,
        (401, 403, 404, 409, 413, 422, 429),
    ),
    Route(
        "POST",
        "/v1/uploads/urls",
        "Presigned PUTs for encoded blocks",
        m.UploadUrlsRequest,
        m.UploadUrlsResponse,
        uploads.upload_urls,
        (401, 404, 409, 413, 422),
    ),
    Route(
        "POST",
        "/v1/commit",
        "Commit a file version (409 on a stale parent_rev)",
        m.CommitRequest,
        m.FileEntry,
        commits.commit,
        (401, 403, 404, 409, 413, 422),
    ),
    Route(
        "POST",
        "/v1/commit_batch",
        "Many commits, each succeeding or failing alone",
        m.CommitBatchRequest,
        m.CommitBatchResponse,
        commits.commit_batch,
        (401, 404, 413, 422),
    ),
    Route(
        "POST",
        "/v1/download",
        "Presigned GETs and keys of a file's blocks",
        m.DownloadRequest,
        m.DownloadResponse,
        files.download,
        (401, 404, 422, 503),
        ((202, m.RestoringResponse, "blocks are being restored from cold storage"),),
    ),
    Route(
        "POST",
        "/v1/blocks/report",
        "Report a block that failed to download or decode: the server checks it now",
        m.BlockReportRequest,
        m.BlockReportResponse,
        reports.report_block,
        (401, 404, 422),
    ),
    Route(
        "POST",
        "/v1/metadata",
        "One entry by path or file_id",
        m.MetadataRequest,
        m.FileEntry | m.FolderEntry | m.DeletedEntry,
        files.metadata,
    ),
    Route(
        "POST",
        "/v1/list_folder",
        "List a folder (or its subtree) with a cursor",
        m.ListFolderRequest,
        m.ListFolderResponse,
        lambda s, p, r: listing.list_folder(s, p, r.path, r.recursive, r.limit),
    ),
    Route(
        "POST",
        "/v1/list_folder/continue",
        "Changes since a cursor",
        m.ListFolderContinueRequest,
        m.ListFolderResponse,
        lambda s, p, r: listing.list_folder_continue(s, p, r.cursor, r.limit),
    ),
    Route(
        "POST",
        LONGPOLL_PATH,
        "Wait for a change after a cursor",
        m.LongpollRequest,
        m.LongpollResponse,
        listing.longpoll,
        (400, 401, 422),
    ),
    Route(
        "POST",
        "/v1/revisions",
        "A file's versions, newest first",
        m.RevisionsRequest,
        m.RevisionsResponse,
        files.revisions,
    ),
    Route(
        "POST",
        "/v1/restore",
        "Restore a rev (as a new rev) or undelete",
        m.RestoreRequest,
        m.FileEntry | m.FolderEntry,
        files.restore,
        (401, 403, 404, 409, 413, 422),
    ),
    Route(
        "POST",
        "/v1/move",
        "Move or rename; file_id and history are kept",
        m.MoveRequest,
        m.FileEntry | m.FolderEntry,
        files.move,
        (401, 403, 404, 409, 422),
    ),
    Route(
        "POST",
        "/v1/delete",
        "Soft delete into the trash",
        m.DeleteRequest,
        m.FileEntry | m.FolderEntry,
        files.delete,
        (401, 403, 404, 409, 422),
    ),
    Route(
        "POST",
        "/v1/create_folder",
        "Create a folder",
        m.CreateFolderRequest,
        m.FolderEntry,
        lambda s, p, r: files.create_folder(s, p, r.path, idempotency_key=r.idempotency_key),
        (401, 403, 409, 422),
    ),
    Route(
        "POST",
        "/v1/trash/list",
        "Deleted entries still restorable",
        m.TrashListRequest,
        m.TrashListResponse,
        files.trash_list,
    ),
    Route(
        "POST",
        "/v1/share",
        "Invite a user by email into a folder (or change their access)",
        m.ShareRequest,
        m.ShareInfo,
        sharing.share,
        (400, 401, 403, 404, 409, 422),
    ),
    Route(
        "POST",
        "/v1/unshare",
        "Remove a member (or leave a share)",
        m.UnshareRequest,
        m.ShareInfo,
        sharing.unshare,
        (400, 401, 403, 404, 409, 422),
    ),
    Route(
        "POST",
        "/v1/shares",
        "The caller's shared folders, and the invitations waiting for them",
        m.SharesRequest,
        m.SharesResponse,
        lambda s, p, r: sharing.shares(s, p),
        (401, 422),
    ),
    Route(
        "POST",
        "/v1/shares/accept",
        "Accept an invitation: the shared folder is mounted in the caller's view",
        m.InvitationRequest,
        m.ShareInfo,
        sharing.accept,
        (401, 404, 409, 422),
    ),
    Route(
        "POST",
        "/v1/shares/decline",
        "Decline an invitation, or every invitation from one owner",
        m.DeclineRequest,
        m.InvitationsResponse,
        sharing.decline,
        (401, 404, 422),
    ),
    Route(
        "POST",
        "/v1/shares/invitations",
        "The invitations waiting for the caller (cheaper than /v1/shares)",
        m.SharesRequest,
        m.InvitationsResponse,
        lambda s, p, r: sharing.invitations(s, p),
        (401, 422),
    ),
    Route(
        "GET",
        "/v1/account",
        "Usage and quota",
        None,
        m.AccountResponse,
        lambda s, p, r: sharing.account(s, p),
        (401,),
    ),
)
