-- A record its source says was deleted (an Oura sleep period the person
-- removed) is withdrawn, not erased: it stays stored with when it was
-- withdrawn, and analyses, the catalog and charts leave it out. Sent again
-- later, it is restored.
ALTER TABLE observations ADD COLUMN withdrawn_at TEXT;

ALTER TABLE source_runs ADD COLUMN withdrawn INTEGER NOT NULL DEFAULT 0;
