-- Files whose block list is longer than one request may carry (a file of more than
-- `max_blocks_per_request` blocks: about 10 GiB at FastCDC's 1 MiB average) are declared
-- in an upload session without blocks, and their list is appended to it in parts
-- (POST /v1/uploads/blocks); their commit names the session instead of sending the list.
-- Both tables go with their session (gc deletes expired sessions).
CREATE TABLE IF NOT EXISTS upload_files (
    upload_id      text NOT NULL REFERENCES upload_sessions (upload_id) ON DELETE CASCADE,
    path_key       text NOT NULL,
    size           bigint NOT NULL,
    content_hash   text NOT NULL,
    block_count    integer NOT NULL DEFAULT 0,   -- blocks appended so far
    block_bytes    bigint NOT NULL DEFAULT 0,    -- their plaintext bytes
    PRIMARY KEY (upload_id, path_key)
);

CREATE TABLE IF NOT EXISTS upload_file_blocks (
    upload_id      text NOT NULL,
    path_key       text NOT NULL,
    ordinal        integer NOT NULL,
    block_id       text NOT NULL,
    size           integer NOT NULL,
    PRIMARY KEY (upload_id, path_key, ordinal),
    FOREIGN KEY (upload_id, path_key) REFERENCES upload_files (upload_id, path_key)
        ON DELETE CASCADE
);
