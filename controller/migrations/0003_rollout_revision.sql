-- Every write to a rollout (the engine's pass, an operator's action) is conditional on the
-- revision it read and increments it, so that neither can undo the other's change.
ALTER TABLE rollouts ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
