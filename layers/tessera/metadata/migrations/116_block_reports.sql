-- Blocks a client could not read (POST /v1/blocks/report), for scrub to check now rather
-- than at its weekly inventory (`maintenance.scrub.reported`). One row a block: a report of
-- a block already queued, or checked less than `block_recheck_s` ago, adds no work. The
-- version it was read for is where scrub looks for more of the same loss.
CREATE TABLE IF NOT EXISTS block_reports (
    block_id     text PRIMARY KEY REFERENCES blocks (block_id) ON DELETE CASCADE,
    ns_id        bigint NOT NULL,
    file_id      text NOT NULL,
    rev          bigint NOT NULL,
    reason       text NOT NULL,
    reported_by  text NOT NULL,
    reported_at  timestamptz NOT NULL DEFAULT now(),
    checked_at   timestamptz               -- null: the check is still to do
);
CREATE INDEX IF NOT EXISTS block_reports_pending ON block_reports (reported_at)
    WHERE checked_at IS NULL;
