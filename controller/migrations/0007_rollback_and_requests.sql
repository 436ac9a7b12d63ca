-- A rollback rollout names the rollout whose devices it returns to their previous release.
ALTER TABLE rollouts ADD COLUMN rollback_of TEXT;
-- When a rollback of this rollout was asked for (by its policy's `onFailure: rollback` or an
-- operator); kept, so that the rollout is known as rolled back.
ALTER TABLE rollouts ADD COLUMN rollback_at BIGINT;
-- An operator's retry or acceptance of the failed members, waiting for the engine's next
-- pass; the pass that carries it out clears it.
ALTER TABLE rollouts ADD COLUMN retry_at BIGINT;
ALTER TABLE rollouts ADD COLUMN accept_at BIGINT;
-- The release each member ran when its rollout started: where a rollback returns it.
ALTER TABLE wave_devices ADD COLUMN previous_release TEXT;
ALTER TABLE wave_devices ADD COLUMN previous_version TEXT;
-- An operator accepted the member's failure: its wave no longer counts it.
ALTER TABLE wave_devices ADD COLUMN accepted BIGINT NOT NULL DEFAULT 0;
