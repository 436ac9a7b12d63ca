-- Each member's attempt: 0 for its first instruction, one more each time a transient
-- failure is retried by re-publishing the instruction. Kept so that a restarted controller
-- continues the count rather than retrying without end.
ALTER TABLE wave_devices ADD COLUMN attempt BIGINT NOT NULL DEFAULT 0;
-- The failure a member's wave counts for good, whatever the device reports later: set when
-- it turned unhealthy or rolled back during its wave's bake (a bake means the wave stays
-- healthy), cleared by a retry.
ALTER TABLE wave_devices ADD COLUMN failure TEXT;
