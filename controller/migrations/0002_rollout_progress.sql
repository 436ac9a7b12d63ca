-- Rollout progress: each member's place in the rollout order and when its instruction
-- was published (NULL: not yet, held back by a maintenance window or a concurrency cap),
-- and each wave's bake time, pinned with the waves when the rollout starts.
ALTER TABLE wave_devices ADD COLUMN position BIGINT NOT NULL DEFAULT 0;
ALTER TABLE wave_devices ADD COLUMN published_at BIGINT;
ALTER TABLE waves ADD COLUMN bake_ms BIGINT;

-- The engine keeps the inventory in memory and reads only what changed since its last
-- pass.
CREATE INDEX device_status_by_received ON device_status (received_at);
