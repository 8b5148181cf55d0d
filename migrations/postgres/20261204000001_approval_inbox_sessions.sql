-- Owned by the approval service: web inbox sessions, shared by every
-- replica on the database and kept across restarts. A row holds no secret
-- a reader of the database could use: the session is found by a hash of
-- its cookie, and the reviewer's credential is sealed (AES-256-GCM) under
-- a key derived from the cookie, which only the browser has.
CREATE TABLE IF NOT EXISTS approval_inbox_sessions (
    id_hash TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    sealed_credential BYTEA NOT NULL,
    csrf TEXT NOT NULL,
    created_at_micros BIGINT NOT NULL,
    expires_at_micros BIGINT NOT NULL
);
