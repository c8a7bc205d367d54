-- gc's expire_idempotency_keys deletes keys older than the retention, oldest first: without
-- this index each batch would scan the whole table, which every commit adds a row to.
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);
