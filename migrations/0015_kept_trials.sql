-- Virtual trials of a design's calibration or refinement, kept as each
-- finishes (issue 16), so that one stopped part way (a refinement yielded to
-- other design work, or the daemon shut down or crashed) takes them up when
-- it runs again instead of starting over. A trial's course depends only on
-- its inputs, all named in its key, so the work ends as it would have run
-- through (trial::simulate::memo). Deleted when the work's result is stored,
-- or once the work is no longer due.
CREATE TABLE kept_trials (
    protocol_hash TEXT NOT NULL,              -- SHA-256 of the protocol text being calibrated
    work          TEXT NOT NULL
        CHECK (work IN ('calibration', 'refinement')),
    key           TEXT NOT NULL,              -- the build, then the trial's inputs (Setup::memo_key)
    trial         TEXT NOT NULL,              -- the virtual trial, JSON
    PRIMARY KEY (protocol_hash, work, key)
) STRICT;
