-- Data sources: observations keep where and on what they were taken, and
-- the interval they cover; re-sent records are updated in place (upserts);
-- each poll, push and import leaves a row with its counts.

-- End of an interval sample (a sleep stage, a workout); NULL for a point.
ALTER TABLE observations ADD COLUMN ended_at TEXT;
-- The UTC offset where it was observed ("+01:00") when the source said.
ALTER TABLE observations ADD COLUMN utc_offset TEXT;
-- The device or app inside the source (Apple's sourceName, "Apple Watch").
ALTER TABLE observations ADD COLUMN origin TEXT NOT NULL DEFAULT '';
-- When a re-sent record changed the stored value.
ALTER TABLE observations ADD COLUMN updated_at TEXT;

-- A push source's bearer token, as SHA-256 hex (the token is shown once).
ALTER TABLE sources ADD COLUMN push_token_sha256 TEXT;
CREATE UNIQUE INDEX sources_by_push_token ON sources (push_token_sha256)
    WHERE push_token_sha256 IS NOT NULL;

-- One row per poll, push or file import: what came and what it did.
CREATE TABLE source_runs (
    id          INTEGER PRIMARY KEY,
    source_id   INTEGER NOT NULL REFERENCES sources(id),
    way         TEXT NOT NULL CHECK (way IN ('poll', 'push', 'import')),
    what        TEXT NOT NULL DEFAULT '',      -- file name, payload size
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    stored      INTEGER NOT NULL DEFAULT 0,    -- new rows
    updated     INTEGER NOT NULL DEFAULT 0,    -- re-sent with a new value
    unchanged   INTEGER NOT NULL DEFAULT 0,    -- already present
    refused     INTEGER NOT NULL DEFAULT 0,    -- records that could not be read
    problems    TEXT NOT NULL DEFAULT '',      -- the first few, one a line
    error       TEXT                           -- why the run failed, if it did
) STRICT;
CREATE INDEX source_runs_by_source ON source_runs (source_id, id);
