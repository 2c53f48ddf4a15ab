-- Push notifications beside email: one row per outbox message and push
-- channel (an ntfy topic, a Home Assistant notify service), so that each
-- channel gets each message once, with its own retries. `channel` is the
-- channel's kind and address (never its token).
CREATE TABLE pushes (
    id              INTEGER PRIMARY KEY,
    message_id      INTEGER NOT NULL REFERENCES outbox(id),
    channel         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    sent_at         TEXT,
    UNIQUE (message_id, channel)
) STRICT;

CREATE INDEX pushes_due ON pushes (status, next_attempt_at);
CREATE INDEX outbox_by_participant ON outbox (participant_id, created_at);
