-- Decisions that keep their promise (issue 16): each design's efficacy
-- threshold calibrated on the stress suite, once per protocol text, and the
-- threshold a trial locked when it started.

CREATE TABLE calibrations (
    protocol_hash TEXT PRIMARY KEY,           -- SHA-256 of the protocol text calibrated
    target        REAL NOT NULL,              -- false-stop target in every scenario
    efficacy      REAL NOT NULL,              -- calibrated P(better by MID) threshold (last block's)
    boundary      TEXT NOT NULL               -- how it moves over the looks
        CHECK (boundary IN ('constant', 'decreasing')),
    binding       TEXT NOT NULL,              -- the scenario that set it
    report_json   TEXT NOT NULL,              -- simulate::suite::SuiteReport
    wall_ms       REAL NOT NULL,
    created_at    TEXT NOT NULL
) STRICT;

-- Locked at the start; NULL for trials started before calibration existed
-- (they decide on the protocol's stated threshold).
ALTER TABLE trials ADD COLUMN efficacy_threshold REAL;
ALTER TABLE trials ADD COLUMN threshold_source TEXT
    CHECK (threshold_source IN ('protocol', 'calibrated'));
ALTER TABLE trials ADD COLUMN efficacy_boundary TEXT
    CHECK (efficacy_boundary IN ('constant', 'decreasing'));
