-- Local change feed: the latest seq published per namespace (the local twin of the
-- DynamoDB `changes` table), read by a long-poll before it waits on LISTEN.
CREATE TABLE IF NOT EXISTS local_change_heads (
    ns_id bigint PRIMARY KEY,
    seq   bigint NOT NULL
);
