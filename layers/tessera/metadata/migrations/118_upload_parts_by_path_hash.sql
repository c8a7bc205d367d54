-- A session's part-uploaded files were keyed by their view path key, which is up to 4,096
-- bytes (a shared folder's mount point in front of a member's path), where a btree entry
-- holds at most 2,704: declaring such a file answered 413, though the owner, with a
-- shorter path, could upload it. They are keyed by the key's SHA-256 now, and a block row
-- no longer repeats the path (10,000 rows of a 4 KiB key held 40 MB). The rows in flight
-- keep their lists.
ALTER TABLE upload_file_blocks DROP CONSTRAINT upload_file_blocks_upload_id_path_key_fkey;
ALTER TABLE upload_file_blocks DROP CONSTRAINT upload_file_blocks_pkey;
ALTER TABLE upload_files DROP CONSTRAINT upload_files_pkey;
-- The hash is the store's (`store._path_hash`: SHA-256 of the key's UTF-8), as here.
ALTER TABLE upload_files ADD COLUMN path_hash bytea;
UPDATE upload_files SET path_hash = sha256(convert_to(path_key, 'UTF8'));
ALTER TABLE upload_files ALTER COLUMN path_hash SET NOT NULL;
ALTER TABLE upload_files ADD PRIMARY KEY (upload_id, path_hash);
ALTER TABLE upload_file_blocks ADD COLUMN path_hash bytea;
UPDATE upload_file_blocks SET path_hash = sha256(convert_to(path_key, 'UTF8'));
ALTER TABLE upload_file_blocks ALTER COLUMN path_hash SET NOT NULL;
ALTER TABLE upload_file_blocks DROP COLUMN path_key;
ALTER TABLE upload_file_blocks ADD PRIMARY KEY (upload_id, path_hash, ordinal);
ALTER TABLE upload_file_blocks ADD FOREIGN KEY (upload_id, path_hash)
    REFERENCES upload_files (upload_id, path_hash) ON DELETE CASCADE;
