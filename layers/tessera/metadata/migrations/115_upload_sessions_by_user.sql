-- tessera: no-transaction
-- A user's open upload sessions, for the cap on the bytes they may hold staged and not yet
-- committed (`Store.pending_upload_bytes`, asked by every /v1/uploads and part).
DROP INDEX CONCURRENTLY IF EXISTS upload_sessions_open_by_user;
CREATE INDEX CONCURRENTLY upload_sessions_open_by_user ON upload_sessions (user_id)
    WHERE state = 'open';
