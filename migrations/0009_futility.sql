-- Futility calibrated with efficacy (issue 16): the futility threshold a
-- design's calibration sets, and the one a trial locked when it started.
-- NULL in rows from before: the protocol's stated threshold applies.

ALTER TABLE calibrations ADD COLUMN futility REAL;  -- calibrated P(better by MID) futility threshold (0: never)
ALTER TABLE trials ADD COLUMN futility_threshold REAL;
