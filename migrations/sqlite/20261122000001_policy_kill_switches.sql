-- Owned by the policy engine. One row per agent; agent_id '' is the global switch.
CREATE TABLE IF NOT EXISTS policy_kill_switches (
    agent_id TEXT PRIMARY KEY,
    engaged BOOLEAN NOT NULL,
    reason TEXT NOT NULL,
    updated_at_micros BIGINT NOT NULL
);
