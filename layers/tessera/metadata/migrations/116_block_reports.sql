-- Blocks a client could not read (POST /v1/blocks/report), for scrub to check now rather
-- than at its weekly inventory (`maintenance.scrub.reported`). One row per block and
-- reporter: a report of a block the same user reported and is still queued, or checked
-- less than `block_recheck_s` ago, adds no work, and the answer to it tells of that
-- user's own reports only (another user's would tell that they hold the same content).
-- The version it was read for is where scrub looks for more of the same loss.
CREATE TABLE IF NOT EXISTS block_reports (
    block_id     text NOT NULL REFERENCES blocks (block_id) ON DELETE CASCADE,
    reported_by  text NOT NULL,
    ns_id        bigint NOT NULL,
    file_id      text NOT NULL,
    rev          bigint NOT NULL,
    reason       text NOT NULL,
    reported_at  timestamptz NOT NULL DEFAULT now(),
    claimed_until timestamptz,              -- a check holds it until then (or a failed one
                                            -- put it off): null or past, it may be taken
    checked_at   timestamptz,               -- null: the check is still to do
    PRIMARY KEY (block_id, reported_by)
);
CREATE INDEX IF NOT EXISTS block_reports_pending ON block_reports (reported_at)
    WHERE checked_at IS NULL;
