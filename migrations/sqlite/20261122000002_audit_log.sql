-- Owned by the audit service. Append-only: triggers refuse UPDATE and
-- DELETE on the log, its tree and its checkpoints. Payloads live in their
-- own table so retention can delete them while the events (and their leaf
-- hashes, which commit to the payload's hash) stay. Subject keys may be
-- deleted (crypto-shredding) but never changed.
CREATE TABLE IF NOT EXISTS audit_events (
    sequence BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    time_micros BIGINT NOT NULL,
    correlation_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    payload_hash BLOB NOT NULL,
    sensitive BLOB,
    leaf_hash BLOB NOT NULL,
    recorded_at_micros BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_by_correlation ON audit_events (correlation_id, sequence);
CREATE INDEX IF NOT EXISTS audit_events_by_agent ON audit_events (agent_id, sequence);
CREATE INDEX IF NOT EXISTS audit_events_by_type ON audit_events (event_type, sequence);
CREATE INDEX IF NOT EXISTS audit_events_by_time ON audit_events (time_micros, sequence);
CREATE INDEX IF NOT EXISTS audit_events_by_recorded_at ON audit_events (recorded_at_micros, sequence);

CREATE TABLE IF NOT EXISTS audit_payloads (
    sequence BIGINT PRIMARY KEY,
    payload TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS audit_tree_nodes (
    level INTEGER NOT NULL,
    idx BIGINT NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
);

CREATE TABLE IF NOT EXISTS audit_checkpoints (
    tree_size BIGINT PRIMARY KEY,
    root_hash BLOB NOT NULL,
    note TEXT NOT NULL,
    created_at_micros BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS audit_subject_keys (
    subject TEXT PRIMARY KEY,
    wrapped_key BLOB NOT NULL,
    created_at_micros BIGINT NOT NULL
);

CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_tree_nodes_no_update BEFORE UPDATE ON audit_tree_nodes
BEGIN SELECT RAISE(ABORT, 'audit_tree_nodes is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_tree_nodes_no_delete BEFORE DELETE ON audit_tree_nodes
BEGIN SELECT RAISE(ABORT, 'audit_tree_nodes is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_payloads_no_update BEFORE UPDATE ON audit_payloads
BEGIN SELECT RAISE(ABORT, 'audit_payloads is append-only (retention may only delete)'); END;
CREATE TRIGGER IF NOT EXISTS audit_subject_keys_no_update BEFORE UPDATE ON audit_subject_keys
BEGIN SELECT RAISE(ABORT, 'audit_subject_keys is append-only (forgetting deletes)'); END;
