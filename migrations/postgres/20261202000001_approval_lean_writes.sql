-- Owned by the approval service. The indexes hold only the rows their
-- queries look for, so a state change (a redemption on the path of an
-- agent's Evaluate above all) rewrites only the indexes of the states it
-- leaves or enters: pending requests by agent and action (duplicates) and
-- by expiry (the clocks), grants by their expiry.
DROP INDEX IF EXISTS approval_requests_agent_hash;
DROP INDEX IF EXISTS approval_requests_state_expiry;
CREATE INDEX IF NOT EXISTS approval_requests_pending ON approval_requests (agent_id, action_hash) WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS approval_requests_pending_expiry ON approval_requests (expires_at_micros) WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS approval_requests_granted_expiry ON approval_requests (grant_expires_at_micros) WHERE state = 'APPROVED';
