-- gc's expire_uploads deletes the object of a quarantined staged copy (quarantine/...) once
-- it has been kept for quarantine_retention_days, and records that in object_gone. The row
-- stays: versions that named the copy still answer "damaged", never another copy's bytes.
-- Quarantined copies are rare, so this index stays small.
CREATE INDEX IF NOT EXISTS upload_blocks_quarantined ON upload_blocks (updated_at)
    WHERE state = 'quarantined' AND NOT object_gone;
