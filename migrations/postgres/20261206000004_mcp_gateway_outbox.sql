-- The MCP gateway's outbox (owned by the gateway): the audit events of
-- its tool calls (action_completed) and of its refusals, written before
-- the agent gets its answer and delivered to the audit service in the
-- background; rows the audit service refuses for good wait in the dead
-- letters.
CREATE TABLE IF NOT EXISTS mcp_gateway_outbox (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    payload BYTEA NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_until_micros BIGINT NOT NULL DEFAULT 0,
    claimed_by TEXT NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS mcp_gateway_outbox_dead (
    id BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload BYTEA NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_at_micros BIGINT NOT NULL
);
