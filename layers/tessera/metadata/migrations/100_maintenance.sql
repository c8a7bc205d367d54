-- Maintenance workflows (dedup-verify, gc, cold storage, scrub). Maintenance owns 100-149.

-- gc re-checks "does any version still name this block / this staged copy" across all
-- namespaces, and dedup repoints versions from a staged copy to the canonical block:
-- both look version_blocks up without an ns_id.
CREATE INDEX IF NOT EXISTS version_blocks_block_id ON version_blocks (block_id);
CREATE INDEX IF NOT EXISTS version_blocks_staged_key ON version_blocks (staged_key)
    WHERE staged_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS upload_blocks_block_id ON upload_blocks (block_id);

-- cold candidates: live blocks by last read. (gc walks blocks and versions by primary key
-- instead of indexing refcount or age: an index on refcount would make every commit's
-- refcount bump a non-HOT update.)
CREATE INDEX IF NOT EXISTS blocks_live_last_read ON blocks ((COALESCE(last_access, created_at)))
    WHERE state = 'live';

-- Versions that name a block found damaged: a quarantined staged copy (dedup-verify) or a
-- canonical block that failed scrub with no duplicate to repair from. The download path
-- refuses these blocks; notified_at is this table's own outbox (the change-feed event that
-- tells the namespace's clients to re-upload).
CREATE TABLE IF NOT EXISTS damaged_versions (
    ns_id        bigint NOT NULL,
    file_id      text NOT NULL,
    rev          bigint NOT NULL,
    block_id     text NOT NULL,
    staged_key   text NOT NULL DEFAULT '',   -- the quarantined copy; '' = the canonical block
    reason       text NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    notified_at  timestamptz,
    PRIMARY KEY (ns_id, file_id, rev, block_id, staged_key)
);
CREATE INDEX IF NOT EXISTS damaged_versions_unnotified ON damaged_versions (detected_at)
    WHERE notified_at IS NULL;

-- One row per maintenance step run: what it did (the result dataclass as JSON).
CREATE TABLE IF NOT EXISTS maintenance_runs (
    run_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow     text NOT NULL,
    step         text NOT NULL,
    as_of        timestamptz NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    result       jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS maintenance_runs_recent ON maintenance_runs (workflow, finished_at);
