-- What a rollout waits for before its next wave (paused, publishing, health, baking,
-- approval), as the engine's last pass decided: operators and tools read it as a value
-- rather than from the message.
ALTER TABLE rollouts ADD COLUMN waiting TEXT;
