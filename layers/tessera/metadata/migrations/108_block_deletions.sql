-- gc deletes a block's row, commits, then deletes its object (never an object a row still
-- names). A run that died in between left the object behind for good: nothing named it any
-- more. The row's deletion now leaves a tombstone in the same transaction, removed once the
-- object is gone, so the next run finishes what an interrupted one started.
CREATE TABLE block_deletions (
    block_id    text PRIMARY KEY,
    stored_size bigint NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
