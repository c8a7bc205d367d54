-- "Can this caller already read block X" must cost the same whether X is named by one
-- version or by a hundred thousand (a common block: an empty page, a shared header, a file
-- copied into many folders). The old index (ns_id, block_id) made the lookup read every
-- version naming X to prefer a verified row (staged_key NULL) over a staged copy. With
-- staged_key as the third column, a backward index scan yields the verified row first
-- (NULLs sort last, so first when descending), and the lookup stops after one row.
CREATE INDEX IF NOT EXISTS version_blocks_readable ON version_blocks (ns_id, block_id, staged_key);
DROP INDEX IF EXISTS version_blocks_block;
