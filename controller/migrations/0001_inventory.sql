-- Waveguide inventory: declared and enrolled devices, their reports, and the persisted
-- rollout state machine. Written in the SQL common to SQLite and PostgreSQL: times are
-- Unix milliseconds (BIGINT), no auto-increment columns.

CREATE TABLE devices (
    id          TEXT PRIMARY KEY,
    group_name  TEXT NOT NULL,
    -- Base64 ed25519 public key that authenticates the device's reports.
    public_key  TEXT,
    -- Declared in the fleet repository (as opposed to only enrolled by token).
    declared    BIGINT NOT NULL,
    enrolled_at BIGINT,
    updated_at  BIGINT NOT NULL
);

-- The latest report of each device.
CREATE TABLE device_status (
    device_id   TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    release     TEXT,
    version     TEXT NOT NULL,
    state       TEXT NOT NULL,
    healthy     BIGINT NOT NULL,
    detail      TEXT,
    reported_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);

-- A bounded history of reports per device (the newest few, by seq).
CREATE TABLE device_reports (
    device_id   TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    release     TEXT,
    version     TEXT NOT NULL,
    state       TEXT NOT NULL,
    healthy     BIGINT NOT NULL,
    detail      TEXT,
    reported_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, seq)
);

-- One policy moving to one release.
CREATE TABLE rollouts (
    id          TEXT PRIMARY KEY,
    policy      TEXT NOT NULL,
    release     TEXT NOT NULL,
    version     TEXT NOT NULL,
    commit_id   TEXT,
    phase       TEXT NOT NULL,
    paused      BIGINT NOT NULL,
    message     TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX rollouts_by_policy ON rollouts (policy, created_at);

-- The waves of a rollout, cut when it starts.
CREATE TABLE waves (
    rollout_id   TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    idx          BIGINT NOT NULL,
    name         TEXT NOT NULL,
    state        TEXT NOT NULL,
    size         BIGINT NOT NULL,
    published_at BIGINT,
    -- When the wave first met its success threshold: its bake time counts from here.
    healthy_at   BIGINT,
    approved_at  BIGINT,
    finished_at  BIGINT,
    PRIMARY KEY (rollout_id, idx)
);

-- Wave membership, pinned when the rollout starts.
CREATE TABLE wave_devices (
    rollout_id TEXT NOT NULL,
    idx        BIGINT NOT NULL,
    device_id  TEXT NOT NULL,
    PRIMARY KEY (rollout_id, device_id),
    FOREIGN KEY (rollout_id, idx) REFERENCES waves (rollout_id, idx) ON DELETE CASCADE
);
CREATE INDEX wave_devices_by_wave ON wave_devices (rollout_id, idx);
