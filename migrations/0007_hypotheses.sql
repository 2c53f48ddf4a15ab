-- Hypotheses: what was asked, what the proposer (an LLM or the built-in
-- library) answered, which answers became proposals and which stayed
-- recommendations, and every exchange with the LLM, verbatim.

-- One row per HTTP request to the LLM (retries and the repair round-trip
-- included), or per run of the built-in proposer: the audit log.
CREATE TABLE llm_exchanges (
    id             INTEGER PRIMARY KEY,
    participant_id INTEGER NOT NULL REFERENCES participants(id),
    purpose        TEXT NOT NULL CHECK (purpose IN ('ask', 'propose', 'conclude')),
    proposer       TEXT NOT NULL,               -- 'llm:<model>' or 'library'
    attempt        INTEGER NOT NULL,            -- 1, 2, ... within one question
    question       TEXT NOT NULL DEFAULT '',
    request_json   TEXT NOT NULL,               -- what was sent, verbatim
    http_status    INTEGER,                     -- NULL: no answer (time-out, refused)
    response_body  TEXT NOT NULL DEFAULT '',    -- what came back, verbatim (capped)
    outcome        TEXT NOT NULL,               -- 'ok', 'retry', 'repair', 'failed'
    problems       TEXT NOT NULL DEFAULT '',    -- why answers were refused
    started_at     TEXT NOT NULL,               -- real time of the request
    finished_at    TEXT NOT NULL,
    recorded_at    TEXT NOT NULL                -- daemon clock when stored
) STRICT;
CREATE INDEX llm_exchanges_by_participant ON llm_exchanges (participant_id, id);

-- What a hypothesis came from and what it became.
ALTER TABLE hypotheses ADD COLUMN question TEXT NOT NULL DEFAULT '';
-- 'test': sigma >= tau, a trial was proposed; 'recommend': sigma < tau, no
-- experiment needed (NULL for rows written before this migration).
ALTER TABLE hypotheses ADD COLUMN verdict TEXT CHECK (verdict IN ('test', 'recommend'));
ALTER TABLE hypotheses ADD COLUMN tau REAL;
ALTER TABLE hypotheses ADD COLUMN exchange_id INTEGER REFERENCES llm_exchanges(id);
ALTER TABLE hypotheses ADD COLUMN notes TEXT NOT NULL DEFAULT '';

-- A stopped trial's result in words, written once after it stops: the
-- LLM's text when every number in it is one the fit holds, else the
-- template's.
CREATE TABLE conclusions (
    trial_id    INTEGER PRIMARY KEY REFERENCES trials(id),
    text        TEXT NOT NULL,
    written_by  TEXT NOT NULL,               -- 'template' or 'llm:<model>'
    refused     TEXT,                        -- why the LLM's text was not used
    created_at  TEXT NOT NULL
) STRICT;
