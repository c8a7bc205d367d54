-- tessera: no-transaction
-- gc's expire_idempotency_keys deletes keys older than the retention, oldest first: without
-- this index each batch would scan the whole table, which every commit adds a row to.
-- Built CONCURRENTLY: every write claims a key, and a plain CREATE INDEX would hold them all
-- for as long as the build takes on a large table. A build that failed or was killed left an
-- invalid index of this name behind; this file runs again whole, so it drops that first.
DROP INDEX CONCURRENTLY IF EXISTS idempotency_keys_created;
CREATE INDEX CONCURRENTLY idempotency_keys_created ON idempotency_keys (created_at);
