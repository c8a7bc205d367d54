-- dedup-verify no longer deletes a promoted or dropped staged copy at once: a presigned GET
-- issued for it before it was settled stays valid for up to presign_ttl_s. gc's
-- expire_uploads deletes the object once the copy has been settled for longer than
-- settled_copy_grace_s, and records that here. Copies settled before this migration had
-- their objects deleted by dedup already.
ALTER TABLE upload_blocks ADD COLUMN IF NOT EXISTS object_gone boolean NOT NULL DEFAULT false;
UPDATE upload_blocks SET object_gone = true WHERE state IN ('promoted', 'dropped');
CREATE INDEX IF NOT EXISTS upload_blocks_settled ON upload_blocks (updated_at)
    WHERE state IN ('promoted', 'dropped') AND NOT object_gone;
