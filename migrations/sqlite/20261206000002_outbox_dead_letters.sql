-- Dead letters of the approval and alerting services' outboxes (each
-- table owned by its service): rows the receiver refused for good (the
-- audit service answered INVALID_ARGUMENT, say), moved out of the outbox
-- so the rows after them are delivered. They wait here, listed by
-- ListDeadLetters, until ReplayDeadLetters puts them back in the outbox.
CREATE TABLE IF NOT EXISTS approval_outbox_dead (
    id BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_at_micros BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS alerting_outbox_dead (
    id BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_at_micros BIGINT NOT NULL
);
