-- When a shared namespace's owner was left its only member (`unshare` of everyone, the last
-- member leaving), NULL while others are in it: what was deleted since then is the owner's
-- alone, and goes to her own trash when she lets someone in again (`sharing.share`). A
-- nullable column without a default: no table rewrite.
ALTER TABLE namespaces ADD COLUMN IF NOT EXISTS alone_since timestamptz;
