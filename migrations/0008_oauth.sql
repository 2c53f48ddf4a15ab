-- OAuth2 sources (Oura): the grant a person gave on the dashboard, and the
-- authorisations begun and not yet finished.

-- One grant per source: the tokens, when the access token expires, and
-- whether it still works. A refused refresh marks it 'needs_reauthorisation'
-- until the person presses Connect again. (Encrypted at rest with the
-- database when database.key is set.)
CREATE TABLE oauth_grants (
    source_id      INTEGER PRIMARY KEY REFERENCES sources(id),
    access_token   TEXT NOT NULL,
    refresh_token  TEXT,
    expires_at     TEXT,                        -- NULL: the server did not say
    scope          TEXT NOT NULL DEFAULT '',
    status         TEXT NOT NULL CHECK (status IN ('connected', 'needs_reauthorisation')),
    status_reason  TEXT NOT NULL DEFAULT '',
    connected_at   TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

-- A Connect pressed and not yet come back: the random state (looked up once,
-- then deleted) and the PKCE verifier for the code exchange.
CREATE TABLE oauth_pending (
    state          TEXT PRIMARY KEY,
    source_id      INTEGER NOT NULL REFERENCES sources(id),
    pkce_verifier  TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
