"""Block transfers: uploads (only the blocks the server asks for) and verified downloads.

Uploads follow the two-step flow of docs/api.md: `/v1/uploads` says which blocks are needed
(with their keys), `/v1/uploads/urls` gives a presigned PUT per encoded block, then one
`/v1/commit` (or `/v1/commit_batch` for many files). Blocks are read at their offsets and
re-hashed (a file that changed meanwhile is not committed), encoded and PUT by a thread pool,
a bounded window at a time, so memory stays flat whatever the file size. Each upload
session and the blocks already sent are recorded in the state database, so a killed client
resumes and sends only what is missing.

Downloads fetch blocks in parallel, decode each one (decrypt, decompress, re-hash), write
them in order into a temp file in the target's folder, check the whole content hash, fsync,
and only then rename into place — after re-checking that the local file did not change
since the plan was made.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import hashlib
import io
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypeVar

import httpx
from blake3 import blake3

from tessera.api.models import (
    MAX_HAVE_BLOCKS,
    BlockReportResponse,
    CommitBatchResponse,
    DownloadBlock,
    DownloadResponse,
    FileEntry,
    PresignedUrl,
    RestoringResponse,
    UploadBlocksResponse,
    UploadStartResponse,
    UploadUrlsResponse,
)
from tessera.blocks import (
    MAX_BLOCK_SIZE,
    BlockError,
    BlockRef,
    FileChangedError,
    FileManifest,
    block_id,
    content_hash,
    decode_block,
    default_workers,
    encode_block,
    scan_file,
)
from tessera_client.api import (
    MALFORMED_RESPONSE,
    Api,
    ApiError,
    ServerUnreachable,
    error_from,
    json_body,
    paired,
    parse,
)
from tessera_client.blockhttp import UnusableUrl
from tessera_client.fs import DiskFullError, Kind, SafeFilesystem, Stat, out_of_room
from tessera_client.paths import parent_of, path_key, server_path
from tessera_client.state import StateDB

_DOWNLOAD = "/v1/download"
# The longest a download waits for cold storage before asking again (a restore takes hours)
MAX_RESTORE_WAIT_S = 3600
FILE_WORKERS = 4  # files downloaded at once (each also fetches its blocks in parallel)
WINDOW_BYTES = 16 * 1024 * 1024
# What a batch's largest request (its commit) may carry, about: the server takes bodies of
# 5 MiB (Lambda's 6 MiB event, the body's quotes escaped in it), and a thousand files with
# long paths came to 5.3 MB, refused every round.
BATCH_BYTES = 2 * 1024 * 1024
WINDOW_BLOCKS = 128  # small files: few /v1/uploads/urls round trips (the server allows 1,000)
# Near the end windows shrink, each to half of what is left but not below this: the last
# window's commit overlaps no PUT, so its size is the sync's tail (a 110-file commit after
# the last PUT was 0.3-0.5 s of a 1,000-file sync).
TAIL_WINDOW_BYTES = 1024 * 1024

Progress = Callable[[str, int], None]


class RestoringError(Exception):
    """The file's blocks are being restored from cold storage; try again later."""

    def __init__(self, path: str, retry_after: float) -> None:
        super().__init__(f"{path}: restoring from cold storage (retry in {retry_after:.0f}s)")
        self.path, self.retry_after = path, retry_after


class IntegrityError(Exception):
    """The server sent something that does not verify; nothing was written."""


class SessionLost(Exception):
    """A block a resumed file was still to send was committed in its session meanwhile, by
    another of the session's files (a file's record knows only its own sends): the server
    refuses a URL for it (409), and the session cannot finish this file. The session's
    files not yet committed start afresh next round, where the 409 had ended every upload
    for as long as the session lived (an hour past its last use)."""

    def __init__(self, upload_id: str, message: str) -> None:
        super().__init__(message)
        self.upload_id = upload_id


# The code of an `ApiError` the block store answered (a PUT), not the API
BLOCK_UPLOAD_FAILED = "block_upload_failed"


class BlockReportedError(IntegrityError):
    """A block failed here, and the server queued a check (and repair) of it: try again in
    `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# A block the server checks on a report is repaired (or quarantined) within seconds locally
# and a minute on AWS (the scrub queue gathers its batch for up to 30 s): asked again before
# then, the server answers that the check is still queued, and the device waits again
REPORT_RETRY_S = 15.0
# How many times a device waits for the check of one block; then it refuses the file as it
# did before reports (a server whose checks never run had one `sync --once` wait for it
# round after round, 7 minutes); a later round reports it again
REPORT_WAITS = 4
# A block URL's answers that say its object is not there: S3 answers 403, not 404, to a
# signer without s3:ListBucket (a 403 is first taken for an expired URL and renewed)
_MISSING = (403, 404, 410)


class LocalChangedError(Exception):
    """The local file changed since the plan was made; it was left alone."""


class DownloadStopped(Exception):
    """The download was told to stop (its caller is stopping); its partial download is kept."""


def _check_stopping(what: str, stopping: Callable[[], bool] | None) -> None:
    if stopping is not None and stopping():
        raise DownloadStopped(f"{what}: stopped; the next try resumes it")


def rename_unless_taken(fs: SafeFilesystem, src: str, dst: str) -> None:
    """Rename `src` to `dst` unless something took `dst` since the plan looked: then
    `LocalChangedError`, and the next round plans from what is there. A file made at a
    new file's path between the look and the rename was written over, lost."""
    try:
        fs.rename(src, dst, replace=False)
    except FileExistsError:
        raise LocalChangedError(f"{dst} appeared locally since the plan; left alone") from None


@dataclass
class UploadItem:
    """A local file to commit: where, what (its manifest), on top of which rev of which
    file, and when the manifest's content was read from the file (`LocalScan.hashed_ns`)."""

    path: str
    manifest: FileManifest
    stat: Stat
    parent_rev: int | None
    hashed_ns: int
    parent_file_id: str | None = None

    @functools.cached_property
    def block_refs(self) -> dict[str, BlockRef]:
        """The manifest's blocks by id (a block the file holds twice reads the same bytes
        at either offset): each block of a huge file is found without a scan of them all."""
        return {b.id: b for b in self.manifest.blocks}


#: a block to send: (item, block id, upload id, key version, key (base64))
Work = tuple[UploadItem, str, str, int, str]
#: an encoded block: (item, block id, upload id, stored bytes, sha256 (base64))
Encoded = tuple[UploadItem, str, str, bytes, str]


@dataclass
class UploadResult:
    """What the server said about one committed file."""

    item: UploadItem
    entry: FileEntry | None = None
    status: int = 200
    error: ApiError | None = None


def _committed(item: UploadItem, body: dict[str, Any], entry: FileEntry) -> UploadResult:
    """What a commit answered with `entry` means: the file committed, when the entry is the
    version sent (its path, size and content hash); else the server's malformed answer.
    Recorded, another version would have stood for this file's content here: the device
    held the file in sync, and never sent it again, while the server kept something else.
    Not recorded, the file is committed again next round, under the same idempotency key."""
    if (
        path_key(entry.path_display) == path_key(body["path"])
        and entry.size == body["size"]
        and entry.content_hash == body["content_hash"]
    ):
        return UploadResult(item, entry=entry)
    error = ApiError(
        502,
        MALFORMED_RESPONSE,
        f"the server answered the commit of {body['path']!r} with another version"
        f" ({entry.path_display!r}, {entry.size} bytes, {entry.content_hash}); not recorded",
        {},
    )
    return UploadResult(item, status=error.status, error=error)


@dataclass
class TransferStats:
    """Bytes moved, for status lines and benchmarks."""

    block_bytes_up: int = 0
    blocks_up: int = 0
    block_bytes_down: int = 0
    blocks_down: int = 0
    #: blocks a download took from disk, not from the network: from the local file it
    #: replaced, or already in place in its partial download
    block_bytes_reused: int = 0
    blocks_reused: int = 0
    files_up: int = 0
    files_down: int = 0


def _iso(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, UTC).isoformat().replace("+00:00", "Z")


def same_stat(a: Stat, b: Stat) -> bool:
    """True when a file looks untouched (size + mtime + inode)."""
    return (a.kind, a.size, a.mtime_ns, a.inode) == (b.kind, b.size, b.mtime_ns, b.inode)


class Transfers:
    """Uploads and downloads for one synced folder."""

    def __init__(
        self,
        api: Api,
        fs: SafeFilesystem,
        state: StateDB,
        *,
        device: str,
        threads: int = 8,
        batch_files: int = 1000,
        batch_blocks: int = 10_000,
        progress: Progress | None = None,
    ) -> None:
        self.api, self.fs, self.state = api, fs, state
        self.device = device
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tessera-xfer")
        # Encoding is CPU work in native code: a thread per core, apart from the senders,
        # so the next window is encoded while this one's PUTs wait on the network.
        self.encoder = ThreadPoolExecutor(default_workers(), thread_name_prefix="tessera-encode")
        self.threads = threads
        self.batch_files = batch_files
        self.batch_blocks = batch_blocks
        self.progress = progress
        self.stats = TransferStats()
        # downloads run on several threads at once, and their blocks on the transfer threads
        self._stats_lock = threading.Lock()
        self._report_waits: Counter[str] = Counter()  # block id -> checks waited for
        self._report_lock = threading.Lock()  # (blocks come on the transfer threads)

    def _count(self, **added: int) -> None:
        """Add to `stats` (unlocked, updates from threads at once were lost)."""
        with self._stats_lock:
            for name, n in added.items():
                setattr(self.stats, name, getattr(self.stats, name) + n)

    def close(self) -> None:
        """Stop the transfer threads."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.encoder.shutdown(wait=True, cancel_futures=True)

    # -- uploads ------------------------------------------------------------------------

    def upload(
        self, items: list[UploadItem], on_result: Callable[[UploadResult], None] | None = None
    ) -> list[UploadResult]:
        """Upload and commit many files: few sessions, one commit batch per `batch_files`.

        `on_result` is called on this thread with each file's result as soon as it is known,
        so the caller records committed files while later windows still upload, not all of
        them after the last commit; one commit's committed files inside one transaction of
        the state database, so their records join it."""
        results: list[UploadResult] = []

        def emit(result: UploadResult) -> None:
            results.append(result)
            if on_result is not None:
                on_result(result)

        for batch in _batches(items, self.batch_files, self.batch_blocks):
            self._upload_batch(batch, emit)
        return results

    def _pending_key(self, item: UploadItem) -> str:
        return path_key(item.path)

    def _start_session(self, items: list[UploadItem]) -> dict[str, dict[str, Any]]:
        """Open (or resume) upload sessions; per item its session record."""
        sessions: dict[str, dict[str, Any]] = {}
        fresh: list[UploadItem] = []
        now = datetime.now(UTC).timestamp()
        for item in items:
            key = self._pending_key(item)
            rec = self.state.get_pending("upload", key)
            if (
                rec
                and rec["content_hash"] == item.manifest.content_hash
                and self.state.session_expiry(rec) - 60 > now
            ):
                # "sent" in the record itself: written by a client before pending_sent
                sent = self.state.pending_sent("upload", key) | set(rec.pop("sent", ()))
                sessions[item.path] = {**rec, "sent": sent}
            else:
                fresh.append(item)
        if fresh:
            body = {
                "files": [
                    {
                        "path": server_path(i.path),
                        "size": i.manifest.size,
                        "content_hash": i.manifest.content_hash,
                        "blocks": None if self._in_parts(i) else _block_specs(i.manifest.blocks),
                    }
                    for i in fresh
                ]
            }
            started = parse(UploadStartResponse, self.api.call("/v1/uploads", body))
            needed = {n.id: [n.key_version, n.key] for n in started.needed}
            for item in fresh:
                if self._in_parts(item):
                    needed |= self._append_parts(started.upload_id, item)
            with self.state.transaction():  # one write for the whole batch
                for item in fresh:
                    rec = {
                        "upload_id": started.upload_id,
                        "expires_at": started.expires_at.timestamp(),
                        "content_hash": item.manifest.content_hash,
                        "needed": {
                            b.id: needed[b.id] for b in item.manifest.blocks if b.id in needed
                        },
                        "in_parts": self._in_parts(item),
                        "idempotency_key": f"{self.device}-{uuid.uuid4().hex}",
                    }
                    self.state.put_pending("upload", self._pending_key(item), rec)
                    sessions[item.path] = {**rec, "sent": set()}
        return sessions

    def _in_parts(self, item: UploadItem) -> bool:
        """Whether the file's block list is longer than one request may carry."""
        return len(item.manifest.blocks) > self.batch_blocks

    def _append_parts(self, upload_id: str, item: UploadItem) -> dict[str, list[Any]]:
        """Send a long file's block list to its session in parts; the blocks needed, with
        their key versions and keys. A part is retried safely: it names where it starts."""
        needed: dict[str, list[Any]] = {}
        blocks = item.manifest.blocks
        for first in range(0, len(blocks), self.batch_blocks):
            body = {
                "upload_id": upload_id,
                "path": server_path(item.path),
                "first": first,
                "blocks": _block_specs(blocks[first : first + self.batch_blocks]),
            }
            answer = parse(UploadBlocksResponse, self.api.call("/v1/uploads/blocks", body))
            needed |= {n.id: [n.key_version, n.key] for n in answer.needed}
        return needed

    def _upload_batch(self, items: list[UploadItem], emit: Callable[[UploadResult], None]) -> None:
        try:
            sessions = self._start_session(items)
        except ApiError as e:
            if len(items) == 1 or not e.refused:
                # the server down or throttling after every retry: split up, each file
                # would wait out the same retries again, for hours on a large batch
                for item in items:
                    emit(UploadResult(item, status=e.status, error=e))
                return
            # one bad file must not block the others: retry them one by one
            for item in items:
                self._upload_batch([item], emit)
            return
        work: list[Work] = []
        seen: set[tuple[str, str]] = set()
        for item in items:
            rec = sessions[item.path]
            sent = rec["sent"]
            for ref in item.manifest.blocks:
                if ref.id in rec["needed"] and ref.id not in sent:
                    if (rec["upload_id"], ref.id) in seen:
                        continue
                    seen.add((rec["upload_id"], ref.id))
                    kv, key = rec["needed"][ref.id]
                    work.append((item, ref.id, rec["upload_id"], kv, key))
        done: set[str] = set()
        submitted: set[str] = set()  # handed to a commit: its session record is the marker
        # a commit that landed without its answer is adopted by (`SyncEngine`)

        def emit_once(result: UploadResult) -> None:
            done.add(result.item.path)
            emit(result)

        try:
            self._send_and_commit(
                list(_windows(work, items)), items, sessions, emit_once, submitted
            )
        except (ApiError, SessionLost) as e:
            if isinstance(e, ApiError) and (
                e.status not in (404, 410) or e.code == BLOCK_UPLOAD_FAILED
            ):
                # a store answering 404 to a PUT (a missing bucket, a proxy) is no lost
                # session: taken for one, every round started afresh, without a word
                raise
            # the session expired or vanished: forget it, the next round starts afresh; one
            # that cannot finish some files: forget it for those (not another session's,
            # nor those sent to a commit, whose records a commit that landed needs)
            left = [item for item in items if item.path not in done]
            if isinstance(e, SessionLost):
                forgotten = [
                    item
                    for item in left
                    if sessions[item.path]["upload_id"] == e.upload_id
                    and item.path not in submitted
                ]
            else:
                forgotten = left
            with self.state.transaction():
                for item in forgotten:
                    self.state.drop_pending("upload", self._pending_key(item))
            for item in left:
                emit(UploadResult(item, status=0))

    def _read_block(self, item: UploadItem, block: str) -> bytes:
        ref = item.block_refs[block]
        with self.fs.open_read(item.path) as f:
            f.seek(ref.offset)
            data = f.read(ref.size)
        if len(data) != ref.size or "b3:" + blake3(data).hexdigest() != block:
            raise FileChangedError(f"{item.path} changed while it was uploaded")
        return data

    def _encode(self, item: UploadItem, block: str, kv: int, key: str) -> tuple[bytes, str]:
        encoded = encode_block(self._read_block(item, block), block, base64.b64decode(key), kv)
        stored = bytes(encoded)  # httpx sends bytes, not a bytearray (one memcpy per block)
        return stored, base64.b64encode(hashlib.sha256(stored).digest()).decode()

    def _send_and_commit(
        self,
        windows: list[list[Work]],
        items: list[UploadItem],
        sessions: dict[str, dict[str, Any]],
        emit: Callable[[UploadResult], None],
        submitted: set[str],
    ) -> None:
        """Send every window and commit every file, pipelined: a window's PUTs are queued
        while the last one's are still in flight, and the window after is read and encoded
        meanwhile (three windows in memory at most),
        and the files whose blocks have all arrived are committed, on a commit thread, while
        later windows upload; `emit` gets each commit's results on this thread once it is
        back. Files that changed while they were read get status 0 (the next round uploads
        them again). `submitted` gets the files handed to a commit."""
        changed: set[str] = set()
        # which files wait for a block: a block sent is recorded once per window for each
        waiting: dict[tuple[str, str], list[str]] = {}
        outstanding: dict[str, set[str]] = {}
        for item in items:
            rec = sessions[item.path]
            outstanding[item.path] = set(rec["needed"]) - rec["sent"]
            for block in rec["needed"]:
                waiting.setdefault((rec["upload_id"], block), []).append(item.path)
        commits: deque[Future[list[UploadResult]]] = deque()  # in submission order
        # Two commits in flight: a window's commit reads its staged blocks back from the
        # store while the one before writes, and the last window's commit need not wait
        # for the one before it to return (the server orders their writes; results are
        # still handed over in submission order).
        committers = 2
        with ThreadPoolExecutor(committers, thread_name_prefix="tessera-commit") as committer:

            def commit_ready(*, last: bool = False) -> None:
                """Commit the files whose blocks have all arrived. While every committer
                is busy they wait and go with the next commit (unless `last`): a commit
                costs the server as much per request as per file, so the small windows of
                the tail are committed together, not one after another."""
                if not last and sum(not c.done() for c in commits) >= committers:
                    return
                done = submitted | changed
                ready = [i for i in items if not outstanding[i.path] and i.path not in done]
                if ready:
                    submitted.update(i.path for i in ready)
                    commits.append(committer.submit(self._commit, ready, sessions))

            def hand_over(*, block: bool) -> None:
                """Emit the results of the commits that are back (all of them: `block`)."""
                while commits and (block or commits[0].done()):
                    self._hand_over(commits.popleft().result(), emit)

            def finish(puts: list[tuple[Encoded, Future[None]]]) -> None:
                """Wait for a window's PUTs, record what arrived, commit what is complete."""
                arrived: dict[str, list[str]] = {}  # path → the blocks it waited for
                for b, put in puts:
                    put.result()
                    self.stats.blocks_up += 1
                    self.stats.block_bytes_up += len(b[3])
                    if self.progress:  # of the file's own bytes: the bar's total is its size
                        self.progress(b[0].path, b[0].block_refs[b[1]].size)
                    for path in waiting.get((b[2], b[1]), ()):
                        sessions[path]["sent"].add(b[1])
                        outstanding[path].discard(b[1])
                        arrived.setdefault(path, []).append(b[1])
                with self.state.transaction():  # one write per window, not one per block
                    for path, blocks in arrived.items():
                        self.state.add_pending_sent("upload", path_key(path), blocks)
                commit_ready()
                hand_over(block=False)

            encoding: list[Future[tuple[bytes, str]]] = []
            sending: list[tuple[Encoded, Future[None]]] = []  # the window being waited for
            queued: list[tuple[Encoded, Future[None]]] = []  # the next one, behind it
            try:
                commit_ready()  # files whose blocks the server already had
                encoding = self._encode_window(windows[0]) if windows else []
                for n, window in enumerate(windows):
                    encoded = self._encoded(window, encoding, changed)
                    encoding = self._encode_window(windows[n + 1]) if n + 1 < len(windows) else []
                    # queued behind the last window's PUTs, so the senders never idle
                    # between windows (waiting for a window's stragglers, then for the next
                    # window's URLs, left them idle a third of the time with small files)
                    queued = self._start_puts(encoded)
                    if sending:
                        finish(sending)
                    sending, queued = queued, []
                if sending:
                    finish(sending)
                commit_ready(last=True)
            except BaseException:
                unstarted: list[Future[Any]] = [*encoding, *(p for _, p in sending + queued)]
                for future in unstarted:
                    future.cancel()  # dropped if not started yet: the next round sends it
                wait(commits)  # a commit in flight still records what it committed
                for commit in commits:
                    if commit.exception() is None:  # and its files are recorded as such
                        self._hand_over(commit.result(), emit)
                raise
            hand_over(block=True)
        for item in items:
            # changed meanwhile, or waiting for a block another file shares and was to send
            # but changed: the next round sends it
            if item.path not in submitted:
                emit(UploadResult(item, status=0))

    def _encode_window(self, window: list[Work]) -> list[Future[tuple[bytes, str]]]:
        return [self.encoder.submit(self._encode, w[0], w[1], w[3], w[4]) for w in window]

    def _encoded(
        self, window: list[Work], futures: list[Future[tuple[bytes, str]]], changed: set[str]
    ) -> list[Encoded]:
        """The window's encoded blocks; the files that changed meanwhile go to `changed`."""
        encoded: list[Encoded] = []
        for (item, block, upload_id, _kv, _key), fut in zip(window, futures, strict=True):
            try:
                stored, sha = fut.result()
            except (FileChangedError, OSError):
                changed.add(item.path)
                continue
            encoded.append((item, block, upload_id, stored, sha))
        return encoded

    def _start_puts(self, encoded: list[Encoded]) -> list[tuple[Encoded, Future[None]]]:
        """Ask for the PUT URLs of encoded blocks (one call per session) and start the PUTs."""
        by_session: dict[str, list[Encoded]] = {}
        for e in encoded:
            by_session.setdefault(e[2], []).append(e)
        puts: list[tuple[Encoded, Future[None]]] = []
        for upload_id, blocks in by_session.items():
            puts += [
                (b, self.pool.submit(self._put_block, b, u))
                for b, u in self._block_urls(upload_id, blocks)
            ]
        return puts

    def _block_urls(
        self, upload_id: str, blocks: list[Encoded]
    ) -> list[tuple[Encoded, PresignedUrl]]:
        """Each encoded block of a session with its PUT URL (`/v1/uploads/urls`)."""
        body = {
            "upload_id": upload_id,
            "blocks": [{"id": b[1], "size": len(b[3]), "sha256": b[4]} for b in blocks],
        }
        try:
            answer = parse(UploadUrlsResponse, self.api.call("/v1/uploads/urls", body))
        except ApiError as e:
            if e.status == 409:
                raise SessionLost(upload_id, e.message) from e
            raise
        if answer.expires_at is not None:
            # in use, the session lives on: a resume past its first hour had started over
            self.state.extend_session(upload_id, answer.expires_at.timestamp())
        return paired(blocks, answer.urls, "block URLs")

    def _put_block(self, block: Encoded, url: PresignedUrl) -> None:
        """PUT an encoded block; its URL renewed once when the store refuses it (403): a
        window's URLs are signed while the window before is still sending, and on a slow
        link (or after a suspend) they expired first, which failed the whole upload."""
        try:
            self._put(url.method, url.url, url.headers, block[3])
        except ApiError as e:
            if e.status != 403:
                raise
            [(_, fresh)] = self._block_urls(block[2], [block])
            self._put(fresh.method, fresh.url, fresh.headers, block[3])

    def _put(self, method: str, url: str, headers: dict[str, str], data: bytes) -> None:
        if method != "PUT":  # as `_get`: a block is stored, nothing else
            raise ApiError(502, BLOCK_UPLOAD_FAILED, f"the server asks for a {method[:20]!r}", {})
        try:
            response = self.api.transfer(method, url, headers, data)
        except UnusableUrl as e:
            raise ApiError(502, BLOCK_UPLOAD_FAILED, f"the server sent {e}", {}) from e
        if response.status_code >= 300:
            raise ApiError(response.status_code, BLOCK_UPLOAD_FAILED, response.text[:200], {})

    def _commit(
        self, items: list[UploadItem], sessions: dict[str, dict[str, Any]]
    ) -> list[UploadResult]:
        if not items:
            return []
        ready: list[UploadItem] = []
        results: list[UploadResult] = []
        for item in items:
            now = self.fs.lstat_if_any(item.path)
            if now is None or not same_stat(now, item.stat):
                results.append(UploadResult(item, status=0))  # changed again: next round
            else:
                ready.append(item)
        bodies = [
            {
                "path": server_path(i.path),
                "parent_rev": i.parent_rev,
                "parent_file_id": i.parent_file_id,
                "upload_id": sessions[i.path]["upload_id"],
                # a long list is the session's already (`_append_parts`)
                "blocks": None
                if sessions[i.path].get("in_parts")
                else _block_specs(i.manifest.blocks),
                "size": i.manifest.size,
                "content_hash": i.manifest.content_hash,
                "mtime": _iso(i.stat.mtime_ns),
                "idempotency_key": sessions[i.path]["idempotency_key"],
            }
            for i in ready
        ]
        # what a commit that lands unanswered is known by (`SyncEngine._adopt_commits`)
        self.state.merge_pending(
            "upload",
            {
                path_key(i.path): {
                    "commit": {"parent_rev": i.parent_rev, "file_id": i.parent_file_id}
                }
                for i in ready
            },
        )
        if len(ready) == 1:
            try:
                entry = parse(FileEntry, self.api.call("/v1/commit", bodies[0]))
                results.append(_committed(ready[0], bodies[0], entry))
            except ApiError as e:
                results.append(UploadResult(ready[0], status=e.status, error=e))
        elif ready:
            answer = parse(
                CommitBatchResponse, self.api.call("/v1/commit_batch", {"entries": bodies})
            )
            for (item, body), res in paired(
                list(zip(ready, bodies, strict=True)), answer.entries, "commit results"
            ):
                if res.entry is not None:
                    results.append(_committed(item, body, res.entry))
                else:
                    err = res.error
                    api_err = ApiError(
                        res.status,
                        err.code if err else "error",
                        err.message if err else "",
                        (err.model_extra or {}) if err else {},
                    )
                    results.append(UploadResult(item, status=res.status, error=api_err))
        self.stats.files_up += sum(r.entry is not None for r in results)
        return results

    def _hand_over(self, results: list[UploadResult], emit: Callable[[UploadResult], None]) -> None:
        """Emit a commit's results. The committed files are emitted (recorded) in one state
        transaction with their sessions dropped: recording one is two writes, and a commit
        of the state database per file cost more CPU than recording it; and dropped on the
        commit thread before, a kill before the record left neither (`SyncEngine` adopts a
        commit from its session). The rest (conflicts, refusals) may rename files or
        download: they go after, outside it."""
        with self.state.transaction():
            for r in results:
                # done (committed or refused): the session is no longer ours. After a
                # failure that may pass (5xx, 429, a proxy's page), it is kept: its blocks
                # were sent, and the next round commits them with the same idempotency key
                if r.entry is not None or (r.error is not None and r.error.refused):
                    self.state.drop_pending("upload", path_key(r.item.path))
                if r.entry is not None:
                    emit(r)
        for r in results:
            if r.entry is None:
                emit(r)

    # -- downloads ----------------------------------------------------------------------

    def download(
        self,
        path: str,
        file_id: str,
        rev: int,
        expected_hash: str,
        expect_local: Stat | None,
        *,
        mode_from: str | None = None,
        local_manifest: FileManifest | None = None,
        include_deleted: bool = False,
        stopping: Callable[[], bool] | None = None,
    ) -> tuple[FileEntry, Stat, list[str]]:
        """Download `rev` of a file into `path`, verified, atomically. Returns (entry, stat, ids).

        `expect_local` is what the planner saw at `path` (None: nothing). If the local file
        no longer matches it when the download is ready, it is left alone (LocalChangedError).
        The new file takes the permissions of the file at `mode_from` (default: `path`):
        a conflict moves the local file aside first, and its copy's are the ones to keep.
        Blocks that file holds are read from it, not fetched; `local_manifest`, its scan
        when the caller has one, spares reading it whole to find them. `include_deleted`:
        the file may be in the trash (a sync never asks for one deleted since its listing).
        `stopping`, once true, ends it before its first request or after the block it is
        writing (`DownloadStopped`; the partial download keeps what it wrote).

        A download that fails leaves its temp file (`open_partial`, named after `path`):
        the next attempt, in this process or another, keeps the blocks it finds there at
        their offsets, each hashed again, and fetches only the rest. A full disk removes it.
        While another process writes it, a download takes a fresh temp file instead.

        The server is told which of them this device holds (`have`), so none of those,
        cold, waits for a restore. One not read back after all (the file changed meanwhile)
        is asked for again alone, without saying so: fetched, or, cold, restored
        (`RestoringError`) for a later round.
        """
        _check_stopping(path, stopping)
        self.fs.check_fits(path)
        here = self._local_blocks(path, mode_from or path, local_manifest)
        try:
            have = here.ids(MAX_HAVE_BLOCKS)
            first = self._download_page(
                path, file_id, rev, 0, have=have, include_deleted=include_deleted
            )
            if expected_hash and first.entry.content_hash != expected_hash:
                raise IntegrityError(f"{path}: the server sent another version than it listed")
            if not self.api.takes(_DOWNLOAD, "have"):  # a server from before it checked all
                have = frozenset()
            plan = _BlockPlan(path, file_id, rev, first.entry, have, include_deleted)
            folder = parent_of(path)
            try:
                if folder:
                    self.fs.makedirs(folder)
                tmp, temp = self._open_temp(folder, path, like=mode_from or path)
            except OSError as e:
                if out_of_room(e):  # out of inodes, or of room for a folder
                    raise _disk_full(path) from e
                raise
        except BaseException:
            here.close()
            raise
        try:
            # renamed while still open, so the partial's lock holds until it is in place: a
            # second client on this folder could open it between a close and the rename,
            # and write its blocks into the file then put in place (POSIX renames an open
            # file; the client's filesystem layer is POSIX only)
            with here, temp:
                try:
                    for plaintext, in_place in self._fetch_blocks(first, plan, here, temp):
                        temp.put(plaintext, in_place=in_place)
                        if self.progress:
                            self.progress(path, len(plaintext))
                        _check_stopping(path, stopping)
                    plan.check_complete()
                    temp.handle.truncate()  # a partial of a longer version held more
                    if temp.resumable:  # private until now
                        self.fs.give_mode(temp.handle, like=mode_from or path)
                    self.fs.fsync(temp.handle)
                    if first.entry.mtime is not None:
                        # a time this disk cannot hold keeps the download's own
                        with contextlib.suppress(OverflowError, ValueError):
                            self.fs.set_mtime(tmp, int(first.entry.mtime.timestamp() * 1e9))
                    self._check_local(path, expect_local)
                    if expect_local is None:  # a new file: never over one made meanwhile
                        rename_unless_taken(self.fs, tmp, path)
                    else:
                        self.fs.rename(tmp, path)
                except BaseException as e:
                    self._leave(tmp, temp, e)  # still held: by name, it is still this one
                    raise
        except BaseException as e:
            if out_of_room(e):
                raise _disk_full(path) from e
            raise
        self._count(files_down=1)
        return first.entry, self.fs.lstat(path), plan.ids

    def _leave(self, tmp: str, temp: _TempFile, error: BaseException) -> None:
        """A failed download's temp file: kept for the next attempt when it is a partial
        download holding something (touched: written now, whatever old mtime the server's
        gave it, so the scan's sweep keeps it); removed otherwise, and on a full disk."""
        with contextlib.suppress(OSError):
            if out_of_room(error) or not temp.resumable or self.fs.lstat(tmp).size == 0:
                self.fs.remove(tmp)
            else:
                self.fs.set_mtime(tmp, time.time_ns())

    def _open_temp(self, folder: str, path: str, *, like: str) -> tuple[str, _TempFile]:
        """The temp file a download of `path` writes, with what an earlier attempt left in
        it: the partial download of `path`; or, when another process writes that one or
        something else sits under its name, a fresh temp file (nothing resumed)."""
        try:
            tmp, handle = self.fs.open_partial(folder, _partial_key(path))
            resumable = True
        except OSError as e:
            if out_of_room(e):
                raise
            tmp, handle = self.fs.create_temp(folder, like=like)
            resumable = False
        try:
            return tmp, _TempFile(handle, resumable=resumable)
        except BaseException:
            handle.close()
            raise

    def _download_page(
        self,
        path: str,
        file_id: str,
        rev: int,
        from_block: int,
        limit: int | None = None,
        *,
        have: frozenset[str] = frozenset(),
        include_deleted: bool = False,
    ) -> DownloadResponse:
        """One page of the file's blocks (with their URLs) from block number `from_block`."""
        body: dict[str, Any] = {"file_id": file_id, "rev": rev, "from_block": from_block}
        if limit is not None:
            body["limit"] = limit
        if include_deleted:  # (only then: a server from before it knows no such field)
            body["include_deleted"] = True
        # the first page checks the whole version, a later one its own blocks; a single
        # later block asked for again (limit 1) is checked alone: `have` would be dead weight
        if have and (from_block == 0 or limit is None):
            body["have"] = sorted(have)
        response = self.api.send("POST", _DOWNLOAD, body, optional=("have",))
        if response.status_code == 202:
            # bounded: a wait of 1e12 s overflowed the daemon's timer and ended it
            answer = parse(RestoringResponse, json_body(response))
            raise RestoringError(path, float(min(max(answer.retry_after, 1), MAX_RESTORE_WAIT_S)))
        if response.status_code >= 400:
            raise error_from(response)
        return parse(DownloadResponse, json_body(response))

    def _blocks(
        self, answer: DownloadResponse, plan: _BlockPlan
    ) -> Iterator[tuple[int, DownloadBlock]]:
        """(block number, block) of the whole file, asking for each page as it is needed: a
        page's URLs expire, so they are fetched only when their turn is near."""
        while True:
            for block in answer.blocks:
                yield plan.add(block), block
            if answer.next_block is None:
                return
            if not answer.blocks or answer.next_block != len(plan.ids):
                raise IntegrityError(f"{plan.path}: the server sent a malformed block list")
            answer = self._plan_page(plan, answer.next_block, have=plan.have)

    def _plan_page(
        self, plan: _BlockPlan, from_block: int, limit: int | None = None, *, have: frozenset[str]
    ) -> DownloadResponse:
        """A page of `plan`'s version (`_download_page`)."""
        return self._download_page(
            plan.path,
            plan.file_id,
            plan.rev,
            from_block,
            limit,
            have=have,
            include_deleted=plan.include_deleted,
        )

    def _renewed(
        self, plan: _BlockPlan, number: int, block: DownloadBlock, *, have: frozenset[str]
    ) -> DownloadBlock:
        """Block `number` asked for again, alone (a fresh URL): it must be the same block,
        else a server could put one block's bytes where another belongs."""
        renewed = self._plan_page(plan, number, limit=1, have=have).blocks
        same = (block.id, block.offset, block.size)
        if not renewed or (renewed[0].id, renewed[0].offset, renewed[0].size) != same:
            raise IntegrityError(f"{plan.path}: the server renewed block {number} as another")
        return renewed[0]

    def _fetch(self, plan: _BlockPlan, number: int, block: DownloadBlock) -> bytes:
        response = self._get(block)
        if response.status_code == 403:  # its URL expired while earlier blocks came: renew it
            block = self._renewed(plan, number, block, have=plan.have - {block.id})
            response = self._get(block)
        if response.status_code in _MISSING:
            raise self._reported(plan, block, f"is not in the store ({response.status_code})")
        if response.status_code != 200:
            raise ApiError(response.status_code, "block_download_failed", response.text[:200], {})
        try:
            plaintext = decode_block(response.content, block.id, base64.b64decode(block.key))
        except (BlockError, ValueError) as e:
            raise self._reported(plan, block, f"does not verify: {e}") from e
        if len(plaintext) != block.size:
            raise IntegrityError(f"block {block.id} has {len(plaintext)} bytes, not {block.size}")
        if self._report_waits:  # it came whole: a later loss of it is waited for afresh
            with self._report_lock:
                self._report_waits.pop(block.id, None)
        self._count(blocks_down=1, block_bytes_down=len(plaintext))
        return plaintext

    def _reported(self, plan: _BlockPlan, block: DownloadBlock, what: str) -> IntegrityError:
        """The error of a block that failed here, once the server is told (POST
        /v1/blocks/report), so it checks and repairs the stored block now instead of at its
        weekly scrub; when it queued that check, the error says to try again soon."""
        message = f"block {block.id} {what}"
        body = {"file_id": plan.file_id, "rev": plan.rev, "block_id": block.id}
        try:
            answer = parse(
                BlockReportResponse,
                self.api.call("/v1/blocks/report", {**body, "reason": message[:500]}),
            )
        except (ApiError, ServerUnreachable) as e:  # an older server, or none: still refused
            return IntegrityError(f"{message} (could not report it: {e})")
        if not answer.queued:
            return IntegrityError(f"{message}; the server says: {answer.detail}")
        with self._report_lock:
            self._report_waits[block.id] += 1
            waits = self._report_waits[block.id]
            if waits > REPORT_WAITS:
                del self._report_waits[block.id]  # a later sync waits for it again
        if waits > REPORT_WAITS:
            return IntegrityError(f"{message}; reported {waits} times, not checked yet")
        return BlockReportedError(f"{message}; reported: {answer.detail}", REPORT_RETRY_S)

    def _get(self, block: DownloadBlock) -> httpx.Response:
        # a block is fetched, nothing else: the server's answer must not have this device
        # send a DELETE or POST to whatever its URL names (a service on this machine)
        if block.method != "GET":
            raise IntegrityError(f"block {block.id}: the server asks for a {block.method[:20]!r}")
        try:
            return self.api.transfer(block.method, block.url, block.headers)
        except UnusableUrl as e:
            raise IntegrityError(f"block {block.id}: the server sent {e}") from e

    def _local_blocks(self, path: str, source: str, manifest: FileManifest | None) -> _LocalBlocks:
        """The blocks of the local file `source` (the version a download replaces, or a
        conflict's copy of it) that the download may read from disk. A one-byte edit
        elsewhere fetched the whole file again; now only the blocks this device lacks travel.

        Without its `manifest`, these are the blocks of the version of `path` synced here
        (one seen first has nothing to share), and the file is chunked only once the
        download wants one of them (`_SyncedBlocks`): a file rewritten whole elsewhere
        shares none, and was read whole for nothing. Each block taken is hashed again (the
        file may change meanwhile). Nothing when the file cannot be read: every block is
        then fetched, as before."""
        synced = self.state.base_blocks(path) if manifest is None else []
        if manifest is None and not synced:
            return _LocalBlocks.none()
        try:
            disk = self.fs.local_path(source)
            if self.fs.lstat(source).kind != Kind.FILE or (manifest is None and disk is None):
                return _LocalBlocks.none()
            if manifest is None and source == path:
                return _SyncedBlocks(self.fs, source, synced)
            if manifest is None:  # another file (a copy made of it): its own blocks
                assert disk is not None
                manifest = scan_file(disk)
            return _LocalBlocks(self.fs.open_read(source), manifest.blocks)
        except (OSError, BlockError):  # gone, unreadable, changing: fetched instead
            return _LocalBlocks.none()

    def _block(
        self,
        plan: _BlockPlan,
        temp: _TempFile,
        here: _LocalBlocks,
        number: int,
        block: DownloadBlock,
    ) -> tuple[bytes, bool]:
        """Block `number`'s plaintext, and whether it is in place already: in the partial
        download, else from the local file when it holds it, else fetched (one the server
        was told this device holds, asked for again: it may be cold)."""
        plaintext = temp.read(block)
        in_place = plaintext is not None
        if plaintext is None:
            plaintext = here.read(block)
        if plaintext is not None:
            self._count(blocks_reused=1, block_bytes_reused=len(plaintext))
            return plaintext, in_place
        if block.id in plan.have:  # told held: asked for again without it (it may be cold)
            block = self._renewed(plan, number, block, have=plan.have - {block.id})
        return self._fetch(plan, number, block), False

    def _fetch_blocks(
        self, first: DownloadResponse, plan: _BlockPlan, here: _LocalBlocks, temp: _TempFile
    ) -> Iterator[tuple[bytes, bool]]:
        """The plaintext blocks in order, each with whether it is in place in the partial
        download already; fetched (or read from `here`) `threads` at a time."""
        pending: deque[Future[tuple[bytes, bool]]] = deque()
        blocks = self._blocks(first, plan)

        def fetch(item: tuple[int, DownloadBlock]) -> Future[tuple[bytes, bool]]:
            return self.pool.submit(self._block, plan, temp, here, *item)

        for item in blocks:
            pending.append(fetch(item))
            if len(pending) >= self.threads:
                break
        try:
            while pending:
                data = pending.popleft().result()
                nxt = next(blocks, None)
                if nxt is not None:
                    pending.append(fetch(nxt))
                yield data
        finally:
            for fut in pending:
                fut.cancel()

    def _check_local(self, path: str, expect: Stat | None) -> None:
        try:
            now: Stat | None = self.fs.lstat(path)
        except FileNotFoundError:
            now = None
        if expect is None and now is None:
            return
        if expect is None or now is None or not same_stat(now, expect):
            raise LocalChangedError(f"{path} changed locally since the plan; left alone")
        if now.kind == Kind.SYMLINK:
            raise LocalChangedError(f"{path} is a symlink; left alone")


class _LocalBlocks:
    """Blocks of a local file a download may take instead of fetching them: block id →
    (offset, size) from a scan, read back and hashed again when taken, so a file that
    changed since gives up only the blocks that no longer match."""

    def __init__(self, handle: BinaryIO | None, blocks: Iterable[BlockRef]) -> None:
        self._handle = handle
        self._know(blocks)
        self._lock = threading.Lock()  # one file position for the transfer threads

    def _know(self, blocks: Iterable[BlockRef]) -> None:
        """Where each of `blocks` is in the file."""
        self._where = {b.id: (b.offset, b.size) for b in blocks}

    def _offset(self, block: DownloadBlock) -> int | None:
        """Where the file may hold `block`, if anywhere."""
        spot = self._where.get(block.id)
        return spot[0] if spot is not None and spot[1] == block.size else None

    @classmethod
    def none(cls) -> _LocalBlocks:
        """No local blocks: every block is fetched."""
        return cls(None, ())

    def ids(self, limit: int) -> frozenset[str]:
        """The ids of the first `limit` blocks the file holds (in file order)."""
        if self._handle is None:
            return frozenset()
        return frozenset(list(self._where)[:limit])

    def read(self, block: DownloadBlock) -> bytes | None:
        """`block`'s bytes from the file, or None when it does not hold them (now)."""
        offset = self._offset(block)
        if self._handle is None or offset is None:
            return None
        try:
            with self._lock:
                data = self._read_at(self._handle, offset, block.size)
        except (OSError, ValueError):  # (ValueError: closed meanwhile, the download failed)
            return None
        return data if len(data) == block.size and block_id(data) == block.id else None

    def _read_at(self, handle: BinaryIO, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` (under the lock)."""
        handle.seek(offset)
        return handle.read(size)

    def close(self) -> None:
        """Close the file (again: nothing)."""
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> _LocalBlocks:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _SyncedBlocks(_LocalBlocks):
    """The local file as last synced, by the block ids the state database recorded for
    it: named to the server at once (`have`), and the file chunked (as a scan does, to
    find where each block is) only when the download first wants one of them."""

    def __init__(self, fs: SafeFilesystem, source: str, synced: list[str]) -> None:
        super().__init__(None, ())
        self._fs, self._source, self._synced = fs, source, synced
        self._wanted = frozenset(synced)
        self._chunked = self._closed = False

    def ids(self, limit: int) -> frozenset[str]:
        return frozenset(self._synced[:limit])

    def _offset(self, block: DownloadBlock) -> int | None:
        if block.id not in self._wanted:
            return None
        with self._lock:  # once, whichever transfer thread asks first
            if self._closed:  # (a failed download's threads still running)
                return None
            if not self._chunked:
                self._chunked = True
                self._chunk()
        return super()._offset(block)

    def _chunk(self) -> None:
        try:
            disk = self._fs.local_path(self._source)
            if disk is None:
                return
            blocks = scan_file(disk).blocks
            self._handle = self._fs.open_read(self._source)
        except (OSError, BlockError):  # gone, unreadable, changing: fetched instead
            return
        self._know(blocks)

    def close(self) -> None:
        with self._lock:  # after a chunk under way: its handle is closed too
            self._closed = True
        super().close()


class _TempFile(_LocalBlocks):
    """The temp file a download writes, block after block, and, when it is the path's
    partial download (`resumable`), what an earlier, failed attempt left in it: a block sits
    at its own offset when that attempt wrote it (of this version or of another: each is
    hashed again when taken), and the download writes nothing over it. The transfer threads
    read only ahead of where the writer is, through its own handle and lock: the very file
    it writes, not whatever the name leads to by then."""

    def __init__(self, handle: BinaryIO, *, resumable: bool) -> None:
        super().__init__(handle, ())
        self.resumable = resumable
        self._held = handle.seek(0, io.SEEK_END) if resumable else 0
        handle.seek(0)

    @property
    def handle(self) -> BinaryIO:
        """The temp file's handle (never None, unlike the base's)."""
        assert self._handle is not None
        return self._handle

    def _offset(self, block: DownloadBlock) -> int | None:
        return block.offset if block.offset + block.size <= self._held else None

    def _read_at(self, handle: BinaryIO, offset: int, size: int) -> bytes:
        position = handle.tell()  # the writer's, kept
        try:
            return super()._read_at(handle, offset, size)
        finally:
            handle.seek(position)

    def put(self, plaintext: bytes, *, in_place: bool) -> None:
        """Write the next block, or step over it where it is in place already."""
        with self._lock:
            if in_place:
                self.handle.seek(len(plaintext), io.SEEK_CUR)
            else:
                self.handle.write(plaintext)


class _BlockPlan:
    """A download's file (`path`, `file_id` at `rev`) and its block list, checked as its
    pages come: contiguous, each block at most `MAX_BLOCK_SIZE`, never past the file's size,
    and in the end the file's content hash. `have`: the blocks the server was told this
    device holds; `include_deleted`: whether the file may be in the trash."""

    def __init__(
        self,
        path: str,
        file_id: str,
        rev: int,
        entry: FileEntry,
        have: frozenset[str],
        include_deleted: bool,
    ) -> None:
        self.path, self.file_id, self.rev, self.entry = path, file_id, rev, entry
        self.have, self.include_deleted = have, include_deleted
        self.ids: list[str] = []
        self.offset = 0

    def add(self, block: DownloadBlock) -> int:
        """Take the next block; returns its number."""
        if block.offset != self.offset or not 0 < block.size <= MAX_BLOCK_SIZE:
            raise IntegrityError(f"{self.path}: the server sent a malformed block list")
        self.offset += block.size
        if self.offset > self.entry.size:
            raise IntegrityError(f"{self.path}: blocks add up to more than {self.entry.size} bytes")
        self.ids.append(block.id)
        return len(self.ids) - 1

    def check_complete(self) -> None:
        """Refuse a block list that does not add up to the file the server announced."""
        if self.offset != self.entry.size:
            raise IntegrityError(
                f"{self.path}: blocks add up to {self.offset} bytes, not {self.entry.size}"
            )
        if content_hash(self.ids) != self.entry.content_hash:
            raise IntegrityError(f"{self.path}: the block list does not match the content hash")


def _batches(
    items: list[UploadItem], max_files: int, max_blocks: int
) -> Iterator[list[UploadItem]]:
    """Runs of at most `max_files` files whose block lists fit one request together
    (`max_blocks`), and whose requests stay near `BATCH_BYTES`; a file with a longer list
    goes alone, its list in parts."""
    batch: list[UploadItem] = []
    blocks = size = 0
    for item in items:
        count, adds = len(item.manifest.blocks), _request_bytes(item)
        if batch and (
            len(batch) >= max_files or blocks + count > max_blocks or size + adds > BATCH_BYTES
        ):
            yield batch
            batch, blocks, size = [], 0, 0
        batch.append(item)
        blocks += count
        size += adds
    if batch:
        yield batch


def _request_bytes(item: UploadItem) -> int:
    """About what `item` adds to its batch's commit, at most: its path (three times its
    UTF-8: a JSON encoder escaping non-ASCII writes 6 bytes for a 2-byte character), the
    other fields, ~100 bytes a block."""
    return 3 * len(item.path.encode()) + 400 + 100 * len(item.manifest.blocks)


def _block_specs(blocks: Iterable[BlockRef]) -> list[dict[str, Any]]:
    """A block list as the API takes it: id and size of each block."""
    return [{"id": b.id, "size": b.size} for b in blocks]


def _windows(work: list[Work], items: list[UploadItem]) -> Iterator[list[Work]]:
    """Group blocks into windows of bounded size (memory stays flat for huge files), the
    last ones smaller and smaller (`TAIL_WINDOW_BYTES`)."""
    sizes = {(i.path, b.id): b.size for i in items for b in i.manifest.blocks}
    left = sum(sizes[(w[0].path, w[1])] for w in work)  # from this window's start on
    cap = _window_cap(left)
    window: list[Work] = []
    total = 0
    for w in work:
        size = sizes[(w[0].path, w[1])]
        if window and (total + size > cap or len(window) >= WINDOW_BLOCKS):
            yield window
            left -= total
            cap = _window_cap(left)
            window, total = [], 0
        window.append(w)
        total += size
    if window:
        yield window


def _window_cap(left: int) -> int:
    """The bytes a window may hold when `left` bytes are still to be sent."""
    return max(TAIL_WINDOW_BYTES, min(WINDOW_BYTES, left // 2))


def _partial_key(path: str) -> str:
    """The name (after `PARTIAL_PREFIX`) of the partial download of `path` (of its key: a
    respelling in case or Unicode form elsewhere still finds it)."""
    return blake3(path_key(path).encode()).hexdigest()[:32]


def _disk_full(path: str) -> DiskFullError:
    """What a download out of room raises: the round then stops its other downloads at
    once, instead of failing each with its own message."""
    return DiskFullError(errno.ENOSPC, f"disk full while downloading {path}")


_Item = TypeVar("_Item")
_Done = TypeVar("_Done")


def download_each(
    items: Iterable[_Item],
    fetch: Callable[[_Item, Callable[[], bool]], _Done],
    finished: Callable[[_Item, Future[_Done]], None],
    *,
    stop: threading.Event | None = None,
) -> None:
    """Run `fetch` on every item, `FILE_WORKERS` at once, and `finished` on the calling
    thread as each one ends (in the order they end).

    Many files at once, because a small file's download is round-trip bound, not bandwidth
    bound. A full disk or the server out of reach fails every item not yet begun at once,
    with the same error: each would have waited out its own retries, minutes for a few files.

    `fetch` gets what tells its download to stop (`Transfers.download`'s `stopping`): true
    once `stop` is set (a daemon told to stop) or the calling thread stops (Ctrl-C, or
    `finished` raised). The files then downloading end at their next block, and those not
    begun raise `DownloadStopped`: they were waited for to their end, and a file of
    gigabytes had held Ctrl-C for minutes."""
    full, unreachable, left = threading.Event(), threading.Event(), threading.Event()

    def stopping() -> bool:
        return left.is_set() or (stop is not None and stop.is_set())

    def guarded(item: _Item) -> _Done:
        if full.is_set():
            raise DiskFullError(errno.ENOSPC, "disk full")
        if unreachable.is_set():
            raise ServerUnreachable("the server went out of reach during the downloads")
        _check_stopping("the download", stopping)
        try:
            return fetch(item, stopping)
        except DiskFullError:
            full.set()
            raise
        except ServerUnreachable:
            unreachable.set()
            raise

    pool = ThreadPoolExecutor(FILE_WORKERS, thread_name_prefix="tessera-file")
    try:
        futures = {pool.submit(guarded, item): item for item in items}
        for fut in as_completed(futures):
            finished(futures[fut], fut)
    except BaseException:
        left.set()
        raise
    finally:  # (when stopped, what has not begun is not begun)
        pool.shutdown(cancel_futures=True)
