-- Owned by the audit service. Append-only: triggers refuse UPDATE, DELETE
-- and TRUNCATE on the log, its tree and its checkpoints. Payloads live in
-- their own table so retention can delete them while the events (and their
-- leaf hashes, which commit to the payload's hash) stay. Subject keys may be
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
    payload_hash BYTEA NOT NULL,
    sensitive BYTEA,
    leaf_hash BYTEA NOT NULL,
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
    hash BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);

CREATE TABLE IF NOT EXISTS audit_checkpoints (
    tree_size BIGINT PRIMARY KEY,
    root_hash BYTEA NOT NULL,
    note TEXT NOT NULL,
    created_at_micros BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS audit_subject_keys (
    subject TEXT PRIMARY KEY,
    wrapped_key BYTEA NOT NULL,
    created_at_micros BIGINT NOT NULL
);

CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_tree_nodes_append_only BEFORE UPDATE OR DELETE ON audit_tree_nodes
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_tree_nodes_no_truncate BEFORE TRUNCATE ON audit_tree_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_payloads_no_update BEFORE UPDATE ON audit_payloads
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_subject_keys_no_update BEFORE UPDATE ON audit_subject_keys
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
