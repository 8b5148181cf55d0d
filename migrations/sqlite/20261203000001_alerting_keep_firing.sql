-- Owned by the alerting service. `keep_firing_for` counts from the first
-- evaluation that no longer saw the alert (Prometheus' KeepFiringSince),
-- not from the last that did: a restart must not shorten or lengthen it.
ALTER TABLE alerting_alerts ADD COLUMN keep_firing_since_ms BIGINT;
