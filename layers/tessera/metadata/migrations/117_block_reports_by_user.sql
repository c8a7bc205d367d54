-- A user's reports of the last hour, counted against `block_reports_per_hour` before a
-- report queues another check (`domain.reports`): each check is a read of a stored block.
CREATE INDEX IF NOT EXISTS block_reports_by_user ON block_reports (reported_by, reported_at);
