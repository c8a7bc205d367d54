"""Server settings, read once from the environment into one typed object.

Nothing else in the server reads `os.environ`: entry points call `Settings.from_env()` and
pass the object down (tests build `Settings(...)` directly).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Self

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Limits and knobs of the metadata service and the API.

    Environment variables are the field names upper-cased with a `TESSERA_` prefix
    (e.g. `TESSERA_UPLOAD_TTL_S=600`), plus `DATABASE_URL` for `database_url`.
    """

    database_url: str = ""
    pool_min_size: int = 1
    pool_max_size: int = 10
    # Blocks: FastCDC max 4 MiB plaintext; the stored form adds a header, nonce and tag,
    # and zstd never stores more than raw + its frame overhead.
    max_block_size: int = 4 * MIB
    max_stored_block_size: int = 4 * MIB + 64 * 1024
    max_blocks_per_request: int = 10_000
    # A longer list comes in parts (POST /v1/uploads/blocks). FastCDC cuts no block below
    # 256 KiB but a file's last, so a 50 GiB file has at most 204,801; the cap bounds the
    # rows a client cutting smaller could make one file cost.
    max_blocks_per_file: int = 262_144
    # Blocks a user's open upload sessions may expect, uncommitted: one file's most and a
    # request's worth. Their bytes are held to the quota, but blocks of 1 byte made a row
    # each (~870 bytes with its indexes) for up to 48 h, 10,000 a call, without end.
    max_pending_blocks: int = 262_144 + 10_000
    max_file_size: int = 50 * 1024 * MIB
    max_files_per_upload: int = 1_000
    # PUT URLs per /v1/uploads/urls answer: one signed with Lambda's role credentials is
    # ~2 KB, and more than ~3,000 broke Lambda's 6 MB response limit (a 502 on every retry)
    max_urls_per_request: int = 1_000
    max_commits_per_batch: int = 1_000
    upload_ttl_s: int = 3600  # from the session's last use (URLs, parts)
    upload_max_lifetime_s: int = 48 * 3600
    presign_ttl_s: int = 900  # ≤ 15 min (DESIGN §9)
    # Blocks per /v1/download answer: a GET URL signed with Lambda's role credentials is
    # ~1.7 KB, so all 10,000 blocks of a big file (17 MB) broke Lambda's 6 MB response
    # limit, and the last URLs of a slow download expired before their turn came.
    download_page_blocks: int = 500
    default_quota_bytes: int = 100 * 1024 * MIB
    list_limit: int = 2_000
    # Long-poll: Dropbox's 30-480 s; tests lower the floor.
    longpoll_min_s: float = 30.0
    longpoll_max_s: float = 480.0
    longpoll_backoff_s: int = 0
    # A long-poll on an older cursor answers "changes" at once (the caller lists and gets a
    # fresh cursor): a feed that keeps recent history only (the changes table's 7-day TTL)
    # cannot tell it of changes made between the cursor and then.
    longpoll_cursor_max_age_s: int = 6 * 86_400
    # Per-user request throttling of the local gateway: API Gateway's prod stage figures,
    # each user's own (a stage's are shared by all). The dev stage's 50/s held a device's
    # download of many small files, one call each, to 50 files a second (1,000 in 20 s).
    api_rate_limit: float = 500.0
    api_burst_limit: int = 1000
    restore_retry_after_s: int = 60
    # Block-store requests made at once (S3 round trips dominate): a download's HEADs and
    # restores of cold blocks, maintenance's reads, copies and deletes
    io_workers: int = 16
    # Cold blocks a download asks the cold tier about (at 16 at a time, ~3 s on S3), and
    # names in its 202 (its answer stays far below Lambda's 6 MB)
    max_cold_checks: int = 2_000
    restore_days: int = 7
    trash_retention_days: int = 30
    # A block a client reports unreadable (POST /v1/blocks/report) is checked again at most
    # this often: each check reads the block, and a report is no more than a client's say
    block_recheck_s: int = 3600
    # Checks a user's reports may queue in an hour: a client reports the block of a file it
    # failed to read, a few an hour at most; a hostile member who reported every block
    # they can read made the server read that much
    block_reports_per_hour: int = 60
    # The local block store keeps what an overwrite or delete of a block removed this long
    # (days; 0 keeps nothing), as the blocks bucket keeps noncurrent versions (its lifecycle
    # rule: `object_keys.NONCURRENT_RETENTION_DAYS`, a test keeps the two equal). It is what
    # scrub repairs a lost block from; a laptop short of disk may keep them less
    local_block_versions_days: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Settings from `environ` (default: the process environment); unknown vars ignored."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = "DATABASE_URL" if f.name == "database_url" else f"TESSERA_{f.name.upper()}"
            raw = env.get(name)
            if raw is None:
                continue
            default = f.default
            try:
                if isinstance(default, bool):
                    values[f.name] = raw.strip().lower() in {"1", "true", "yes", "on"}
                elif isinstance(default, int):
                    values[f.name] = int(raw)
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r} is not a valid {type(default).__name__}") from exc
        return cls(**values)  # type: ignore[arg-type]
