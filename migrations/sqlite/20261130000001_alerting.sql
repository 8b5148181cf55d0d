-- Owned by the alerting service.

-- Alerts from rules and from Prometheus, with their pending start times,
-- written on every change.
CREATE TABLE IF NOT EXISTS alerting_alerts (
    fingerprint TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    annotations_json TEXT NOT NULL,
    state TEXT NOT NULL,
    active_at_ms BIGINT NOT NULL,
    fired_at_ms BIGINT,
    resolved_at_ms BIGINT,
    last_active_ms BIGINT NOT NULL,
    ends_at_ms BIGINT,
    value REAL NOT NULL,
    generator_url TEXT NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS alerting_silences (
    id TEXT PRIMARY KEY,
    matchers_json TEXT NOT NULL,
    starts_at_ms BIGINT NOT NULL,
    ends_at_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    comment TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- The notification log: what each receiver was last told about each
-- group. Replicas claim a notification by a conditional update on version.
CREATE TABLE IF NOT EXISTS alerting_nflog (
    group_key TEXT NOT NULL,
    receiver TEXT NOT NULL,
    firing_json TEXT NOT NULL,
    resolved_json TEXT NOT NULL,
    sent_at_ms BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (group_key, receiver)
);

-- Notifications and audit events, written with the change they describe
-- and delivered (then deleted) by a shipper that claims rows.
CREATE TABLE IF NOT EXISTS alerting_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_until_micros BIGINT NOT NULL DEFAULT 0,
    claimed_by TEXT NOT NULL DEFAULT ''
);

-- The derived series and the audit position they reflect, saved together.
CREATE TABLE IF NOT EXISTS alerting_state (
    id TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    snapshot BLOB NOT NULL,
    saved_at_ms BIGINT NOT NULL
);
