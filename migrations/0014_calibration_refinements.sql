-- Calibrations refined in the background (issue 16). A design whose first
-- calibration ran fewer null trials than `jobs.refinement_trials` (the
-- importance-sampled outcomes get a fifth) is calibrated again on that many
-- once its trial is approved; a running trial takes the refined thresholds
-- only before its first look that can stop it, so that every decision it
-- takes is made under one rule fixed before any of them.
CREATE TABLE calibration_refinements (
    protocol_hash TEXT PRIMARY KEY,           -- SHA-256 of the protocol text calibrated
    null_trials   INTEGER NOT NULL CHECK (null_trials >= 1), -- the most null trials a scenario got
    target        REAL NOT NULL,              -- false-stop target in every scenario
    efficacy      REAL NOT NULL,              -- calibrated P(better by MID) threshold (last block's)
    boundary      TEXT NOT NULL
        CHECK (boundary IN ('constant', 'decreasing')),
    futility      REAL                        -- calibrated futility threshold (0: never)
        CHECK (futility >= 0 AND futility < 0.5),
    drop_arm      REAL                        -- calibrated arm-drop threshold (0: never)
        CHECK (drop_arm >= 0 AND drop_arm < 0.5),
    binding       TEXT NOT NULL,              -- the scenario that set the efficacy threshold
    report_json   TEXT NOT NULL,              -- simulate::suite::SuiteReport
    wall_ms       REAL NOT NULL,
    created_at    TEXT NOT NULL
) STRICT;

-- When a trial's locked thresholds were replaced by its design's refined
-- calibration (NULL: the first calibration's, or the protocol's, stand).
ALTER TABLE trials ADD COLUMN thresholds_refined_at TEXT;

-- A refinement that fails is given up on as the other works are.
CREATE TABLE design_failures_new (
    protocol_hash TEXT NOT NULL,              -- SHA-256 of the protocol text
    work          TEXT NOT NULL               -- what failed
        CHECK (work IN ('calibration', 'simulation', 'refinement')),
    error         TEXT NOT NULL,              -- the last attempt's error
    attempts      INTEGER NOT NULL CHECK (attempts >= 1),
    last_at       TEXT NOT NULL,
    PRIMARY KEY (protocol_hash, work)
) STRICT;

INSERT INTO design_failures_new (protocol_hash, work, error, attempts, last_at)
    SELECT protocol_hash, work, error, attempts, last_at FROM design_failures;

DROP TABLE design_failures;
ALTER TABLE design_failures_new RENAME TO design_failures;
