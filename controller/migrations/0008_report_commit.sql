-- The fleet commit of the instruction behind the release a device runs, as it reported it:
-- which commit each device runs.
ALTER TABLE device_status ADD COLUMN commit_id TEXT;
ALTER TABLE device_reports ADD COLUMN commit_id TEXT;
