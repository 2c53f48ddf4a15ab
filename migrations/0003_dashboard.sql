-- Dashboard (issue 7): the simulated error rates of a proposed design,
-- computed in the background once per protocol text (an edited proposal has
-- a new hash and is simulated again).

CREATE TABLE design_simulations (
    protocol_hash TEXT PRIMARY KEY,           -- SHA-256 of the protocol text simulated
    trials        INTEGER NOT NULL,           -- virtual trials per condition
    report_json   TEXT NOT NULL,              -- simulate::SimulationReport
    wall_ms       REAL NOT NULL,
    created_at    TEXT NOT NULL
) STRICT;
