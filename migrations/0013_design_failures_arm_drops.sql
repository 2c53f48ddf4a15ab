-- Designs (issue 16). A design whose background work failed, for each kind of work: its
-- calibration (before a trial starts) and its simulation (for the
-- proposals page). Both are tried a few times and then given up on, until
-- someone asks for another try; calibration failures move here from
-- `calibration_failures`, which this replaces.
CREATE TABLE design_failures (
    protocol_hash TEXT NOT NULL,              -- SHA-256 of the protocol text
    work          TEXT NOT NULL               -- what failed
        CHECK (work IN ('calibration', 'simulation')),
    error         TEXT NOT NULL,              -- the last attempt's error
    attempts      INTEGER NOT NULL CHECK (attempts >= 1),
    last_at       TEXT NOT NULL,
    PRIMARY KEY (protocol_hash, work)
) STRICT;

INSERT INTO design_failures (protocol_hash, work, error, attempts, last_at)
    SELECT protocol_hash, 'calibration', error, attempts, last_at FROM calibration_failures;

DROP TABLE calibration_failures;

-- Arm-drop thresholds calibrated with the rest (issue 16): the one a
-- design's calibration sets (NULL in rows from before: the protocol's
-- applies), and the one a trial locked when it started.
ALTER TABLE calibrations ADD COLUMN drop_arm REAL  -- drop an arm when P(best) < this (0: never)
    CHECK (drop_arm >= 0 AND drop_arm < 0.5);
ALTER TABLE trials ADD COLUMN drop_arm_threshold REAL
    CHECK (drop_arm_threshold >= 0 AND drop_arm_threshold < 0.5);
