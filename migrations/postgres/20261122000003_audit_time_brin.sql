-- The two time columns grow with the sequence (events arrive roughly in
-- time order; recorded_at is the appender's clock), so block-range (BRIN)
-- indexes serve Query's time ranges and retention's cutoff at a fraction of
-- a B-tree's write cost: two fewer B-tree insertions per appended event.
DROP INDEX IF EXISTS audit_events_by_time;
DROP INDEX IF EXISTS audit_events_by_recorded_at;
CREATE INDEX IF NOT EXISTS audit_events_by_time ON audit_events USING brin (time_micros);
CREATE INDEX IF NOT EXISTS audit_events_by_recorded_at ON audit_events USING brin (recorded_at_micros);
