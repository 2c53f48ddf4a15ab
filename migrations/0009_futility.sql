-- Futility calibrated with efficacy (issue 16): the futility threshold a
-- design's calibration sets, and the one a trial locked when it started.
-- NULL in rows from before: the protocol's stated threshold applies.

ALTER TABLE calibrations ADD COLUMN futility REAL  -- calibrated P(better by MID) futility threshold (0: never)
    CHECK (futility >= 0 AND futility < 0.5);
ALTER TABLE trials ADD COLUMN futility_threshold REAL
    CHECK (futility_threshold >= 0 AND futility_threshold < 0.5);

-- A design whose calibration failed: the error, and how often it was tried.
-- After a few attempts the designs job stops retrying, and an approved trial
-- of that design starts on its protocol's stated thresholds, saying why.
CREATE TABLE calibration_failures (
    protocol_hash TEXT PRIMARY KEY,           -- SHA-256 of the protocol text
    error         TEXT NOT NULL,              -- the last attempt's error
    attempts      INTEGER NOT NULL CHECK (attempts >= 1),
    last_at       TEXT NOT NULL
) STRICT;
