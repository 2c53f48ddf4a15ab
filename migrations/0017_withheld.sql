-- A day's message (assignment, reminder, missing-data note) whose trial no
-- longer ran when it was due, stopped or paused after it was queued: not
-- delivered, given back if the trial runs again, and not counted as a
-- failure. Until now it was told by its error text alone.
ALTER TABLE outbox ADD COLUMN withheld INTEGER NOT NULL DEFAULT 0 CHECK (withheld IN (0, 1));
ALTER TABLE pushes ADD COLUMN withheld INTEGER NOT NULL DEFAULT 0 CHECK (withheld IN (0, 1));
UPDATE outbox SET withheld = 1
 WHERE status = 'failed' AND last_error LIKE 'not delivered: its trial is %';
UPDATE pushes SET withheld = 1
 WHERE status = 'failed' AND last_error LIKE 'not delivered: its trial is %';
