-- version_blocks had two indexes on the block id: version_blocks_readable (ns_id, block_id,
-- staged_key) for "can this view read block X" (migration 102), and version_blocks_block_id
-- (block_id) for gc, scrub and damage, which look a block up in every namespace. One index
-- led by block_id serves both: the readable probe names ns_id and block_id alike, so their
-- order in the key does not matter to it, and a verified row (staged_key NULL) still comes
-- first on a backward scan. Each block of each commit now makes one index entry less.
CREATE INDEX IF NOT EXISTS version_blocks_by_block ON version_blocks (block_id, ns_id, staged_key);
DROP INDEX IF EXISTS version_blocks_readable;
DROP INDEX IF EXISTS version_blocks_block_id;
