-- Dashboard access that must outlive a restart (issue: hardening).
--
-- sessions: one row per sign-in. The cookie stays signed (HMAC), and is also
-- looked up here, so signing out ends it on the server, not only in the
-- browser. `id` is the SHA-256 of the cookie's random nonce (the cookie
-- itself is never stored). `fingerprint` names the password hash it was
-- opened with; a changed password ends its sessions.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('participant', 'investigator')),
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    ended_at    TEXT
) STRICT;

-- access_failures: wrong passwords and wrong bearer tokens, per client
-- address, so that the rate limit holds across restarts. Rows older than
-- the limit's window are deleted as new ones are written.
CREATE TABLE access_failures (
    id      INTEGER PRIMARY KEY,
    kind    TEXT NOT NULL CHECK (kind IN ('password', 'token')),
    address TEXT NOT NULL,
    at      TEXT NOT NULL
) STRICT;
CREATE INDEX access_failures_at ON access_failures (at);
