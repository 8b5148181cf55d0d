-- Owned by the approval service.
CREATE TABLE IF NOT EXISTS approval_requests (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    action_json TEXT NOT NULL,
    action_hash TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    rules_json TEXT NOT NULL,
    reasons_json TEXT NOT NULL,
    route TEXT NOT NULL,
    min_approvals INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    created_at_micros BIGINT NOT NULL,
    expires_at_micros BIGINT NOT NULL,
    decided_at_micros BIGINT,
    grant_expires_at_micros BIGINT,
    redeemed_at_micros BIGINT,
    outcome_reason TEXT NOT NULL DEFAULT '',
    escalation_level INTEGER NOT NULL DEFAULT 0,
    reminded BOOLEAN NOT NULL DEFAULT FALSE
);
-- Pending duplicates are found by agent and action; expiry scans by state.
CREATE INDEX IF NOT EXISTS approval_requests_agent_hash ON approval_requests (agent_id, action_hash, state);
CREATE INDEX IF NOT EXISTS approval_requests_state_expiry ON approval_requests (state, expires_at_micros);

-- One row per reviewer: a reviewer counts once.
CREATE TABLE IF NOT EXISTS approval_reviews (
    approval_id TEXT NOT NULL REFERENCES approval_requests (id),
    reviewer TEXT NOT NULL,
    approve BOOLEAN NOT NULL,
    comment TEXT NOT NULL,
    at_micros BIGINT NOT NULL,
    PRIMARY KEY (approval_id, reviewer)
);

-- Audit events and notifications, written in the transaction of the change
-- they describe and delivered (then deleted) by a shipper that claims rows.
CREATE TABLE IF NOT EXISTS approval_outbox (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    payload BYTEA NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_until_micros BIGINT NOT NULL DEFAULT 0,
    claimed_by TEXT NOT NULL DEFAULT ''
);
