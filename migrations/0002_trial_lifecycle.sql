-- Trial life cycle (issue 5): every status change with who caused it and
-- why, one decision per look, and adverse-event reports.

CREATE TABLE trial_events (
    id          INTEGER PRIMARY KEY,
    trial_id    INTEGER NOT NULL REFERENCES trials(id),
    from_status TEXT,
    to_status   TEXT NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    local_date  TEXT,                         -- the participant's date when it happened
    at          TEXT NOT NULL
) STRICT;
CREATE INDEX trial_events_by_trial ON trial_events (trial_id, id);

-- The period a decision was taken at (NULL for decisions outside the
-- schedule, such as a safety stop); at most one decision per look.
ALTER TABLE decisions ADD COLUMN period INTEGER;
CREATE UNIQUE INDEX decisions_one_per_look ON decisions (trial_id, period) WHERE period IS NOT NULL;

CREATE TABLE adverse_events (
    id          INTEGER PRIMARY KEY,
    trial_id    INTEGER NOT NULL REFERENCES trials(id),
    local_date  TEXT NOT NULL,
    note        TEXT NOT NULL,
    channel     TEXT NOT NULL,                -- 'cli', 'email-link', 'form'
    reported_at TEXT NOT NULL
) STRICT;

-- One-click links from emails (issue 6): each token is used once; the
-- token itself is not kept, only its SHA-256.
CREATE TABLE link_uses (
    fingerprint TEXT PRIMARY KEY,
    trial_id    INTEGER NOT NULL REFERENCES trials(id),
    local_date  TEXT NOT NULL,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    used_at     TEXT NOT NULL
) STRICT, WITHOUT ROWID;
