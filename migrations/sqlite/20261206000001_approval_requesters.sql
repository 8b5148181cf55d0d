-- Owned by the approval service: every principal that asked for a pending
-- action. The request row keeps the first; each later Evaluate that is
-- handed the same pending request adds its caller here, and none of them
-- may review it (separation of duties holds for delegates too).
CREATE TABLE IF NOT EXISTS approval_requesters (
    approval_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    at_micros BIGINT NOT NULL,
    PRIMARY KEY (approval_id, principal)
);

INSERT INTO approval_requesters (approval_id, principal, at_micros)
SELECT id, requested_by, created_at_micros FROM approval_requests WHERE requested_by <> ''
ON CONFLICT (approval_id, principal) DO NOTHING;
