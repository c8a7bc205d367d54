-- The outbox is a queue: the relay deletes what it delivered (the journal keeps the
-- history, the change feed keeps the events), instead of stamping relayed_at and keeping
-- every row forever. A table holding only what is pending needs no index to find it, so
-- outbox_pending goes too: every commit made one more index entry for it.
DELETE FROM outbox WHERE relayed_at IS NOT NULL;
DROP INDEX IF EXISTS outbox_pending;
ALTER TABLE outbox DROP COLUMN IF EXISTS relayed_at;
