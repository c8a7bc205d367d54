-- The bytes of each namespace's live files (their latest versions), kept by every write in
-- the transaction that changes them, so a quota check costs a few index probes instead of
-- a sum over every file the owner has. The quota used to be checked only when an upload
-- started, with that sum; a commit of blocks the caller could already read needs no upload,
-- so copies of one file could take an account past its quota without limit.
ALTER TABLE namespaces ADD COLUMN bytes_used bigint NOT NULL DEFAULT 0;
UPDATE namespaces n SET bytes_used = s.used FROM (
    SELECT f.ns_id, sum(v.size) AS used FROM files f
    JOIN file_versions v ON v.ns_id = f.ns_id AND v.file_id = f.file_id AND v.rev = f.latest_rev
    WHERE NOT f.is_deleted AND f.kind = 'file' GROUP BY f.ns_id
) AS s WHERE n.ns_id = s.ns_id;
CREATE INDEX namespaces_owner ON namespaces (owner_id);
