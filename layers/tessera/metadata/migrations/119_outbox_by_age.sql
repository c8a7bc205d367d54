-- tessera: no-transaction
-- The relay claims the oldest rows first (`outbox.claim_pending`: ORDER BY created_at LIMIT
-- 100). Without an index each claim read and sorted the whole table, so a backlog of B rows
-- (a DynamoDB outage, a relay stopped for an hour) took ~B²/200 row reads to drain, and one
-- that grew past what a sweep could sort never drained. Built CONCURRENTLY: every commit
-- writes a row.
DROP INDEX CONCURRENTLY IF EXISTS outbox_by_age;
CREATE INDEX CONCURRENTLY outbox_by_age ON outbox (created_at);
