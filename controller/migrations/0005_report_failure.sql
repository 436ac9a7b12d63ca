-- Which step of an update failed (download, verification, install, health, timeout), as
-- the device reported it with `failed` or `rolled_back`: rollouts retry transient failures
-- and count each class against its own threshold.
ALTER TABLE device_status ADD COLUMN failure TEXT;
ALTER TABLE device_reports ADD COLUMN failure TEXT;
