-- Owned by the audit service: each event's content hash (what its sender
-- sent, hashed), so that an id appended again with the same content is a
-- duplicate and with other content is refused (ALREADY_EXISTS). NULL for
-- events recorded before it was kept (their duplicates are not compared).
ALTER TABLE audit_events ADD COLUMN content_hash BYTEA;
