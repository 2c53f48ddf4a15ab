-- Virtual trials of a design's refinement, kept as each finishes (issue 16),
-- so that a refinement stopped part way (it yielded to other design work, or
-- the daemon shut down or crashed) takes them up when it runs again instead
-- of starting over. A trial's course depends only on its inputs, all named
-- in its key, so the refinement ends as it would have run through
-- (trial::simulate::memo). Deleted when the refinement is stored.
CREATE TABLE refinement_trials (
    protocol_hash TEXT NOT NULL,              -- SHA-256 of the protocol text being refined
    key           TEXT NOT NULL,              -- the trial's inputs (Setup::memo_key)
    trial         TEXT NOT NULL,              -- the virtual trial, JSON
    PRIMARY KEY (protocol_hash, key)
) STRICT, WITHOUT ROWID;
