-- Owned by the approval service. A redemption (APPROVED -> REDEEMED) is on
-- the path of an agent's Evaluate and waits for its commit's sync, which
-- grows with the pages the commit writes (from 7.8 to 4.5 pages here):
--
-- * The indexes hold only the rows their queries look for: pending
--   requests by agent and action (duplicates) and by expiry (the clocks),
--   grants by their expiry. A state change touches only the indexes of the
--   states it leaves or enters; before, every one rewrote two index entries.
-- * The outbox's ids need no AUTOINCREMENT (which writes `sqlite_sequence`
--   on every insert): rows are claimed and deleted by id while they exist,
--   and a new row's id is above every row still there.
DROP INDEX IF EXISTS approval_requests_agent_hash;
DROP INDEX IF EXISTS approval_requests_state_expiry;
CREATE INDEX IF NOT EXISTS approval_requests_pending ON approval_requests (agent_id, action_hash) WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS approval_requests_pending_expiry ON approval_requests (expires_at_micros) WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS approval_requests_granted_expiry ON approval_requests (grant_expires_at_micros) WHERE state = 'APPROVED';

CREATE TABLE approval_outbox_lean (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_until_micros BIGINT NOT NULL DEFAULT 0,
    claimed_by TEXT NOT NULL DEFAULT ''
);
INSERT INTO approval_outbox_lean (id, kind, payload, attempts, claimed_until_micros, claimed_by)
    SELECT id, kind, payload, attempts, claimed_until_micros, claimed_by FROM approval_outbox;
DROP TABLE approval_outbox;
ALTER TABLE approval_outbox_lean RENAME TO approval_outbox;
