-- Each member's attempt: 0 for its first instruction, one more each time a transient
-- failure is retried by re-publishing the instruction. Kept so that a restarted controller
-- continues the count rather than retrying without end.
ALTER TABLE wave_devices ADD COLUMN attempt BIGINT NOT NULL DEFAULT 0;
