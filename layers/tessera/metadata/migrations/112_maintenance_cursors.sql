-- Where a pass over every row of something stopped when its step's time budget was spent:
-- the step's next call (the state machine loops while `more`) resumes there instead of
-- starting over, which on a large deployment would never get past the first chunks.
-- gc's recount_usage walks every namespace by id; its position is the last ns_id done.
CREATE TABLE IF NOT EXISTS maintenance_cursors (
    step        text PRIMARY KEY,
    position    text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
