-- nof1d schema, version 1.
-- Timestamps are UTC RFC 3339 text ('2026-11-25T07:30:00Z'); local calendar
-- days are 'YYYY-MM-DD' in the participant's zone. Never edit this file once
-- released: add 0002_*.sql instead.

-- Instance facts: clock anchor, instance id, signing keys.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE participants (
    id              INTEGER PRIMARY KEY,
    key             TEXT NOT NULL UNIQUE,
    name            TEXT NOT NULL,
    email           TEXT NOT NULL,
    time_zone       TEXT NOT NULL,
    assignment_time TEXT NOT NULL,            -- 'HH:MM' local
    is_demo         INTEGER NOT NULL DEFAULT 0 CHECK (is_demo IN (0, 1)),
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
) STRICT;

-- A data source (pull, file drop, push, self-report, demo) and its cursor.
CREATE TABLE sources (
    id              INTEGER PRIMARY KEY,
    participant_id  INTEGER NOT NULL REFERENCES participants(id),
    name            TEXT NOT NULL,
    kind            TEXT NOT NULL,
    config_json     TEXT NOT NULL DEFAULT '{}',
    cursor          TEXT,                     -- adapter-defined resume point
    last_success_at TEXT,
    last_error      TEXT,
    last_error_at   TEXT,
    created_at      TEXT NOT NULL,
    UNIQUE (participant_id, name)
) STRICT;

-- The catalog of streams a participant has data for.
CREATE TABLE streams (
    id             INTEGER PRIMARY KEY,
    participant_id INTEGER NOT NULL REFERENCES participants(id),
    key            TEXT NOT NULL,
    unit           TEXT NOT NULL DEFAULT '',
    description    TEXT NOT NULL DEFAULT '',
    created_at     TEXT NOT NULL,
    UNIQUE (participant_id, key)
) STRICT;

-- Normalised observations. (source_id, source_record_id) is unique, so
-- re-reading the same data never duplicates a row.
CREATE TABLE observations (
    id               INTEGER PRIMARY KEY,
    stream_id        INTEGER NOT NULL REFERENCES streams(id),
    source_id        INTEGER NOT NULL REFERENCES sources(id),
    source_record_id TEXT NOT NULL,
    observed_at      TEXT NOT NULL,           -- UTC instant
    local_date       TEXT NOT NULL,           -- participant's civil date
    value            REAL NOT NULL,
    unit             TEXT NOT NULL DEFAULT '',
    inserted_at      TEXT NOT NULL,
    UNIQUE (source_id, source_record_id)
) STRICT;
CREATE INDEX observations_by_stream_time ON observations (stream_id, observed_at);

-- Metadata of self-reports (the value itself is an observation).
CREATE TABLE self_reports (
    id             INTEGER PRIMARY KEY,
    observation_id INTEGER NOT NULL UNIQUE REFERENCES observations(id),
    channel        TEXT NOT NULL,             -- 'email-link', 'form', 'demo'
    note           TEXT NOT NULL DEFAULT '',
    reported_at    TEXT NOT NULL
) STRICT;

-- What a proposer (LLM or the built-in library) suggested testing.
CREATE TABLE hypotheses (
    id             INTEGER PRIMARY KEY,
    participant_id INTEGER NOT NULL REFERENCES participants(id),
    proposer       TEXT NOT NULL,
    payload_json   TEXT NOT NULL,
    uncertainty    REAL,
    status         TEXT NOT NULL DEFAULT 'open'
                   CHECK (status IN ('open', 'proposed', 'rejected', 'accepted')),
    created_at     TEXT NOT NULL
) STRICT;

CREATE TABLE trials (
    id               INTEGER PRIMARY KEY,
    participant_id   INTEGER NOT NULL REFERENCES participants(id),
    hypothesis_id    INTEGER REFERENCES hypotheses(id),
    protocol_id      TEXT NOT NULL,
    protocol_toml    TEXT NOT NULL,           -- the locked protocol, verbatim
    protocol_hash    TEXT NOT NULL,           -- SHA-256 of protocol_toml
    seed             TEXT NOT NULL,           -- u64 randomisation seed, decimal
    status           TEXT NOT NULL
                     CHECK (status IN ('proposed', 'approved', 'running', 'paused', 'stopped')),
    start_date       TEXT,                    -- local date of day 0
    stop_reason      TEXT,
    created_at       TEXT NOT NULL,
    status_changed_at TEXT NOT NULL
) STRICT;

-- The schedule as generated from the seed (and later extended or shifted
-- only by recorded rules). Day 0 is start_date.
CREATE TABLE schedule (
    trial_id   INTEGER NOT NULL REFERENCES trials(id),
    day        INTEGER NOT NULL,
    local_date TEXT NOT NULL,
    period     INTEGER,                       -- NULL during run-in
    block      INTEGER,
    arm        INTEGER NOT NULL,              -- index into the protocol's arms
    washout    INTEGER NOT NULL CHECK (washout IN (0, 1)),
    PRIMARY KEY (trial_id, day),
    UNIQUE (trial_id, local_date)
) STRICT, WITHOUT ROWID;

-- The daily assignment run per trial and local day: 'sent' (the day's
-- messages are in the outbox) or 'missed' (the daemon was down all that day).
-- It makes a restart neither skip nor repeat a day.
CREATE TABLE daily_runs (
    trial_id   INTEGER NOT NULL REFERENCES trials(id),
    local_date TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('sent', 'missed')),
    at         TEXT NOT NULL,
    PRIMARY KEY (trial_id, local_date)
) STRICT, WITHOUT ROWID;

CREATE TABLE adherence (
    trial_id    INTEGER NOT NULL REFERENCES trials(id),
    day         INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('done', 'not_done', 'side_effect')),
    arm_taken   INTEGER,
    note        TEXT NOT NULL DEFAULT '',
    channel     TEXT NOT NULL,
    reported_at TEXT NOT NULL,
    PRIMARY KEY (trial_id, day)
) STRICT, WITHOUT ROWID;

CREATE TABLE fits (
    id             INTEGER PRIMARY KEY,
    trial_id       INTEGER NOT NULL REFERENCES trials(id),
    stream_key     TEXT NOT NULL,
    data_through   TEXT NOT NULL,             -- last local date included
    observations   INTEGER NOT NULL,          -- observations used
    engine         TEXT NOT NULL,
    seed           TEXT NOT NULL,
    scale          REAL NOT NULL,             -- the S used
    priors_json    TEXT NOT NULL,
    result_json    TEXT NOT NULL,
    converged      INTEGER NOT NULL CHECK (converged IN (0, 1)),
    wall_ms        REAL NOT NULL,
    created_at     TEXT NOT NULL
) STRICT;
CREATE INDEX fits_by_trial ON fits (trial_id, id);

CREATE TABLE decisions (
    id           INTEGER PRIMARY KEY,
    trial_id     INTEGER NOT NULL REFERENCES trials(id),
    fit_id       INTEGER REFERENCES fits(id),
    rule         TEXT NOT NULL,
    action       TEXT NOT NULL,
    numbers_json TEXT NOT NULL,
    created_at   TEXT NOT NULL
) STRICT;

-- Every message is stored here first, with a unique key, in the same
-- transaction as the event that caused it; a sender delivers it later.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    key             TEXT NOT NULL UNIQUE,     -- e.g. assignment/alice/3/2026-11-25
    participant_id  INTEGER NOT NULL REFERENCES participants(id),
    trial_id        INTEGER REFERENCES trials(id),
    kind            TEXT NOT NULL,
    local_date      TEXT,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body_text       TEXT NOT NULL,
    body_html       TEXT NOT NULL,
    message_id      TEXT NOT NULL UNIQUE,     -- derived from key
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    delivered_to    TEXT,                     -- where it went: SMTP host or .eml path
    created_at      TEXT NOT NULL,
    sent_at         TEXT
) STRICT;
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    actor       TEXT NOT NULL,                -- 'daemon', 'participant', 'investigator', 'demo', ...
    action      TEXT NOT NULL,
    trial_id    INTEGER REFERENCES trials(id),
    detail_json TEXT NOT NULL DEFAULT '{}'
) STRICT;
