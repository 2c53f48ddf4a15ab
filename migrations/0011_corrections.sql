-- A self-report rating corrected by the person: the observation takes the
-- new value, and each correction is kept here with the value it replaced,
-- who made it, why and when (the first answer is never lost).
CREATE TABLE rating_corrections (
    id             INTEGER PRIMARY KEY,
    observation_id INTEGER NOT NULL REFERENCES observations(id),
    trial_id       INTEGER NOT NULL REFERENCES trials(id),
    local_date     TEXT NOT NULL,
    old_value      REAL NOT NULL,
    new_value      REAL NOT NULL,
    reason         TEXT NOT NULL DEFAULT '',
    actor          TEXT NOT NULL,
    corrected_at   TEXT NOT NULL
) STRICT;

CREATE INDEX rating_corrections_by_trial ON rating_corrections (trial_id, local_date);

-- What a fit saw: a digest of its series (times and values). A value that
-- changed without adding a day (a corrected rating, a vendor's re-scored
-- night) makes the data fresh, so the trial is refitted.
ALTER TABLE fits ADD COLUMN data_digest TEXT;
